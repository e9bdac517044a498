"""The NATS bridge: chosen message types cross between a bus and a NATS cluster.

One subject per message type (``prefix + msg_type``), the Grav message JSON as payload, so
that meshes which outgrow one mesh scale through NATS and any NATS client can read the
traffic. The bridge is a pod: it publishes every bridged message its bus carries that did
not come from NATS, and sends into the bus every bridged message NATS delivers.

No echo, three ways: the pod never receives what it sent into the bus (self-filter); the
NATS connection is made with ``no_echo`` so the server never returns our own publications;
and a bounded memory of uuids drops any message seen before in either direction (a second
bridge in the same mesh republishing it, say).

nats-py is asyncio code; ``txloom.bus.bridge.loop`` runs it on the reactor's own loop under
Twisted's asyncio reactor, or in a thread of its own under any other reactor.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterable
from typing import Any

import nats
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from txloom.bus.bus import Bus
from txloom.bus.message import Message
from txloom.bus.seen import DEFAULT_SEEN_CAPACITY, SeenSet
from txloom.interfaces import IBridgeTransport
from txloom.wire.grav import NotAMessage

from .loop import AsyncioRunner, runner_for
from .subjects import valid_subject

__all__ = ["OUTBOX_LIMIT", "RECONNECT_WAIT", "NatsBridge"]

#: Publications waiting for the NATS connection (while it connects or reconnects) before
#: new ones are dropped and counted.
OUTBOX_LIMIT = 65_536
#: Seconds between connection attempts while NATS is unreachable.
RECONNECT_WAIT = 1.0
#: Seconds ``stop`` lets the connection drain.
DRAIN_TIMEOUT = 5.0


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
    ) -> None:
        self.bus = bus
        self.url = url
        self.message_types = tuple(dict.fromkeys(message_types))
        if not self.message_types:
            raise ValueError("a bridge needs at least one message type")
        for msg_type in self.message_types:
            if not valid_subject(subject_prefix + msg_type):
                raise ValueError(f"{subject_prefix + msg_type!r} is not a valid NATS subject")
        self.subject_prefix = subject_prefix
        self.reactor = reactor if reactor is not None else bus.reactor
        self.runner = (
            runner if isinstance(runner, AsyncioRunner) else runner_for(self.reactor, runner)
        )
        self.outbox_limit = outbox_limit
        self.reconnect_wait = reconnect_wait
        self.published = 0
        self.received = 0
        self.duplicates = 0
        self.dropped = 0
        self.rejected = 0
        self._seen = SeenSet(seen_capacity)
        self._nc: Any = None
        self._connected = False
        self._stopping = False
        self._pod = bus.connect()
        # reactor -> loop: publications, handed over in batches
        self._outbox: deque[tuple[str, bytes]] = deque()
        self._outbox_scheduled = False
        self._publishing = False
        # loop -> reactor: deliveries, handed over in batches
        self._inbox: deque[bytes] = deque()
        self._inbox_scheduled = False
        # loop side: cleared while the bus is paused
        self._flowing: asyncio.Event | None = None
        self._started: Deferred[None] | None = None
        self._tasks: set[asyncio.Future[None]] = set()

    def subject(self, msg_type: str) -> str:
        return self.subject_prefix + msg_type

    # =========================================================================================
    # Lifetime
    # =========================================================================================

    def start(self) -> Deferred[None]:
        """Begin bridging; fires once connected and subscribed (it keeps retrying until then).

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
        """Stop taking messages, drain the NATS connection, release the loop."""
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
            "received": self.received,
            "duplicates": self.duplicates,
            "dropped": self.dropped,
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
        if len(self._outbox) >= self.outbox_limit:
            self.dropped += 1
            if self.dropped & (self.dropped - 1) == 0:
                self.log.warn(
                    "NATS is not keeping up: {dropped} publications dropped so far",
                    dropped=self.dropped,
                )
            return
        self._outbox.append((self.subject(msg.msg_type), msg.to_json()))
        if not self._outbox_scheduled and self._connected:
            self._outbox_scheduled = True
            self.runner.call_in_loop(self._schedule_publish)

    def _deliver(self) -> None:
        """Messages NATS delivered, into the bus (one hand-over per batch)."""
        self._inbox_scheduled = False
        inbox = self._inbox
        post = self.bus._post
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
    # NATS side (the asyncio loop)
    # =========================================================================================

    def _set_flowing(self, flowing: bool) -> None:
        if self._flowing is not None:
            (self._flowing.set if flowing else self._flowing.clear)()

    async def _connect(self) -> None:
        self._flowing = asyncio.Event()
        if not self.bus.paused:
            self._flowing.set()
        attempts = 0
        while not self._stopping:
            try:
                self._nc = await nats.connect(
                    servers=[self.url],
                    name="txloom-bus-bridge",
                    no_echo=True,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=max(1, round(self.reconnect_wait)),
                    connect_timeout=2,
                    error_cb=self._nats_error,
                    disconnected_cb=self._nats_disconnected,
                    reconnected_cb=self._nats_reconnected,
                )
                break
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
                await asyncio.sleep(self.reconnect_wait)
        if self._stopping or self._nc is None:
            return
        for msg_type in self.message_types:
            await self._nc.subscribe(self.subject(msg_type), cb=self._from_nats)
        await self._nc.flush()
        self._connected = True
        self._say("info", "NATS bridge connected to {url}", url=self.url)
        self.runner.to_reactor(self._kick_outbox)

    def _kick_outbox(self) -> None:
        """On the reactor: publications queued while connecting may go now."""
        if self._outbox and not self._outbox_scheduled:
            self._outbox_scheduled = True
            self.runner.call_in_loop(self._schedule_publish)

    def _schedule_publish(self) -> None:
        task = asyncio.ensure_future(self._publish())
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _publish(self) -> None:
        self._outbox_scheduled = False
        if self._publishing:  # the running task drains what was added meanwhile
            return
        self._publishing = True
        outbox = self._outbox
        try:
            while outbox and not self._stopping:
                subject, payload = outbox[0]
                try:
                    await self._nc.publish(subject, payload)
                except Exception as e:
                    # kept at the head of the outbox: tried again once NATS is back
                    self._say("warn", "NATS publish failed ({error}); retrying", error=str(e))
                    await asyncio.sleep(self.reconnect_wait)
                    continue
                outbox.popleft()
                self.published += 1
        finally:
            self._publishing = False

    async def _from_nats(self, msg: Any) -> None:
        flowing = self._flowing
        if flowing is not None and not flowing.is_set():
            await flowing.wait()  # NATS holds what arrives meanwhile (up to its own limits)
        self._inbox.append(msg.data)
        if not self._inbox_scheduled:
            self._inbox_scheduled = True
            self.runner.to_reactor(self._deliver)

    async def _nats_error(self, e: Exception) -> None:
        self._say("warn", "NATS error: {error}", error=str(e))

    async def _nats_disconnected(self) -> None:
        if not self._stopping:
            self.runner.to_reactor("warn", "NATS bridge disconnected from {url}", url=self.url)

    async def _nats_reconnected(self) -> None:
        self._say("info", "NATS bridge reconnected to {url}", url=self.url)

    async def _close(self) -> None:
        nc, self._nc = self._nc, None
        self._connected = False
        if nc is None:
            return
        with contextlib.suppress(Exception):
            if self._outbox:
                await self._publish_remaining(nc)
            await asyncio.wait_for(nc.drain(), DRAIN_TIMEOUT)
        if not nc.is_closed:
            await nc.close()

    async def _publish_remaining(self, nc: Any) -> None:
        while self._outbox:
            subject, payload = self._outbox.popleft()
            await nc.publish(subject, payload)
            self.published += 1
