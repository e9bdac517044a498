"""Push subscriptions: who hears of which committed fact, and what happens to slow readers.

Every committed fact is encoded as an event once and offered to each matching subscriber.
Offering never blocks and never waits: a subscriber whose transport is keeping up gets the
event written at once; one whose transport has paused it (Twisted's producer/consumer
signal that the socket buffer is full) gets it queued, up to a bound in events and bytes.
Past the bound the subscriber is sent ``{"event":"overflow","dropped":N}`` and, by
configuration, disconnected or skipped ahead to the live stream. Writers and other
subscribers never wait for it.

A subscription with ``since`` first catches up from the index (stored facts read and
framed a batch at a time on a reader thread, only as fast as its transport takes them),
then switches to live events at the exact sequence number where the catch-up ended: no
gap, no duplicate.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from txloom.interfaces import IReplayPlan, IStorageBackend
from txloom.store.config import SlowSubscriberPolicy
from txloom.wire.crcjson import encode_frame

__all__ = ["Subscriber", "SubscriberQueue", "SubscriptionHub", "event_frame", "overflow_frame"]

#: Bytes of stored facts a catching-up subscriber reads per step.
CATCHUP_BATCH_BYTES = 256 * 1024

#: Index rows a catching-up subscriber with a store filter examines per step, so that a
#: filter matching nothing cannot hold the reactor for the whole index.
CATCHUP_SCAN_ROWS = 65_536


def event_frame(seq: int, body: bytes) -> bytes:
    """``{"event":"fact_written","fact":F,"seq":N}`` framed, built around the stored bytes."""
    return encode_frame(b'{"event":"fact_written","fact":%b,"seq":%d}' % (body, seq))


def overflow_frame(dropped: int) -> bytes:
    return encode_frame(b'{"event":"overflow","dropped":%d}' % dropped)


def catch_up_events(plan: IReplayPlan) -> tuple[bytes, int, bool]:
    """The plan's facts as push events (on a reader thread): frames, ``next``, ``more``."""
    try:
        frames = [
            event_frame(seq, body) for batch in plan.numbered_batches() for seq, body in batch
        ]
        return b"".join(frames), plan.next, plan.more
    finally:
        plan.close()


@implementer(IPushProducer)
class SubscriberQueue:
    """The bounded outgoing queue of one push connection.

    Registered (through the connection) as its transport's push producer: the transport
    says pause when its buffer is full and resume when it drained.
    """

    log = Logger()

    def __init__(
        self,
        transport: Any,
        *,
        max_events: int,
        max_bytes: int,
        policy: str,
        clock: Any,
        close_timeout: float,
        close: Callable[[], None],
        on_drained: Callable[[], None] | None = None,
    ) -> None:
        self.transport = transport
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.policy = policy
        self.clock = clock
        self.close_timeout = close_timeout
        self.close = close
        self.on_drained = on_drained
        self.paused = False
        self.closed = False
        self.events: deque[bytes] = deque()
        self.queued_bytes = 0
        #: Events dropped since the last overflow event was sent (skip policy).
        self.dropped = 0
        #: Events dropped over the subscription's life.
        self.dropped_total = 0
        self.overflows = 0

    def offer(self, frame: bytes) -> None:
        """Send or queue one event; never blocks."""
        if self.closed:
            return
        if not self.paused and not self.events and not self.dropped:
            self.transport.write(frame)
            return
        if len(self.events) >= self.max_events or self.queued_bytes + len(frame) > self.max_bytes:
            self._overflow(1)
            return
        self.events.append(frame)
        self.queued_bytes += len(frame)

    def _overflow(self, extra: int) -> None:
        lost = len(self.events) + extra
        self.events.clear()
        self.queued_bytes = 0
        self.dropped_total += lost
        self.overflows += 1
        if self.policy == SlowSubscriberPolicy.SKIP:
            self.dropped += lost
            return
        self.closed = True
        self.transport.write(overflow_frame(lost))
        self.close()
        # a reader that never reads would keep the connection (and its buffer) forever
        self.clock.callLater(self.close_timeout, self._abort)

    def _abort(self) -> None:
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None and getattr(self.transport, "connected", True):
            abort()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self.closed:
            return
        write = self.transport.write
        if self.dropped:
            write(overflow_frame(self.dropped))
            self.dropped = 0
        events = self.events
        while events and not self.paused:
            frame = events.popleft()
            self.queued_bytes -= len(frame)
            write(frame)
        if not events and not self.paused and self.on_drained is not None:
            self.on_drained()

    def stopProducing(self) -> None:
        self.closed = True
        self.events.clear()
        self.queued_bytes = 0


class Subscriber:
    """One push connection's interest: stores, position, and catch-up state."""

    log = Logger()

    def __init__(
        self,
        hub: SubscriptionHub,
        queue: SubscriberQueue,
        stores: Iterable[str] | None,
        since: int | None,
    ) -> None:
        self.hub = hub
        self.queue = queue
        self.stores = frozenset(stores) if stores else None
        #: Highest sequence number delivered or passed over.
        self.cursor = hub.backend.last_seq if since is None else since
        self.catching_up = since is not None
        self._step_scheduled = False
        self._reading = False
        queue.on_drained = self._drained

    def deliver(self, seq: int, frame: bytes) -> None:
        """A live event; ignored while catching up (the catch-up will read it)."""
        if self.catching_up or seq <= self.cursor:
            return
        self.cursor = seq
        self.queue.offer(frame)

    def start(self) -> None:
        if self.catching_up:
            self._schedule_step()

    def _drained(self) -> None:
        if self.catching_up:
            self._schedule_step()

    def _schedule_step(self) -> None:
        if not self._step_scheduled:
            self._step_scheduled = True
            self.hub.clock.callLater(0, self._step)

    def _step(self) -> None:
        """Read the next batch of stored facts; come back when the transport wants more."""
        self._step_scheduled = False
        queue = self.queue
        if queue.closed or not self.catching_up or queue.paused or self._reading:
            return
        self._reading = True
        self.hub.backend.page(
            self.cursor,
            self.stores,
            limit=None,
            budget=CATCHUP_BATCH_BYTES,
            scan_limit=CATCHUP_SCAN_ROWS,
            then=catch_up_events,
        ).addCallbacks(self._read, self._read_failed)

    def _read(self, result: tuple[bytes, int, bool]) -> None:
        self._reading = False
        frames, next_seq, more = result
        queue = self.queue
        if queue.closed or not self.catching_up:
            return
        if frames:
            queue.transport.write(frames)
        self.cursor = max(self.cursor, next_seq)
        if not more and self.hub.backend.last_seq <= self.cursor:
            # Nothing stored is left above the cursor, and this runs on the reactor
            # thread, where commits are published: from here on, live events continue
            # the stream exactly where the catch-up ended.
            self.catching_up = False
            return
        if not queue.paused:
            self._schedule_step()

    def _read_failed(self, failure: Any) -> None:
        self._reading = False
        self.log.failure("catch-up read failed; closing the subscription", failure)
        if not self.queue.closed:
            self.queue.closed = True
            self.queue.close()


class SubscriptionHub:
    """Fans committed facts out to subscribers, one encoding per fact."""

    log = Logger()

    def __init__(self, backend: IStorageBackend, clock: Any) -> None:
        self.backend = backend
        self.clock = clock
        self._by_store: dict[str, set[Subscriber]] = {}
        self._all: set[Subscriber] = set()
        self._subscribers: set[Subscriber] = set()
        self.events_pushed = 0
        #: Overflows of subscribers that have gone (live ones count their own).
        self.past_overflows = 0
        backend.add_listener(self._committed)

    def __len__(self) -> int:
        return len(self._subscribers)

    @property
    def overflows(self) -> int:
        """Times a subscriber fell behind its queue bound, over the server's life."""
        return self.past_overflows + sum(s.queue.overflows for s in self._subscribers)

    def add(self, subscriber: Subscriber) -> None:
        self._subscribers.add(subscriber)
        if subscriber.stores is None:
            self._all.add(subscriber)
        else:
            for store in subscriber.stores:
                self._by_store.setdefault(store, set()).add(subscriber)

    def remove(self, subscriber: Subscriber) -> None:
        if subscriber in self._subscribers:
            self.past_overflows += subscriber.queue.overflows
        self._subscribers.discard(subscriber)
        self._all.discard(subscriber)
        if subscriber.stores is not None:
            for store in subscriber.stores:
                subs = self._by_store.get(store)
                if subs is not None:
                    subs.discard(subscriber)
                    if not subs:
                        del self._by_store[store]

    def close(self) -> None:
        self.backend.remove_listener(self._committed)

    def _committed(self, batch: Sequence[Any]) -> None:
        everyone = self._all
        by_store = self._by_store
        if not everyone and not by_store:
            return
        for fact in batch:
            named = by_store.get(fact.store)
            if not everyone and not named:
                continue
            frame = event_frame(fact.seq, fact.body)
            for subscriber in tuple(everyone):
                subscriber.deliver(fact.seq, frame)
                self.events_pushed += 1
            if named:
                for subscriber in tuple(named):
                    subscriber.deliver(fact.seq, frame)
                    self.events_pushed += 1
