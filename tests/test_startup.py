"""Daemon mode (no ``-n``) tells the truth: a failed start exits 1 with the reason on stderr
and leaves no pidfile, for every plugin (the store's case runs in docs/operating.md's
test)."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from support.processes import BIN_DIR
from support.store import short_tempdir
from support.waiting import until_blocking


@pytest.mark.parametrize(
    ("plugin", "args"),
    [
        ("busnode", ["--listen", "tcp:{port}:interface=127.0.0.1"]),
        (
            "workerhost",
            ["--apps", "{tmp}", "--runtime", "{rt}", "--locator", "tcp:{port}:interface=127.0.0.1"],
        ),
    ],
)
def test_a_port_in_use_fails_the_daemon_start(tmp_path: Path, plugin: str, args: list[str]) -> None:
    with short_tempdir() as runtime, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        pidfile = tmp_path / "twistd.pid"
        argv = [
            str(BIN_DIR / "twistd"), f"--pidfile={pidfile}", f"--logfile={tmp_path / 'log'}",
            plugin, *(a.format(port=port, tmp=tmp_path, rt=runtime) for a in args),
        ]  # fmt: skip
        run = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stderr
    assert "cannot listen on tcp:" in run.stderr
    assert not pidfile.exists()
    # the parent exits on the child's status; the child may still be writing its log
    log = tmp_path / "log"
    until_blocking(lambda: "Address already in use" in log.read_text(), what="the reason logged")
