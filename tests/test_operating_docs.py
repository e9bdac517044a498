"""docs/operating.md's systemd unit: its ExecStart starts a node that tells systemd.

The page's shell blocks and config file run in tests/test_docs.py, with the rest of the
docs; the unit runs here, with the config file of the page on free ports, under a
notify socket.
"""

from __future__ import annotations

import re
import shlex
import signal
import socket
from pathlib import Path

import pytest

from support.docs import ROOT, blocks
from support.processes import BIN_DIR, ChildProcess, free_port

DOC = ROOT / "docs" / "operating.md"

#: The well-known ports the page's config file uses.
PORTS = (7400, 7410, 8080, 8081, 9400, 10053)


def test_the_page_has_what_it_promises() -> None:
    kinds = [block.language for block in blocks(DOC)]
    assert kinds.count("toml") == 1 and kinds.count("ini") == 1
    text = DOC.read_text()
    for needle in ("txloom store tail", "txloom bus pub", "txloom worker call", "/metrics"):
        assert needle in text
    assert "txloom worker reload" in text and "SIGHUP" in text


@pytest.mark.slow
def test_the_unit_file_starts_a_node_that_notifies(tmp_path: Path) -> None:
    ports = {port: free_port() for port in PORTS}
    pattern = re.compile(r"\b(" + "|".join(map(str, PORTS)) + r")\b")
    (config,) = (b.text for b in blocks(DOC) if b.language == "toml")
    config = pattern.sub(lambda m: str(ports[int(m[1])]), config)
    (tmp_path / "txloom.toml").write_text(config)
    (unit,) = (b.text for b in blocks(DOC) if b.language == "ini")
    command = re.search(r"^ExecStart=(.*)$", unit, flags=re.M)[1]
    command = command.replace("/opt/txloom/.venv/bin/", f"{BIN_DIR}/")
    command = command.replace("/etc/txloom/txloom.toml", str(tmp_path / "txloom.toml"))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp_path / "notify"))
        notify.settimeout(30)
        node = ChildProcess(
            shlex.split(command), cwd=tmp_path, env={"NOTIFY_SOCKET": str(tmp_path / "notify")}
        )
        with node.start():
            assert notify.recv(4096).startswith(b"READY=1")
            node.send_signal(signal.SIGTERM)
            assert notify.recv(4096) == b"STOPPING=1"
            assert node.wait() == 0, node.tail()
