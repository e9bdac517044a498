"""The store server as a Twisted service: listeners, backend, graceful drain.

Start-up binds every listener first (so a port in use fails at once, before any data is
touched), then recovers the backend on the writer thread, and only then starts reading
requests and logs ``listening on ...`` with the real addresses. Stopping (SIGTERM under
``twistd``) drains: listeners close, connections stop reading, every write already taken
is committed and answered, the WAL is fsynced, and the process exits 0.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from txloom import extensions
from txloom.interfaces import IStorageBackend, IStorageBackendFactory
from txloom.shutdown import StartFailed, stop_and_exit
from txloom.store.config import StoreConfig
from txloom.store.directory import DataDirectoryLocked
from txloom.store.ops import RequestRouter
from txloom.store.protocol import StoreServerProtocol
from txloom.store.subscriptions import SubscriptionHub

__all__ = ["StoreServerFactory", "StoreService", "StoreStartError", "make_backend"]


class StoreStartError(RuntimeError):
    """The server cannot start (port in use, data directory locked, damaged files)."""


def make_backend(config: StoreConfig, reactor: Any) -> IStorageBackend:
    """The backend ``config.backend`` names, built by its installed factory."""
    factory = extensions.available(IStorageBackendFactory).get(config.backend)
    if factory is None:
        installed = ", ".join(extensions.available(IStorageBackendFactory)) or "none"
        raise ValueError(f"unknown backend {config.backend!r} (installed: {installed})")
    return factory.backend(reactor, config, config.backend_options)


class StoreServerFactory(Factory):
    """Shared state of every connection of one server: backend, hub, counters, limits."""

    log = Logger()

    def __init__(self, backend: IStorageBackend, config: StoreConfig, clock: Any) -> None:
        self.backend = backend
        self.config = config
        self.clock = clock
        self.hub = SubscriptionHub(backend, clock)
        self.router = RequestRouter(self)
        self.connections: set[StoreServerProtocol] = set()
        #: Connections that have not authenticated yet, oldest first.
        self.unauthenticated: dict[StoreServerProtocol, None] = {}
        #: Bytes of unfinished frames held across all connections.
        self.partial_bytes = 0
        self.facts_written = 0
        #: write_fact requests taken (facts_written counts those acknowledged).
        self.write_requests = 0
        #: Called with the seconds from a write_fact request to its acknowledgement
        #: (the status site's latency histogram); None: nothing measured.
        self.on_write_acked: Callable[[float], Any] | None = None
        self.started = time.monotonic()
        self.ready = False
        self.draining = False
        self._waiting: list[StoreServerProtocol] = []
        self._all_closed: defer.Deferred | None = None

    def buildProtocol(self, addr: Any) -> StoreServerProtocol:
        return StoreServerProtocol(self)

    def admit(self, conn: StoreServerProtocol) -> bool:
        """Take ``conn`` in, or refuse it (``overloaded``) at the connection cap.

        A connection that has not authenticated never keeps a newcomer out: past
        either cap, the oldest of them makes room (it may hold a slot for at most the
        auth timeout anyway), so a client with the token always gets in.
        """
        config = self.config
        full = len(self.connections) >= config.max_connections
        if not conn.authenticated and len(self.unauthenticated) >= config.max_unauthenticated:
            full = True
        if full and self.unauthenticated:
            oldest = next(iter(self.unauthenticated))
            self.log.info(
                "closing unauthenticated connection from {peer} to make room",
                peer=oldest.peer,
            )
            self.release(oldest)
            oldest.evict()
        elif full:
            self.log.warn(
                "refused a connection from {peer}: {n} connections open (limit)",
                peer=conn.peer,
                n=len(self.connections),
            )
            return False
        self.connections.add(conn)
        if not conn.authenticated:
            self.unauthenticated[conn] = None
        if not self.ready:
            # recovery still running: hold the connection's requests until it is done
            conn.transport.pauseProducing()
            self._waiting.append(conn)
        return True

    def authenticated(self, conn: StoreServerProtocol) -> None:
        self.unauthenticated.pop(conn, None)

    def release(self, conn: StoreServerProtocol) -> None:
        if conn not in self.connections:
            return
        conn.counted = False
        self.unauthenticated.pop(conn, None)
        self.connections.discard(conn)
        if self._all_closed is not None and not self.connections:
            d, self._all_closed = self._all_closed, None
            d.callback(None)

    def set_ready(self) -> None:
        self.ready = True
        waiting, self._waiting = self._waiting, []
        for conn in waiting:
            if conn.connected:
                conn.transport.resumeProducing()

    async def drain(self, timeout: float) -> None:
        """Stop reading, commit and answer what was taken, close every connection."""
        self.draining = True
        for conn in list(self.connections):
            conn.drain()
        await self.backend.when_idle()
        for conn in list(self.connections):
            if conn.idle:
                conn.lose_connection()
        if not self.connections:
            return
        self._all_closed = defer.Deferred()
        timer = self.clock.callLater(timeout, self._abort_all)
        await self._all_closed
        if timer.active():
            timer.cancel()

    def _abort_all(self) -> None:
        self.log.warn(
            "{n} connections did not take their last answers in time; aborting them",
            n=len(self.connections),
        )
        for conn in list(self.connections):
            conn.transport.abortConnection()


def describe_address(description: str, port: IListeningPort) -> str:
    """``tcp:HOST:PORT``, ``ssl:HOST:PORT`` or ``unix:PATH``, with the real port."""
    host = port.getHost()
    scheme = description.split(":", 1)[0].lower()
    if hasattr(host, "port"):
        kind = "ssl" if scheme in ("ssl", "tls") else "tcp"
        return f"{kind}:{host.host}:{host.port}"
    name = getattr(host, "name", host)
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    return f"unix:{name}"


class StoreService(MultiService):
    """``twistd storeserver`` without the command line: build it from a ``StoreConfig``.

    ``ready`` fires with the listening addresses once the server answers requests (or
    fails with ``StoreStartError``). With ``exit_on_failure`` (under twistd) a start
    failure logs one line and ends the process with status 1. ``backend`` (any
    ``IStorageBackend``) is used as given; without it, the one ``config.backend`` names
    is built by its factory.
    """

    log = Logger()

    def __init__(
        self,
        config: StoreConfig,
        reactor: Any = None,
        *,
        backend: IStorageBackend | None = None,
        exit_on_failure: bool = False,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor  # noqa: PLC0415 - the installed one
        self.reactor = reactor
        self.config = config
        self.exit_on_failure = exit_on_failure
        self.backend = backend if backend is not None else make_backend(config, reactor)
        self.factory = StoreServerFactory(self.backend, config, reactor)
        self.ports: list[IListeningPort] = []
        self.addresses: list[str] = []
        self.ready: defer.Deferred = defer.Deferred()
        self._bound = False
        self._starting: defer.Deferred | None = None

    # -- start --------------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._bind()

    def _bind(self) -> None:
        if self._bound:
            return
        self._bound = True
        try:
            for description in self.config.listen:
                endpoint = serverFromString(self.reactor, description)
                result: list[Any] = []
                endpoint.listen(self.factory).addBoth(result.append)
                if not result:
                    raise StoreStartError(f"cannot listen on {description}: did not bind at once")
                if isinstance(result[0], Failure):
                    raise StoreStartError(
                        f"cannot listen on {description}: {result[0].getErrorMessage()}"
                    )
                self.ports.append(result[0])
                self.addresses.append(describe_address(description, result[0]))
            self.backend.prepare()  # open and lock the data directory now
        except (StoreStartError, DataDirectoryLocked, OSError, ValueError) as e:
            for port in self.ports:
                port.stopListening()
            self.ports.clear()
            self._start_failed(e)

    def _start_failed(self, error: Exception) -> None:
        message = str(error)
        self.log.critical("storeserver cannot start: {message}", message=message)
        if not self.ready.called:
            self.ready.errback(StoreStartError(message))
            self.ready.addErrback(lambda _: None)
        if self.exit_on_failure:
            raise StartFailed(f"storeserver: {message}")
        raise StoreStartError(message)

    def startService(self) -> None:
        self._bind()
        super().startService()
        self._starting = defer.Deferred.fromCoroutine(self._open())

    async def _open(self) -> None:
        backend = self.backend
        self.log.info(
            "storeserver: backend {backend} in {where}, fsync {fsync}, frame limit {frame} bytes",
            backend=backend.name,
            where=backend.location,
            fsync=str(backend.fsync) if backend.durable else "n/a",
            frame=self.config.max_frame_size,
        )
        try:
            summary = await backend.open()
        except Exception as e:
            self.log.failure("recovery failed")
            reason = f"recovery of {backend.location} failed: {e}"
            if self.exit_on_failure:
                self.log.critical("storeserver cannot start: {reason}", reason=reason)
                stop_and_exit(self.reactor, 1)
            if not self.ready.called:
                self.ready.errback(StoreStartError(reason))
            return
        self.log.info("{summary}", summary=summary)
        self.factory.set_ready()
        for address in self.addresses:
            self.log.info("storeserver listening on {address}", address=address)
        self.ready.callback(list(self.addresses))

    # -- stop ---------------------------------------------------------------------------

    def stopService(self) -> defer.Deferred:
        super().stopService()
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._starting is not None:
            await self._starting
        started = time.monotonic()
        for port in self.ports:
            await port.stopListening()
        self.ports.clear()
        await self.factory.drain(self.config.drain_timeout)
        self.factory.hub.close()
        await self.backend.close()
        self.log.info(
            "storeserver stopped: {written} facts written by this process, last seq {last}; "
            "drained in {ms:.0f} ms",
            written=self.factory.facts_written,
            last=self.backend.last_seq,
            ms=(time.monotonic() - started) * 1000,
        )
