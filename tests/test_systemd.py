"""Readiness reported to systemd: READY=1 once serving, STOPPING=1 on SIGTERM."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from support.processes import twistd
from support.store import short_tempdir


@pytest.fixture
def notify_socket() -> Iterator[socket.socket]:
    with short_tempdir() as directory:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(os.path.join(directory, "notify"))
        sock.settimeout(30)
        with sock:
            yield sock


def test_ready_after_recovery_and_stopping_on_sigterm(notify_socket, tmp_path) -> None:
    server = twistd(
        "storeserver", "--listen", "tcp:0:interface=127.0.0.1", "--data", str(tmp_path),
        env={"NOTIFY_SOCKET": notify_socket.getsockname()},
    )  # fmt: skip
    with server.start():
        ready = notify_socket.recv(4096).decode()
        assert ready.startswith("READY=1\n")
        # READY=1 comes with the store's readiness (recovered, then listening is logged)
        server.wait_for("storeserver listening on")
        server.send_signal(15)
        assert notify_socket.recv(4096) == b"STOPPING=1"
        assert server.wait() == 0


def test_without_a_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    from txloom.systemd import notify

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify")
    assert notify("READY=1") is False  # logged, never raised
