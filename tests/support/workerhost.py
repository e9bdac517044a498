"""Worker host test helpers: app directories, an in-process host, one-shot calls."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol

from support.waiting import until
from txloom.wire.cocaine import Decoder, Message, encode
from txloom.worker.client import Service, connect
from txloom.worker.host import WorkerHost

#: The tests' worker script (one event per behaviour under test).
TESTWORKER = Path(__file__).resolve().parent.parent / "worker" / "apps" / "testworker.py"
TESTWORKER_COMMAND = ["{python}", str(TESTWORKER)]

#: Short timeouts, so that failure handling is seen within a test's time.
FAST_PROFILE = {
    "heartbeat-timeout": 2.0,
    "terminate-timeout": 2.0,
    "handshake-timeout": 10.0,
    "spawn-timeout": 5.0,
}


@contextmanager
def short_tmpdir() -> Iterator[Path]:
    """A directory with a short path (Unix socket paths are limited to ~104 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="txl-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_app(apps: Path, name: str, command: list[str] | None = None, **fields: Any) -> Path:
    """A JSON manifest for app ``name`` (the test worker unless ``command`` says otherwise)."""
    profile = {**FAST_PROFILE, **fields.pop("profile", {})}
    manifest = {"name": name, "command": command or TESTWORKER_COMMAND, "profile": profile}
    manifest.update(fields)
    path = apps / f"{name}.json"
    path.write_text(json.dumps(manifest))
    return path


def start_host(
    root: Path, apps: dict[str, dict[str, Any]], http: bool = False, **options: Any
) -> WorkerHost:
    """A started in-process host on ephemeral ports serving ``apps`` (name -> fields)."""
    (root / "apps").mkdir(exist_ok=True)
    for name, fields in apps.items():
        write_app(root / "apps", name, **fields)
    host = WorkerHost(
        root / "apps",
        root / "run",
        locator="tcp:0:interface=127.0.0.1",
        http="tcp:0:interface=127.0.0.1" if http else None,
        **options,
    )
    host.startService()
    return host


async def call(
    host: WorkerHost, app: str, event: str, chunks: Iterable[bytes] = (), headers: Any = None
) -> bytes:
    """Enqueue ``event`` with ``chunks`` through the Locator; the joined reply."""
    service: Service = await connect(app, host.locator_address)
    try:
        channel = service.enqueue(event, headers=headers)
        for chunk in chunks:
            channel.tx.write(chunk)
        channel.tx.close()
        return await channel.rx.read_all()
    finally:
        service.close()


async def wait_until(predicate: Any, timeout: float = 20.0, what: str = "condition") -> None:
    """``support.waiting.until`` under the name the worker tests use."""
    await until(predicate, timeout, what, interval=0.02)


class LogCapture:
    """Collects log events (as dicts) while active; use as a context manager."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def __enter__(self) -> LogCapture:
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc: object) -> None:
        from twisted.logger import globalLogPublisher

        globalLogPublisher.removeObserver(self)

    def matching(self, **fields: Any) -> list[dict[str, Any]]:
        return [e for e in self.events if all(e.get(k) == v for k, v in fields.items())]

    def texts(self) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events]


class RawPeer(Protocol):
    """A raw Cocaine-protocol peer for tests: sends bytes, collects decoded messages."""

    def __init__(self) -> None:
        self.decoder = Decoder()
        self.messages: list[Message] = []
        self.closed: Deferred[None] = Deferred()
        self._waiting: list[tuple[int, Deferred[list[Message]]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.decoder.receive_data(data)
        self.messages.extend(self.decoder)
        for n, d in list(self._waiting):
            if len(self.messages) >= n:
                self._waiting.remove((n, d))
                d.callback(self.messages[:n])

    def connectionLost(self, reason: object = None) -> None:
        self.closed.callback(None)

    def send(self, *message: Any) -> None:
        self.transport.write(encode(*message))

    def wait_messages(self, n: int, timeout: float = 10.0) -> Deferred[list[Message]]:
        """Fires with the first ``n`` messages once they have arrived."""
        from twisted.internet import reactor

        d: Deferred[list[Message]] = Deferred()
        if len(self.messages) >= n:
            d.callback(self.messages[:n])
        else:
            self._waiting.append((n, d))
        return d.addTimeout(timeout, reactor)


async def raw_connect(address: tuple[str, int] | str) -> RawPeer:
    """A ``RawPeer`` connected to a TCP address or a Unix socket path."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint, connectProtocol

    if isinstance(address, str):
        endpoint = UNIXClientEndpoint(reactor, address)
    else:
        endpoint = TCP4ClientEndpoint(reactor, *address)
    return await connectProtocol(endpoint, RawPeer())


class WorkerChild(ProcessProtocol):
    """A worker process started by a test (stdout and stderr kept, exit code reported)."""

    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[int | None] = Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode)


def spawn_worker(script: Path, args: list[str], env: dict[str, str] | None = None) -> WorkerChild:
    import os
    import sys

    from twisted.internet import reactor

    child = WorkerChild()
    reactor.spawnProcess(
        child,
        sys.executable,
        [sys.executable, str(script), *args],
        env={**os.environ, **(env or {})},
    )
    return child


class FakeEngine(Factory):
    """Accepts one worker on a Unix socket and hands its connection to the test."""

    noisy = False

    def __init__(self) -> None:
        self.connected: Deferred[RawPeer] = Deferred()

    def buildProtocol(self, addr: Any) -> RawPeer:
        peer = RawPeer()
        peer.factory = self

        original = peer.connectionMade

        def made() -> None:
            original()
            if not self.connected.called:
                self.connected.callback(peer)

        peer.connectionMade = made  # type: ignore[method-assign]
        return peer


class SocketWorker:
    """The worker end of an app socket on an in-memory transport, handshaken.

    For step-by-step engine tests: ``send`` feeds messages as if the worker wrote them,
    ``received`` returns what the engine wrote. ``congested`` pauses the connection as a
    full socket buffer would before the handshake.
    """

    def __init__(self, pool: Any, uuid: str, congested: bool = False) -> None:
        from twisted.internet.testing import StringTransport

        from txloom.worker.control import WorkerConnection

        self.connection = WorkerConnection(pool)
        self.transport = StringTransport()
        self.connection.makeConnection(self.transport)
        if congested:
            self.connection.pauseProducing()
        self.decoder = Decoder()
        self.connection.dataReceived(encode(1, 0, [uuid]))

    def received(self) -> list[Message]:
        data = self.transport.value()
        self.transport.clear()
        self.decoder.receive_data(data)
        return list(self.decoder)

    def send(self, *args: Any) -> None:
        self.connection.dataReceived(encode(*args))
