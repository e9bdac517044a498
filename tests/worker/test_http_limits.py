"""The HTTP front end cannot take the host's descriptors: a connection cap, a head deadline,
and a reserve that keeps the Locator and the workers reachable."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet import threads

from support.processes import BIN_DIR, ChildProcess
from support.waiting import until
from support.workerhost import short_tmpdir, start_host, write_app
from txloom.worker.client import connect
from txloom.worker.host import WorkerHost

STALLED_HEAD = b"GET /test/ HTTP/1.1\r\nHost: x\r\n"  # never finished
WHOLE_REQUEST = b"GET /nope/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def _open(address: tuple[str, int], data: bytes) -> socket.socket:
    sock = socket.create_connection(address, timeout=10)
    sock.sendall(data)
    return sock


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset


def _read_reply(sock: socket.socket) -> bytes:
    sock.settimeout(20)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.fixture
def capped() -> Iterator[WorkerHost]:
    with short_tmpdir() as root:
        host = start_host(
            root, {"test": {}}, http=True, http_max_connections=2, http_head_timeout=30.0
        )
        yield host
        pytest_twisted.blockon(host.stopService())


@pytest_twisted.ensureDeferred
async def test_at_the_cap_new_connections_wait_until_one_closes(capped: WorkerHost) -> None:
    site = capped.http_front.site
    stalled = [_open(capped.http_address, STALLED_HEAD) for _ in range(2)]
    await until(lambda: site.connections == 2 and site.pauses == 1, what="two served")
    waiting = _open(capped.http_address, WHOLE_REQUEST)
    try:
        reply = threads.deferToThread(_read_reply, waiting)
        assert not reply.called
        stalled.pop().close()
        assert (await reply).startswith(b"HTTP/1.1 404 ")
        assert site.pauses == 2  # the waiting one took the free place: at the cap again
    finally:
        for sock in [*stalled, waiting]:
            sock.close()


@pytest_twisted.ensureDeferred
async def test_a_stalled_head_is_cut_after_the_head_timeout() -> None:
    with short_tmpdir() as root:
        host = start_host(root, {"test": {}}, http=True, http_head_timeout=0.3)
        try:
            sock = _open(host.http_address, STALLED_HEAD)
            try:
                await until(lambda: _closed_by_peer(sock), 10, "the stalled head cut")
            finally:
                sock.close()
            assert host.http_front.site.stalled == 1
            # a keep-alive client gets the same time again after each response
            sock = _open(host.http_address, WHOLE_REQUEST.replace(b"close", b"keep-alive"))
            try:
                await until(lambda: _closed_by_peer(sock), 10, "the idle keep-alive cut")
            finally:
                sock.close()
        finally:
            await host.stopService()


LOW_LIMIT = """\
import os, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
os.execv(sys.argv[1], sys.argv[1:])
"""


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_stalled_heads_past_the_descriptor_limit_leave_locator_and_workers_alone() -> None:
    with short_tmpdir() as root:
        apps = root / "apps"
        apps.mkdir()
        write_app(apps, "test", profile={"pool-limit": 2})
        argv = [
            *(sys.executable, "-c", LOW_LIMIT, str(BIN_DIR / "twistd"), "--nodaemon"),
            *("--pidfile=", "workerhost", "--apps", str(apps), "--runtime", str(root / "run")),
            *("--locator", "tcp:0:interface=127.0.0.1"),
            *("--http", "tcp:0:interface=127.0.0.1:backlog=512", "--http-head-timeout", "1"),
            *("--fd-reserve", "64"),
        ]
        child = ChildProcess(
            argv,
            cwd=root,
        ).start()
        stalled: list[socket.socket] = []
        try:
            locator = int((await child.when(r"locator listening on tcp:127\.0\.0\.1:(\d+)"))[1])
            match = await child.when(
                r"HTTP front end listening on tcp:127\.0\.0\.1:(\d+) \(at most (\d+)"
            )
            http, limit = int(match[1]), int(match[2])
            assert limit == 256 - 64 - 3 * 2
            address = ("127.0.0.1", http)
            stalled = [_open(address, STALLED_HEAD) for _ in range(300)]
            # the Locator and the app's workers are still served
            service = await connect("test", ("127.0.0.1", locator))
            try:
                channel = service.enqueue("ping")
                channel.tx.close()
                assert await channel.rx.read_all() == b"pong"
            finally:
                service.close()
            # stalled heads are cut within the head timeout, then HTTP serves again
            await until(lambda: all(_closed_by_peer(s) for s in stalled), 20, "heads cut")
            fresh = _open(address, WHOLE_REQUEST)
            try:
                assert (await threads.deferToThread(_read_reply, fresh)).startswith(
                    b"HTTP/1.1 404 "
                )
            finally:
                fresh.close()
            assert "Too many open files" not in child.output
        finally:
            for sock in stalled:
                sock.close()
            child.kill()
