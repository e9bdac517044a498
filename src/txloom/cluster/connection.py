"""One NATS client connection for reactor code.

nats-py is asyncio code. ``txloom.aioloop`` runs it on the reactor's own loop under
Twisted's asyncio reactor, or on a loop in a thread of its own under any other reactor
(``twistd``'s default epoll), so reactor code never waits on NATS: every operation returns
a Deferred that fires on the reactor thread, and every message a subscription receives is
handed to its handler on the reactor thread.

The connection knows several servers (``nats://h1:4222,nats://h2:4222``), keeps trying
until one answers, and reconnects for ever when the one it has goes away (nats-py keeps
its subscriptions across reconnects). Code that must redo something on every new
connection (bind a KV bucket, start a watch again) registers with ``when_connected``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import nats
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from txloom.aioloop import AsyncioRunner, runner_for
from txloom.bus.bridge.fence import fence

__all__ = [
    "CONNECT_TIMEOUT",
    "DRAIN_TIMEOUT",
    "RECONNECT_WAIT",
    "REQUEST_TIMEOUT",
    "InboundMessage",
    "NatsConnection",
    "Subscription",
    "parse_servers",
]

#: Seconds between connection attempts while no server answers.
RECONNECT_WAIT = 0.5
#: Seconds one connection attempt may take (TCP, then NATS's INFO/CONNECT/PING).
CONNECT_TIMEOUT = 2.0
#: Seconds ``stop`` gives the connection to drain what it was given.
DRAIN_TIMEOUT = 5.0
#: Seconds a request waits for its reply unless the caller says otherwise.
REQUEST_TIMEOUT = 5.0
#: Schemes nats-py connects with.
SCHEMES = ("nats", "tls", "ws", "wss")

T = TypeVar("T")


def parse_servers(text: str | Iterable[str]) -> tuple[str, ...]:
    """Server URLs from ``nats://h1:4222,nats://h2:4222`` (or a list of URLs).

    ``ValueError`` with one readable line for anything that is not such a list.
    """
    words = text.split(",") if isinstance(text, str) else list(text)
    servers = []
    for word in (w.strip() for w in words):
        if not word:
            continue
        try:
            parts = urlsplit(word)
            port = parts.port
        except ValueError as e:
            raise ValueError(f"bad NATS server URL {word!r}: {e}") from None
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise ValueError(
                f"bad NATS server URL {word!r}: expected {'|'.join(SCHEMES)}://HOST[:PORT]"
            )
        if parts.path not in ("", "/") or parts.query or port == 0:
            raise ValueError(f"bad NATS server URL {word!r}: expected nats://HOST[:PORT]")
        servers.append(word)
    if not servers:
        raise ValueError("no NATS server URL given (expected nats://HOST:PORT[,...])")
    return tuple(dict.fromkeys(servers))


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A message a subscription received; ``reply`` is empty unless it is a request."""

    subject: str
    data: bytes
    reply: str
    headers: dict[str, str] | None


class Subscription:
    """A subscription made with ``NatsConnection.subscribe``."""

    def __init__(self, connection: NatsConnection, sub: Any) -> None:
        self._connection = connection
        self._sub = sub

    def unsubscribe(self) -> Deferred[None]:
        """Stop receiving; fires once the server has been told (or the link is gone)."""

        async def unsubscribe() -> None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

        return self._connection.runner.run(unsubscribe())


class NatsConnection:
    """A NATS client connection to any of ``servers``, for reactor code.

    ``token``, ``user``/``password`` and ``tls`` (an ``ssl.SSLContext``; ``tls://`` URLs
    need one) are passed to nats-py as they are.
    """

    log = Logger()

    def __init__(
        self,
        servers: str | Sequence[str],
        *,
        name: str = "txloom",
        reactor: Any = None,
        runner: AsyncioRunner | str = "auto",
        token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        reconnect_wait: float = RECONNECT_WAIT,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.servers = parse_servers(servers)
        if reconnect_wait <= 0 or connect_timeout <= 0:
            raise ValueError("reconnect_wait and connect_timeout must be > 0")
        if reactor is None:
            from twisted.internet import reactor as default  # noqa: PLC0415

            reactor = default
        self.reactor = reactor
        self.name = name
        self.runner = runner if isinstance(runner, AsyncioRunner) else runner_for(reactor, runner)
        self.reconnect_wait = reconnect_wait
        self.connect_timeout = connect_timeout
        self._auth: dict[str, Any] = {
            k: v
            for k, v in (("token", token), ("user", user), ("password", password), ("tls", tls))
            if v is not None
        }
        #: True while connected (read on the reactor thread; it lags the loop a little).
        self.connected = False
        #: Connections made so far (the first and every reconnect).
        self.connections = 0
        #: The server of the current connection, as nats-py reports it.
        self.server = ""
        self._nc: Any = None
        self._started: Deferred[None] | None = None
        self._stopping = False
        self._connect_task: asyncio.Future[Any] | None = None
        self._on_connect: list[Callable[[Any], Any]] = []
        self._on_link: list[Callable[[bool], None]] = []
        self._tasks: set[asyncio.Future[Any]] = set()

    # -- lifetime -------------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Connect; fires once connected (it keeps trying until then), or once stopped.

        Call it once; later calls return an already-fired Deferred.
        """
        if self._started is not None:
            return succeed(None)
        self.runner.start()
        self.log.info(
            "connecting to NATS at {servers} (asyncio {mode})",
            servers=",".join(self.servers),
            mode=self.runner.mode,
        )
        self._started = self.runner.run(self._connect())
        return self._started

    def stop(self) -> Deferred[None]:
        """Drain and close the connection, then release the loop."""
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._started is not None:
            try:
                await self.runner.run(self._close())
            except Exception as e:
                self.log.warn("closing the NATS connection failed: {error}", error=e)
            self.runner.stop()
        self._set_link(False)

    # -- what reactor code calls ----------------------------------------------------------

    def run(self, fn: Callable[[Any], Awaitable[T]]) -> Deferred[T]:
        """``fn(nc)`` on the loop with the nats-py client; the Deferred fires on the reactor.

        Fails with ``ConnectionError`` if there is no client yet (before the first
        connection) or any more (stopped). While reconnecting nats-py itself decides:
        publications wait in its buffer, requests time out.
        """

        async def call() -> T:
            nc = self._nc
            if nc is None or self._stopping:
                raise ConnectionError("not connected to NATS")
            return await fn(nc)

        return self.runner.run(call())

    def publish(
        self, subject: str, data: bytes, headers: dict[str, str] | None = None
    ) -> Deferred[None]:
        """Hand a publication to the client (core NATS: no acknowledgement)."""
        return self.run(lambda nc: nc.publish(subject, data, headers=headers))

    def request(
        self,
        subject: str,
        data: bytes,
        timeout: float = REQUEST_TIMEOUT,
        headers: dict[str, str] | None = None,
    ) -> Deferred[InboundMessage]:
        """Request/reply: fires with the reply, or fails (``nats.errors.TimeoutError``,
        ``nats.errors.NoRespondersError``)."""

        async def request(nc: Any) -> InboundMessage:
            msg = await nc.request(subject, data, timeout=timeout, headers=headers)
            return InboundMessage(msg.subject, msg.data, msg.reply or "", msg.headers)

        return self.run(request)

    def subscribe(
        self, subject: str, handler: Callable[[InboundMessage], Any], queue: str = ""
    ) -> Deferred[Subscription]:
        """Call ``handler`` on the reactor thread for every message on ``subject``.

        Fires once the server has the subscription (a round trip), so that what anyone
        publishes afterwards reaches it.
        """

        async def deliver(msg: Any) -> None:
            inbound = InboundMessage(msg.subject, msg.data, msg.reply or "", msg.headers)
            self.runner.to_reactor(self._call_handler, handler, inbound)

        async def subscribe(nc: Any) -> Subscription:
            sub = await nc.subscribe(subject, queue=queue, cb=deliver)
            await fence(nc, self.connect_timeout)  # nc.flush can overtake the SUB
            return Subscription(self, sub)

        return self.run(subscribe)

    def _call_handler(self, handler: Callable[[InboundMessage], Any], msg: InboundMessage) -> None:
        try:
            handler(msg)
        except Exception:
            self.log.failure("handler for NATS subject {subject} failed", subject=msg.subject)

    def on_link(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(connected)`` on the reactor thread whenever the link changes."""
        self._on_link.append(callback)

    def when_connected(self, fn: Callable[[Any], Awaitable[None] | None]) -> None:
        """Call ``fn(nc)`` on the loop after every (re)connection, and now if connected.

        For what does not survive a reconnect by itself (KV watches, bucket bindings).
        Call it from the reactor thread; ``fn`` may be a coroutine function.
        """

        def register() -> None:
            self._on_connect.append(fn)
            if self._nc is not None and self._nc.is_connected:
                self._background(self._notify(fn, self._nc))

        self.runner.call_in_loop(register)

    # -- the loop side --------------------------------------------------------------------

    async def _connect(self) -> None:
        self._connect_task = asyncio.current_task()
        with contextlib.suppress(asyncio.CancelledError):  # stopped before NATS was there
            await self._open()

    async def _open(self) -> None:
        attempts = 0
        while not self._stopping:
            nc = nats.NATS()
            try:
                await nc.connect(
                    servers=list(self.servers),
                    name=self.name,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=self.reconnect_wait,
                    connect_timeout=self.connect_timeout,
                    **self._callbacks(nc),
                    **self._auth,
                )
            except Exception as e:
                attempts += 1
                if attempts & (attempts - 1) == 0:
                    self._say(
                        "warn",
                        "cannot connect to NATS at {servers} ({error}); attempt {n}, retrying",
                        servers=",".join(self.servers),
                        error=str(e) or type(e).__name__,
                        n=attempts,
                    )
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(nc.close(), self.connect_timeout)
                await asyncio.sleep(self.reconnect_wait)
                continue
            self._nc = nc
            self._connected(nc)
            return

    def _connected(self, nc: Any) -> None:
        self.connections += 1
        url = nc.connected_url
        self.server = f"{url.scheme}://{url.hostname}:{url.port}" if url is not None else ""
        self._say("info", "connected to NATS at {server}", server=self.server)
        self.runner.to_reactor(self._set_link, True)
        for fn in list(self._on_connect):
            self._background(self._notify(fn, nc))

    async def _notify(self, fn: Callable[[Any], Any], nc: Any) -> None:
        try:
            result = fn(nc)
            if asyncio.iscoroutine(result):
                await result
        except Exception as e:
            self._say("warn", "after connecting to NATS: {error}", error=repr(e))

    def _callbacks(self, nc: Any) -> dict[str, Callable[..., Awaitable[None]]]:
        """nats-py's callbacks; they must not raise (nats-py awaits them inside its
        reconnection task, which an exception would end)."""

        async def disconnected() -> None:
            if nc is self._nc and not self._stopping:
                self.runner.to_reactor(self._set_link, False)
                self._say("warn", "disconnected from NATS at {server}", server=self.server)

        async def reconnected() -> None:
            if nc is self._nc and not self._stopping:
                self._connected(nc)

        async def closed() -> None:
            # nats-py gave the connection up (it does on some server errors): start afresh
            if nc is self._nc and not self._stopping:
                self._nc = None
                self.runner.to_reactor(self._set_link, False)
                self._say("warn", "NATS closed the connection; connecting again")
                self._connect_task = asyncio.ensure_future(self._connect())

        async def error(e: Exception) -> None:
            if nc is self._nc and not self._stopping:
                self._say("debug", "NATS: {error}", error=str(e) or type(e).__name__)

        return {
            "disconnected_cb": disconnected,
            "reconnected_cb": reconnected,
            "closed_cb": closed,
            "error_cb": error,
        }

    async def _close(self) -> None:
        connecting = self._connect_task
        if connecting is not None and not connecting.done():
            connecting.cancel()
            await asyncio.wait([connecting])
        for task in list(self._tasks):
            task.cancel()
        nc, self._nc = self._nc, None
        if nc is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.drain(), DRAIN_TIMEOUT)
        if not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.close()

    def _background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    def _set_link(self, up: bool) -> None:
        if up == self.connected:
            return
        self.connected = up
        for callback in list(self._on_link):
            try:
                callback(up)
            except Exception:
                self.log.failure("NATS link listener failed")

    def _report(self, level: str, text: str, fields: dict[str, Any]) -> None:
        getattr(self.log, level)(text, **fields)

    def _say(self, level: str, text: str, **fields: Any) -> None:
        """Log from the loop side (Twisted's log observers run on the reactor thread)."""
        self.runner.to_reactor(self._report, level, text, fields)
