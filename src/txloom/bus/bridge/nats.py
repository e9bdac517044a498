"""The NATS bridge: chosen message types cross between a bus and a NATS cluster.

One subject per message type (``prefix + msg_type``), the Grav message JSON as payload, so
that meshes which outgrow one mesh scale through NATS and any NATS client can read the
traffic. The bridge is a pod: it publishes every bridged message its bus carries that did
not come from NATS, and sends into the bus every bridged message NATS delivers.

No echo, three ways: the pod never receives what it sent into the bus (self-filter); the
NATS connection is made with ``no_echo`` so the server never returns our own publications;
and a bounded memory of uuids drops any message seen before in either direction (a second
bridge in the same mesh republishing it, say).

A publication leaves the bridge's keeping only once the server has confirmed it: after
handing NATS publications, the bridge sends a PING behind them on the wire (nats-py's own
``flush`` can overtake what it buffered, see ``fence``), and the PONG confirms everything
before it. One PING is out at a time and publishing goes on meanwhile, so confirming does
not hold publishing back. If the connection drops first, what is unconfirmed goes again,
ahead of anything newer, on the next connection; while NATS is away, publications wait in
a bounded outbox. So a NATS restart loses nothing the bridge was given: every publication
is confirmed (the server routed it to the subscriptions that existed then), or counted as
dropped (outbox full, larger than the server allows), or reported when the bridge stops.
A publication in flight when a connection broke may reach NATS twice; the copy has the
same uuid, and bridges drop it.

nats-py is asyncio code; ``txloom.aioloop`` runs it on the reactor's own loop under
Twisted's asyncio reactor, or in a thread of its own under any other reactor.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import nats
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from txloom.aioloop import AsyncioRunner, runner_for
from txloom.bus.bus import Bus
from txloom.bus.message import Message
from txloom.bus.seen import DEFAULT_SEEN_CAPACITY, SeenSet
from txloom.interfaces import IBridgeTransport
from txloom.wire.grav import NotAMessage

from .fence import FenceFailed, NoAnswer, fence, round_trip, written
from .subjects import valid_subject

__all__ = [
    "CONFIRM_TIMEOUT",
    "OUTBOX_LIMIT",
    "PUBLISH_BATCH",
    "RECONNECT_WAIT",
    "NatsBridge",
]

#: Publications the bridge keeps until NATS confirms them (waiting for a connection, or
#: sent and not yet confirmed) before new ones are dropped and counted.
OUTBOX_LIMIT = 65_536
#: Seconds between connection attempts while NATS is unreachable.
RECONNECT_WAIT = 1.0
#: Publications handed to NATS in one go before the bridge lets other work run on the loop.
PUBLISH_BATCH = 1024
#: Seconds the server has to answer a PING; past that the connection is taken for broken,
#: and what it had not confirmed goes again on a new one.
CONFIRM_TIMEOUT = 5.0
#: Seconds one connection attempt may take (TCP, then NATS's INFO/CONNECT/PING).
CONNECT_TIMEOUT = 2.0
#: Seconds ``stop`` gives publications to be confirmed, and again the connection to drain.
DRAIN_TIMEOUT = 5.0
#: Seconds the pump waits for nats-py to report a connection it has found broken.
_LINK_SETTLE = 0.05


@implementer(IBridgeTransport, IPushProducer)
class NatsBridge:
    """Bridge ``message_types`` between ``bus`` and the NATS server at ``url``."""

    log = Logger()

    def __init__(
        self,
        bus: Bus,
        url: str,
        message_types: Iterable[str],
        *,
        subject_prefix: str = "",
        reactor: Any = None,
        runner: AsyncioRunner | str = "auto",
        seen_capacity: int = DEFAULT_SEEN_CAPACITY,
        outbox_limit: int = OUTBOX_LIMIT,
        reconnect_wait: float = RECONNECT_WAIT,
        publish_batch: int = PUBLISH_BATCH,
        confirm_timeout: float = CONFIRM_TIMEOUT,
    ) -> None:
        self.bus = bus
        self.url = url
        self.message_types = tuple(dict.fromkeys(message_types))
        if not self.message_types:
            raise ValueError("a bridge needs at least one message type")
        for msg_type in self.message_types:
            if not valid_subject(subject_prefix + msg_type):
                raise ValueError(f"{subject_prefix + msg_type!r} is not a valid NATS subject")
        if publish_batch < 1 or confirm_timeout <= 0 or reconnect_wait <= 0:
            raise ValueError("publish_batch, confirm_timeout and reconnect_wait must be > 0")
        self.subject_prefix = subject_prefix
        self.reactor = reactor if reactor is not None else bus.reactor
        self.runner = (
            runner if isinstance(runner, AsyncioRunner) else runner_for(self.reactor, runner)
        )
        self.outbox_limit = outbox_limit
        self.reconnect_wait = reconnect_wait
        self.publish_batch = publish_batch
        self.confirm_timeout = confirm_timeout
        #: publications the server confirmed
        self.published = 0
        #: publications sent again because their connection broke before the server confirmed
        self.resent = 0
        self.received = 0
        self.duplicates = 0
        self.dropped = 0
        self.oversize = 0
        self.rejected = 0
        self._seen = SeenSet(seen_capacity)
        self._nc: Any = None
        self._connected = False
        self._stopping = False
        self._pod = bus.connect()
        # reactor -> loop: publications not yet handed to NATS, oldest first. The reactor
        # only appends; the loop takes from the left and puts back on the left.
        self._outbox: deque[tuple[str, bytes]] = deque()
        self._outbox_scheduled = False
        # loop -> reactor: deliveries, handed over in batches
        self._inbox: deque[bytes] = deque()
        self._inbox_scheduled = False
        # loop side. Publications handed to NATS on connection number ``_sent_on`` that the
        # server has not confirmed yet; a new connection gets a new number.
        self._unconfirmed: deque[tuple[str, bytes]] = deque()
        self._sent_on = 0
        self._generation = 0
        # the PING out, if any; its PONG confirms the first ``_fenced`` of _unconfirmed
        self._fencing: asyncio.Future[None] | None = None
        self._fenced = 0
        self._tasks: set[asyncio.Future[Any]] = set()
        self._link_up = asyncio.Event()
        self._link_lost = asyncio.Event()
        self._wake = asyncio.Event()
        self._flowing = asyncio.Event()  # cleared while the bus is paused
        if not bus.paused:
            self._flowing.set()
        self._errors = 0
        self._publish_failures = 0
        self._started: Deferred[None] | None = None
        self._connect_task: asyncio.Future[Any] | None = None
        self._pump_task: asyncio.Future[None] | None = None

    def subject(self, msg_type: str) -> str:
        return self.subject_prefix + msg_type

    # =========================================================================================
    # Lifetime
    # =========================================================================================

    def start(self) -> Deferred[None]:
        """Begin bridging; fires once connected and subscribed, with the subscriptions
        confirmed by the server (it keeps retrying until then), or once stopped before that.

        Call it once; later calls return an already-fired Deferred.
        """
        if self._started is not None:
            return succeed(None)
        self.runner.start()
        self._pod.on_type(self.message_types, self._outbound)
        self.bus.register_producer(self)
        self.bus.attach(self)
        self.log.info(
            "bridging {types} to {url} (subjects {prefix}<type>, asyncio {mode})",
            types=", ".join(self.message_types),
            url=self.url,
            prefix=self.subject_prefix,
            mode=self.runner.mode,
        )
        self._started = self.runner.run(self._connect())
        return self._started

    def stop(self) -> Deferred[None]:
        """Stop taking messages, have NATS confirm what is left, drain, release the loop."""
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._pod.disconnect()
        self.bus.unregister_producer(self)
        if self._started is not None:
            try:
                await self.runner.run(self._close())
            except Exception as e:
                self.log.warn("closing the NATS connection failed: {error}", error=e)
            self.runner.stop()

    def describe(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "types": list(self.message_types),
            "connected": self._connected,
            "mode": self.runner.mode,
            "published": self.published,
            "waiting": len(self._outbox),
            "unconfirmed": len(self._unconfirmed),
            "resent": self.resent,
            "received": self.received,
            "duplicates": self.duplicates,
            "dropped": self.dropped,
            "oversize": self.oversize,
            "rejected": self.rejected,
        }

    # =========================================================================================
    # Bus side (reactor thread)
    # =========================================================================================

    def _outbound(self, msg: Message) -> None:
        """The bridge pod's handler: a bridged message on the bus goes to NATS."""
        if not self._seen.add(msg.uuid):
            self.duplicates += 1
            return
        if len(self._outbox) + len(self._unconfirmed) >= self.outbox_limit:
            self.dropped += 1
            if self.dropped & (self.dropped - 1) == 0:
                self.log.warn(
                    "NATS is not keeping up: {dropped} publications dropped so far",
                    dropped=self.dropped,
                )
            return
        self._outbox.append((self.subject(msg.msg_type), msg.to_json()))
        if not self._outbox_scheduled:
            self._outbox_scheduled = True
            self.runner.call_in_loop(self._wake.set)

    def _deliver(self) -> None:
        """Messages NATS delivered, into the bus (one hand-over per batch)."""
        self._inbox_scheduled = False
        inbox = self._inbox
        post = self.bus.post
        pod = self._pod
        types = self.message_types
        while inbox:
            payload = inbox.popleft()
            try:
                msg = Message.from_json(payload)
            except NotAMessage as e:
                self._reject(f"not a message ({e})")
                continue
            if msg.msg_type not in types:
                self._reject(f"type {msg.msg_type!r} is not bridged")
                continue
            if not self._seen.add(msg.uuid):
                self.duplicates += 1
                continue
            self.received += 1
            if pod.connected:
                post(msg, pod)

    def _reject(self, why: str) -> None:
        self.rejected += 1
        if self.rejected & (self.rejected - 1) == 0:
            self.log.warn(
                "dropped a NATS message: {why} ({count} so far)", why=why, count=self.rejected
            )

    def _report(self, level: str, text: str, fields: dict[str, Any]) -> None:
        getattr(self.log, level)(text, **fields)

    def _say(self, level: str, text: str, **fields: Any) -> None:
        """Log from the loop side (Twisted's log observers run on the reactor thread)."""
        self.runner.to_reactor(self._report, level, text, fields)

    # IPushProducer: the bus pauses us while a local pod is over its queue limit.
    def pauseProducing(self) -> None:
        self.runner.call_in_loop(self._set_flowing, False)

    def resumeProducing(self) -> None:
        self.runner.call_in_loop(self._set_flowing, True)

    def stopProducing(self) -> None:
        self.pauseProducing()

    # =========================================================================================
    # NATS side (the asyncio loop): the connection
    # =========================================================================================

    def _set_flowing(self, flowing: bool) -> None:
        (self._flowing.set if flowing else self._flowing.clear)()

    async def _connect(self) -> None:
        self._connect_task = asyncio.current_task()
        with contextlib.suppress(asyncio.CancelledError):  # stopped before NATS was there
            await self._open()

    async def _open(self) -> None:
        """Connect, subscribe, and have the server confirm the subscriptions (so that
        whatever is published after ``start()`` fired reaches us); retry until then."""
        attempts = 0
        while not self._stopping:
            nc = nats.NATS()
            self._nc = nc
            try:
                # nats-py retries the TCP connection itself, every reconnect_wait seconds
                await nc.connect(
                    servers=[self.url],
                    name="txloom-bus-bridge",
                    no_echo=True,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=self.reconnect_wait,
                    connect_timeout=CONNECT_TIMEOUT,
                    **self._callbacks(nc),
                )
                for msg_type in self.message_types:
                    await nc.subscribe(self.subject(msg_type), cb=self._from_nats)
                await fence(nc, self.confirm_timeout)
            except Exception as e:
                attempts += 1
                if attempts & (attempts - 1) == 0:
                    self._say(
                        "warn",
                        "cannot connect to NATS at {url} ({error}); attempt {n}, retrying",
                        url=self.url,
                        error=str(e) or type(e).__name__,
                        n=attempts,
                    )
                await self._discard(nc)
                await asyncio.sleep(self.reconnect_wait)
                continue
            self._link_is_up()
            self._say("info", "NATS bridge connected to {url}", url=self.url)
            return

    async def _discard(self, nc: Any) -> None:
        if self._nc is nc:
            self._nc = None  # its callbacks no longer speak for the bridge
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), CONNECT_TIMEOUT)

    def _callbacks(self, nc: Any) -> dict[str, Callable[..., Awaitable[None]]]:
        """nats-py's callbacks for ``nc``; they act only while ``nc`` is the bridge's own.

        They must not raise: nats-py awaits them inside its reconnection task, which an
        exception would end, leaving the client reconnecting for ever.
        """

        async def disconnected() -> None:
            if nc is self._nc:
                self._link_is_down()
                if not self._stopping:
                    self._say(
                        "warn",
                        "NATS bridge disconnected from {url}; {count} publications wait",
                        url=self.url,
                        count=len(self._outbox) + len(self._unconfirmed),
                    )

        async def reconnected() -> None:
            if nc is self._nc:
                self._link_is_up()
                self._say(
                    "info",
                    "NATS bridge reconnected to {url}; {count} publications to send",
                    url=self.url,
                    count=len(self._outbox) + len(self._unconfirmed),
                )

        async def closed() -> None:
            # nats-py gave this connection up (it does on some server errors): start afresh
            if nc is self._nc and not self._stopping:
                self._link_is_down()
                self._nc = None
                self._say("warn", "NATS closed the bridge's connection; connecting again")
                self._connect_task = asyncio.ensure_future(self._connect())

        async def error(e: Exception) -> None:
            if nc is self._nc and not self._stopping:
                self._errors += 1
                if self._errors & (self._errors - 1) == 0:
                    self._say(
                        "warn",
                        "NATS at {url}: {error} ({count} errors since last connected)",
                        url=self.url,
                        error=str(e) or type(e).__name__,
                        count=self._errors,
                    )

        return {
            "disconnected_cb": disconnected,
            "reconnected_cb": reconnected,
            "closed_cb": closed,
            "error_cb": error,
        }

    def _link_is_up(self) -> None:
        self._generation += 1
        self._errors = 0
        self._connected = True
        self._link_lost.clear()
        self._link_up.set()
        self._wake.set()
        if self._pump_task is None:
            self._pump_task = asyncio.ensure_future(self._pump())

    def _link_is_down(self) -> None:
        self._connected = False
        self._link_up.clear()
        self._link_lost.set()
        if self._fencing is not None:
            self._fencing.cancel()  # the connection is gone, and its PONG with it

    async def _close(self) -> None:
        connecting = self._connect_task
        if connecting is not None and not connecting.done():
            connecting.cancel()
            await asyncio.wait([connecting])
        pump = self._pump_task
        if pump is not None and not pump.done():
            self._wake.set()  # it sees _stopping, sends what is left while it can, and ends
            done, _ = await asyncio.wait([pump], timeout=DRAIN_TIMEOUT)
            if not done:
                pump.cancel()
                await asyncio.wait([pump])
        nc, self._nc = self._nc, None
        self._link_is_down()
        left = len(self._outbox) + len(self._unconfirmed)
        if left:
            self._say(
                "warn",
                "NATS bridge stopped; publications NATS never confirmed: {count}",
                count=left,
            )
        if nc is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.drain(), DRAIN_TIMEOUT)
        if not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.close()

    # =========================================================================================
    # NATS side: publishing, confirmed
    # =========================================================================================

    async def _pump(self) -> None:
        """The one task that hands publications to NATS, oldest first, and sends the PINGs
        that confirm them."""
        outbox, unconfirmed = self._outbox, self._unconfirmed
        while True:
            self._outbox_scheduled = False  # from here on, a new publication wakes us
            self._wake.clear()
            if not self._link_up.is_set():
                if self._stopping:
                    return
                await self._wake.wait()
                continue
            nc = self._nc
            if nc is None or not nc.is_connected:
                # nats-py found the connection broken and has not told us yet
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._link_lost.wait(), _LINK_SETTLE)
                continue
            if unconfirmed and self._sent_on != self._generation:
                # sent on a connection that broke: the server may never have had them
                self.resent += len(unconfirmed)
                outbox.extendleft(reversed(unconfirmed))
                unconfirmed.clear()
            self._sent_on = self._generation
            if outbox:
                await self._hand_over(nc)
            if self._fencing is None and len(unconfirmed) > 0:
                try:
                    await written(nc, self.confirm_timeout)
                except FenceFailed:
                    continue  # LinkDown: the link-lost path takes it from here
                self._send_fence(nc)
            if outbox and nc.is_connected:
                await asyncio.sleep(0)  # let the reactor and nats-py's flusher run
            elif self._stopping and not unconfirmed:
                return
            else:
                await self._wake.wait()

    async def _hand_over(self, nc: Any) -> None:
        """Give nats-py up to ``publish_batch`` publications from the outbox."""
        outbox, unconfirmed = self._outbox, self._unconfirmed
        max_payload = nc.max_payload
        for _ in range(self.publish_batch):
            if not outbox or not nc.is_connected:
                return
            subject, payload = outbox[0]
            if len(payload) > max_payload:
                outbox.popleft()
                self._oversize(subject, len(payload), max_payload)
                continue
            try:
                await nc.publish(subject, payload)
            except Exception as e:
                # the connection went away meanwhile (it goes on the next one), or worse
                if nc.is_connected:
                    self._publish_failed(e)
                    await asyncio.sleep(_LINK_SETTLE)
                return
            unconfirmed.append(outbox.popleft())

    def _send_fence(self, nc: Any) -> None:
        """PING behind every unconfirmed publication (all of them are written by now)."""
        self._fenced = len(self._unconfirmed)
        fencing = asyncio.ensure_future(round_trip(nc, self.confirm_timeout))
        self._fencing = fencing
        sent_on = self._sent_on
        fencing.add_done_callback(lambda f: self._fence_done(f, nc, sent_on))

    def _fence_done(self, fencing: asyncio.Future[None], nc: Any, sent_on: int) -> None:
        if self._fencing is fencing:
            self._fencing = None
        self._wake.set()  # a PING for what was published meanwhile, or the end of stop()
        if fencing.cancelled():
            return
        error = fencing.exception()
        if error is None:
            if sent_on == self._sent_on:  # not yet queued again for a new connection
                for _ in range(self._fenced):
                    self._unconfirmed.popleft()
                self.published += self._fenced
        elif isinstance(error, NoAnswer):
            self._say(
                "warn",
                "NATS did not answer within {timeout}s ({count} publications unconfirmed); "
                "reconnecting to send them again",
                count=len(self._unconfirmed),
                timeout=self.confirm_timeout,
            )
            self._background(nc.force_reconnect())
        elif not isinstance(error, FenceFailed):
            self._say("warn", "confirming publications with NATS failed: {error}", error=error)

    def _background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    def _publish_failed(self, error: Exception) -> None:
        self._publish_failures += 1
        if self._publish_failures & (self._publish_failures - 1) == 0:
            self._say(
                "warn",
                "NATS publish failed ({error}); trying again ({count} failures so far)",
                error=str(error) or type(error).__name__,
                count=self._publish_failures,
            )

    def _oversize(self, subject: str, size: int, limit: int) -> None:
        self.oversize += 1
        if self.oversize & (self.oversize - 1) == 0:
            self._say(
                "warn",
                "dropped a publication to {subject}: {size} bytes, NATS takes at most {limit} "
                "({count} so far)",
                subject=subject,
                size=size,
                limit=limit,
                count=self.oversize,
            )

    # =========================================================================================
    # NATS side: receiving
    # =========================================================================================

    async def _from_nats(self, msg: Any) -> None:
        flowing = self._flowing
        if not flowing.is_set():
            await flowing.wait()  # NATS holds what arrives meanwhile (up to its own limits)
        self._inbox.append(msg.data)
        if not self._inbox_scheduled:
            self._inbox_scheduled = True
            self.runner.to_reactor(self._deliver)
