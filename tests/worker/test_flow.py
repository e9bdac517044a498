"""Flow control with real sockets and real workers: slow readers, slow workers, HTTP ends.

The host runs in this process, so its accounting (``WorkerPool.stats``) is read directly:
what it holds for callers that do not read (``backlog``) and what it wrote to a worker's
socket after the worker stopped keeping up (``overshoot``).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol

from support.workerhost import LogCapture, raw_connect, short_tmpdir, start_host, wait_until
from txloom.worker import errors
from txloom.worker.client import connect
from txloom.worker.host import WorkerHost

#: The app's backlog-limit: small, so that a stalled caller is failed quickly, with room for
#: a reading caller that a loaded machine schedules late.
LIMIT = 4 * 1024 * 1024
CHUNK = 64 * 1024
#: What the stalled callers ask for; the worker would stream all of it if not stopped.
HUGE = 200 * 1024 * 1024
#: What the concurrent, reading callers get in full.
FULL = 32 * 1024 * 1024


@pytest.fixture(scope="module")
def host() -> Iterator[WorkerHost]:
    with short_tmpdir() as root:
        host = start_host(
            root, {"flow": {"profile": {"pool-limit": 1, "backlog-limit": LIMIT}}}, http=True
        )
        yield host
        pytest_twisted.blockon(host.stopService())


def app_address(host: WorkerHost) -> tuple[str, int]:
    (address,) = host.locator.resolve("flow")[0]
    return tuple(address)  # type: ignore[return-value]


def small_receive_buffer(peer: Protocol) -> None:
    """Keep the kernel from absorbing megabytes for a client that does not read."""
    peer.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)


async def stream_in_full(host: WorkerHost, size: int) -> int:
    service = await connect("flow", host.locator_address)
    try:
        channel = service.enqueue("stream")
        channel.tx.write(b"%d" % size)
        channel.tx.close()
        received = 0
        async for chunk in channel.rx:
            received += len(chunk)
        return received
    finally:
        service.close()


def load(host: WorkerHost) -> int:
    return sum(w.load for w in host.pools["flow"].workers.values())


@pytest_twisted.ensureDeferred
async def test_client_that_stops_reading_is_failed_while_the_worker_serves_on(
    host: WorkerHost,
) -> None:
    stats = host.pools["flow"].stats
    overflows = stats.overflows
    with LogCapture() as logs:
        slow = await raw_connect(app_address(host))
        small_receive_buffer(slow)
        slow.transport.pauseProducing()  # from now on this client reads nothing
        slow.send(1, 0, [b"stream"])
        slow.send(1, 0, [b"%d" % HUGE])
        slow.send(1, 2, [])
        # a caller that reads, on the same worker (pool-limit 1), at the same time
        assert await stream_in_full(host, FULL) == FULL
        await wait_until(lambda: stats.overflows == overflows + 1, 30, "the slow session failed")
        # the worker hears of it and stops streaming
        told = ("stopped by the caller", "client too slow")
        await wait_until(
            lambda: any(all(w in t for w in told) for t in logs.texts()), 30, "the worker told"
        )
    assert stats.backlog_peak <= LIMIT + CHUNK
    assert stats.backlog == 0
    assert any("is not reading" in t and "failing the session" in t for t in logs.texts())

    slow.transport.resumeProducing()
    await wait_until(lambda: any(m.type == 1 for m in slow.messages), 30, "the error")
    *chunks, error = slow.messages
    assert {(m.channel, m.type) for m in chunks} == {(1, 0)}
    assert sum(len(m.args[0]) for m in chunks) < HUGE // 4
    assert error.channel == 1
    assert error.args[0] == [errors.ENGINE, errors.CLIENT_TOO_SLOW]
    assert error.args[1].startswith(b"client too slow")
    slow.transport.loseConnection()
    await wait_until(lambda: load(host) == 0, 30, "the worker free")
    assert await stream_in_full(host, 1 << 20) == 1 << 20


class SlowHttpClient(Protocol):
    """Sends one request and reads nothing until told to."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = b""
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        small_receive_buffer(self)
        self.transport.pauseProducing()
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.closed.callback(None)


def _get(address: tuple[str, int], path: str) -> tuple[int, int]:
    connection = http.client.HTTPConnection(*address, timeout=30)
    try:
        connection.request("GET", path, headers={"X-Cocaine-Service": "flow"})
        response = connection.getresponse()
        size = 0
        while block := response.read(1 << 20):
            size += len(block)
        return response.status, size
    finally:
        connection.close()


@pytest_twisted.ensureDeferred
async def test_http_client_that_stops_reading_is_cut_off_while_others_are_served(
    host: WorkerHost,
) -> None:
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    stats = host.pools["flow"].stats
    overflows = stats.overflows
    request = f"GET /stream?{HUGE} HTTP/1.1\r\nHost: x\r\nX-Cocaine-Service: flow\r\n\r\n"
    slow = SlowHttpClient(request.encode())
    await connectProtocol(TCP4ClientEndpoint(reactor, *host.http_address), slow)
    status, size = await threads.deferToThread(_get, host.http_address, f"/stream?{FULL}")
    assert (status, size) == (200, FULL)
    await wait_until(lambda: stats.overflows == overflows + 1, 30, "the slow session failed")
    # the pool's backlog: the stalled session's, plus the reading caller's while a loaded
    # machine schedules it late; each is bounded by backlog-limit and one chunk
    assert stats.backlog_peak <= 2 * (LIMIT + CHUNK)
    slow.transport.resumeProducing()
    await slow.closed  # aborted: a graceful close would wait for a reader that never reads
    assert len(slow.received) < HUGE // 4
    assert not slow.received or slow.received.startswith(b"HTTP/1.1 200")
    await wait_until(lambda: load(host) == 0, 30, "the worker free")


@pytest_twisted.ensureDeferred
async def test_fast_uploader_to_a_slow_worker_is_paused_and_nothing_is_lost(
    host: WorkerHost,
) -> None:
    stats = host.pools["flow"].stats
    data = os.urandom(1 << 20) * 24
    service = await connect("flow", host.locator_address)
    try:
        channel = service.enqueue("slowsink")
        for start in range(0, len(data), CHUNK):
            channel.tx.write(data[start : start + CHUNK])
        channel.tx.close()
        reply = await channel.rx.read()
    finally:
        service.close()
    assert reply == b"%d %s" % (len(data), hashlib.sha256(data).hexdigest().encode())
    assert stats.throttled >= 1
    # without pausing the uploader, most of the 24 MiB would pile up in the host
    assert stats.overshoot_peak < 1024 * 1024


def _get_and_hang_up(address: tuple[str, int], path: str) -> bytes:
    """What curl does: read the head and Content-Length bytes, then close at once."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Cocaine-Service: flow\r\n\r\n".encode())
        received = b""
        while b"\r\n\r\n" not in received or not received.endswith(b"hello"):
            data = sock.recv(4096)
            if not data:
                break
            received += data
        return received


@pytest_twisted.ensureDeferred
async def test_http_reply_is_complete_at_its_content_length(host: WorkerHost) -> None:
    with LogCapture() as logs:
        # the worker closes the session 0.3 s after the body; the client has gone by then
        received = await threads.deferToThread(_get_and_hang_up, host.http_address, "/late")
        assert received.startswith(b"HTTP/1.1 200") and received.endswith(b"\r\n\r\nhello")
        await wait_until(lambda: any("late close" in t for t in logs.texts()), 30, "late close")
        await wait_until(lambda: load(host) == 0, 30, "the session ended")
    texts = logs.texts()
    # the session was complete, not cancelled; the worker's close found its session
    assert any("late close; cancelled=False" in t for t in texts)
    assert not any("has no session" in t for t in texts)


def _keep_alive(address: tuple[str, int]) -> list[object]:
    connection = http.client.HTTPConnection(*address, timeout=10)
    out: list[object] = []
    try:
        for path in ("/long", "/long", "/short"):
            connection.request("GET", path, headers={"X-Cocaine-Service": "flow"})
            response = connection.getresponse()
            try:
                out.append(response.read())
            except http.client.IncompleteRead as e:
                out.append(("incomplete", e.partial))
    finally:
        connection.close()
    return out


@pytest_twisted.ensureDeferred
async def test_reply_longer_or_shorter_than_its_content_length(host: WorkerHost) -> None:
    with LogCapture() as logs:
        got = await threads.deferToThread(_keep_alive, host.http_address)
    # the excess is dropped (the next response on the connection is intact); a short
    # reply cuts the connection, so the client sees it incomplete
    assert got == [b"hello", b"hello", ("incomplete", b"hello")]
    texts = logs.texts()
    assert any("longer than its Content-Length" in t for t in texts)
    assert any("5 bytes short of its Content-Length" in t for t in texts)
