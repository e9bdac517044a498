"""docs/operating.md, run as written: every shell block, the config file and the unit file.

The blocks run in order in one directory, as a reader would type them, with the
virtualenv's ``bin`` first on PATH (an activated virtualenv). Only the port numbers are
changed (to free ones, the same everywhere on the page, with the ``TXLOOM_*`` variables
set to match), so the page cannot collide with anything else on the machine.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from support.processes import BIN_DIR, ChildProcess, free_port

DOC = Path(__file__).resolve().parents[1] / "docs" / "operating.md"

#: The well-known ports the page uses.
PORTS = (7400, 7401, 7402, 7410, 8080, 8081, 9400, 10053)


def blocks() -> list[tuple[str, str]]:
    return re.findall(r"```(\w+)\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_page_has_what_it_promises() -> None:
    kinds = [kind for kind, _ in blocks()]
    assert kinds.count("toml") == 1 and kinds.count("ini") == 1
    text = DOC.read_text()
    for needle in ("txloom store tail", "txloom bus pub", "txloom worker call", "/metrics"):
        assert needle in text


def kill_daemons(directory: Path) -> None:
    for pidfile in directory.glob("*.pid"):
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)


@pytest.mark.slow
def test_every_example_runs(tmp_path: Path) -> None:
    ports = {port: free_port() for port in PORTS}

    def local(text: str) -> str:
        return re.sub(
            r"\b(7400|7401|7402|7410|8080|8081|9400|10053)\b", lambda m: str(ports[int(m[1])]), text
        )

    env = {
        **os.environ,
        "PATH": f"{BIN_DIR}{os.pathsep}{os.environ['PATH']}",
        "TXLOOM_STORE": f"127.0.0.1:{ports[7400]}",
        "TXLOOM_BUS": f"ws://127.0.0.1:{ports[8081]}/meta/message",
        "TXLOOM_LOCATOR": f"127.0.0.1:{ports[10053]}",
    }
    env.pop("NOTIFY_SOCKET", None)
    outputs = []
    try:
        for kind, text in blocks():
            if kind == "toml":
                (tmp_path / "txloom.toml").write_text(local(text))
            elif kind == "sh":
                run = subprocess.run(
                    ["bash", "-e", "-c", local(text)],
                    cwd=tmp_path,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                assert run.returncode == 0, f"{text}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}"
                outputs.append(run.stdout + run.stderr)
    finally:
        kill_daemons(tmp_path)
    out = "\n".join(outputs)
    assert '"ready": true' in out
    assert "twistd storeserver: --fsync must be always, never or interval:MS" in out
    assert "exit status 1" in out
    assert '"key":"t1"' in out and '"seq":2' in out
    assert '"type":"greeting"' in out and '"data":"hello"' in out
    assert "pong" in out
    assert "txloom_store_ready 1.0" in out
    assert "no pidfile left behind" in out

    # the unit file's command line, with the paths of this checkout
    (unit,) = (text for kind, text in blocks() if kind == "ini")
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
