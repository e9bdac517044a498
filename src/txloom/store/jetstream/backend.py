"""``--backend jetstream``: the store's facts in a NATS JetStream stream.

A write is published to ``<prefix>.facts.<store>`` and answered once JetStream has
acknowledged it (stored on a quorum of the stream's replicas, with JetStream's own sync
policy) *and* this server's mirror has every fact numbered up to it, so that listeners
(push subscriptions) hear facts in number order with no gap, whichever server wrote them.
The fact's number is the stream's sequence number: one stream holds every store (a
subject per store), because the store's numbers are one sequence across stores (paged
replay and ``subscribe since=`` cursors cross stores); one stream per store would give
each store its own 1, 2, 3...

Reads never go to NATS: a ``FactMirror`` fed by an ordered consumer from the stream's
first message answers replays, pages and catch-ups. Several servers may front one
stream; each mirrors all of it. A publication that gets no acknowledgement (a node died,
a leader is being elected) is tried again with the same message id, so JetStream stores
it once.

Snapshots: new facts of a snapshot first take numbers in the facts stream (messages with
a ``Txloom-Snapshot`` header, which replay does not show as log facts), then the snapshot
(every fact with its number) is written to ``<prefix>_snapshots`` and committed; every
server installs it from there. Compaction deletes the log messages the snapshot hides
(never the stream's last message, whose number a starting server waits for).
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from txloom.aioloop import AsyncioRunner, runner_for
from txloom.interfaces import IStorageBackend
from txloom.store.errors import StorageFailure
from txloom.store.fact import FactMeta, InvalidFact, peek_fields
from txloom.store.jetstream.link import Delivered, JetStreamLink, LinkSettings
from txloom.store.jetstream.mirror import FactMirror, MirrorPlan, Stored
from txloom.store.threads import WorkerThreads

__all__ = ["PUBLISH_BATCH", "Committed", "JetStreamBackend"]

#: Publications handed to the loop in one go.
PUBLISH_BATCH = 4096
#: The store name whose subject carries a snapshot's reserved numbers (the header, not the
#: subject, is what marks them, so a store of this name is no problem).
RESERVED_STORE = "~reserved"


@dataclass(frozen=True, slots=True)
class Committed:
    """What listeners (push subscriptions) hear of a fact."""

    seq: int
    store: str
    body: bytes


@dataclass(slots=True)
class _Write:
    token: int
    body: bytes
    meta: FactMeta | None  # None: a snapshot's reservation
    deferred: defer.Deferred


@implementer(IStorageBackend)
class JetStreamBackend:
    """Facts in JetStream, mirrored in memory (see the module docstring)."""

    log = Logger()
    name = "jetstream"
    durable = True

    def __init__(
        self,
        reactor: Any,
        settings: LinkSettings,
        *,
        runner: AsyncioRunner | str = "auto",
        reader_threads: int = 2,
        max_frame_size: int | None = None,
    ) -> None:
        self.reactor = reactor
        self.settings = settings
        self.runner = runner if isinstance(runner, AsyncioRunner) else runner_for(reactor, runner)
        self.link = JetStreamLink(
            self.runner,
            settings,
            on_acks=self._acked,
            on_facts=self._delivered,
            on_snapshot=self._snapshot_arrived,
            on_state=self._link_state,
        )
        self.mirror = FactMirror()
        self.max_frame_size = max_frame_size
        self._readers = WorkerThreads(reactor, "txloom-store-jetstream-reader", reader_threads)
        self._listeners: list[Callable[[Sequence[Committed]], None]] = []
        self._queue: deque[_Write] = deque()
        self._scheduled = False
        self._inflight: dict[int, _Write] = {}
        self._tokens = 0
        self._instance = uuid.uuid4().hex[:12]
        # acknowledged, numbered above the mirror, waiting for the numbers below them
        self._early: dict[int, _Write] = {}
        # writers answered once the mirror reaches their number
        self._answers: dict[int, list[defer.Deferred]] = {}
        self._snapshot_waiting: tuple[str, list[Stored]] | None = None
        self._exclusive: defer.DeferredLock = defer.DeferredLock()
        self._paused = False
        self._idle: list[defer.Deferred] = []
        self._quiet_waiters: list[defer.Deferred] = []
        self._loaded: defer.Deferred | None = None
        self._load_target = 0
        self._opened = False
        self._closed = False
        self.failures = 0
        self.error: str | None = None

    # -- IStorageBackend: attributes -----------------------------------------------------

    @property
    def location(self) -> str:
        s = self.settings
        return f"JetStream stream {s.facts_stream} (R{s.replicas}) at {','.join(s.servers)}"

    @property
    def fsync(self) -> str:
        return f"jetstream:R{self.settings.replicas}"

    @property
    def last_seq(self) -> int:
        return self.mirror.last_seq

    @property
    def fact_count(self) -> int:
        return len(self.mirror)

    # -- lifetime -------------------------------------------------------------------------

    def prepare(self) -> None:
        """Nothing is exclusive: several servers may front one stream."""

    def open(self) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._open())

    async def _open(self) -> str:
        self.runner.start()
        self._readers.start()
        try:
            last, _commit = await self.runner.run(self.link.connect())
        except Exception as e:
            raise StorageFailure(f"cannot reach JetStream at {self.location}: {e!r}") from e
        self._load_target = last
        if self.mirror.last_seq < last:
            self._loaded = defer.Deferred()
            await self._loaded
        self._opened = True
        self._install_waiting_snapshot()
        return (
            f"mirrored {len(self.mirror)} facts (last seq {self.mirror.last_seq}) from "
            f"{self.location}"
        )

    def close(self) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._close())

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.when_idle()
        try:
            await self.runner.run(self.link.close())
        except Exception as e:
            self.log.warn("closing the NATS connection failed: {error}", error=e)
        self.runner.stop()
        self._readers.stop()

    def when_idle(self) -> defer.Deferred:
        """Fires once nothing is queued or waiting for JetStream."""
        return self._wait(self._idle, lambda: not self._queue and self._settled())

    def _settled(self) -> bool:
        return not (self._inflight or self._early or self._answers)

    def _wait(self, waiters: list[defer.Deferred], done: Callable[[], bool]) -> defer.Deferred:
        if done():
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        waiters.append(d)
        return d

    def _check_idle(self) -> None:
        if not self._settled():
            return
        if self._quiet_waiters:
            waiting, self._quiet_waiters = self._quiet_waiters, []
            for d in waiting:
                d.callback(None)
        if self._idle and not self._queue:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def add_listener(self, listener: Callable[[Sequence[Committed]], None]) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[Sequence[Committed]], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def storage_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "storage": "ok" if self.error is None else "failed",
            "storage_failures": self.failures,
        }
        if self.error is not None:
            status["storage_error"] = self.error
        return status

    def _link_state(self, text: str | None, down: bool) -> None:
        """NATS news: ``stats`` shows the storage failed while the link is down (writes
        wait, and are tried again, meanwhile)."""
        if text is None:
            if self.error is not None:
                self.log.info("NATS connection is back")
            self.error = None
            return
        self.log.warn("{text}", text=text)
        if down:
            self.error = text

    # -- writing --------------------------------------------------------------------------

    def append(self, body: bytes, meta: FactMeta) -> defer.Deferred:
        """Publish one fact; fires with its number once acknowledged and mirrored."""
        if self._closed:
            return defer.fail(StorageFailure("the store is shutting down"))
        if len(body) > self.link.max_payload - 512:
            return defer.fail(
                StorageFailure(
                    f"fact of {len(body)} bytes exceeds the NATS server's payload limit "
                    f"({self.link.max_payload} bytes)"
                )
            )
        return self._enqueue(body, meta)

    def _enqueue(self, body: bytes, meta: FactMeta) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._tokens += 1
        self._queue.append(_Write(self._tokens, body, meta, d))
        self._schedule()
        return d

    def _schedule(self) -> None:
        if not self._scheduled and not self._paused:
            self._scheduled = True
            # one reactor turn lets every request read in this turn join the batch
            self.reactor.callLater(0, self._pump)

    def _pump(self) -> None:
        self._scheduled = False
        if self._paused or not self._queue:
            self._check_idle()
            return
        queue = self._queue
        batch = [queue.popleft() for _ in range(min(len(queue), PUBLISH_BATCH))]
        self._publish(batch)
        if queue:
            self._schedule()

    def _publish(self, writes: list[_Write], reserving: str | None = None) -> None:
        """Hand ``writes`` to the loop in one call; they are numbered in this order."""
        s = self.settings
        batch = []
        for write in writes:
            self._inflight[write.token] = write
            store = write.meta.store if write.meta is not None else RESERVED_STORE
            msg_id = f"{self._instance}-{write.token}"
            batch.append((write.token, s.subject(store), write.body, msg_id, reserving))
        self.runner.call_in_loop(self.link.publish, batch)

    def _reserve(self, name: str, bodies: list[bytes]) -> list[defer.Deferred]:
        """Numbers for a snapshot's new facts, taken ahead of any write queued since."""
        writes = []
        for body in bodies:
            self._tokens += 1
            writes.append(_Write(self._tokens, body, None, defer.Deferred()))
        if writes:
            self._publish(writes, reserving=name)
        return [w.deferred for w in writes]

    def _acked(self, acks: list[tuple[int, Any, bool]]) -> None:
        for token, result, _duplicate in acks:
            write = self._inflight.pop(token, None)
            if write is None:
                continue
            if isinstance(result, BaseException):
                self.failures += 1
                self.error = f"publish failed: {result!r}"
                self.log.error("JetStream publish failed: {error!r}", error=result)
                write.deferred.errback(StorageFailure(f"JetStream: {result!r}"))
                continue
            self.error = None
            seq = result
            if seq <= self.mirror.last_seq:
                write.deferred.callback(seq)  # a duplicate, or the feed was faster
                continue
            self._early[seq] = write
            self._answers.setdefault(seq, []).append(write.deferred)
        self._advance([])
        self._check_idle()

    def _delivered(self, facts: list[Delivered]) -> None:
        committed: list[Committed] = []
        mirror = self.mirror
        for seq, reserved, body in facts:
            if seq <= mirror.last_seq:
                continue
            # own facts numbered below this one can go first: the feed is in order, so
            # anything not yet seen below ``seq`` no longer exists
            while self._early:
                low = min(self._early)
                if low >= seq:
                    break
                self._apply_own(low, committed)
            self._early.pop(seq, None)
            if reserved:
                mirror.skip(seq)
                continue
            try:
                fact_id, store, time = peek_fields(body)
            except InvalidFact as e:
                self.log.warn("skipping message {seq}: {error}", seq=seq, error=e)
                mirror.skip(seq)
                continue
            if mirror.add(Stored(seq, fact_id, store, time, body)):
                committed.append(Committed(seq, store, body))
        self._advance(committed)
        if self._loaded is not None and mirror.last_seq >= self._load_target:
            loaded, self._loaded = self._loaded, None
            loaded.callback(None)

    def _apply_own(self, seq: int, committed: list[Committed]) -> None:
        write = self._early.pop(seq)
        if write.meta is None:
            self.mirror.skip(seq)
            return
        meta = write.meta
        if self.mirror.add(Stored(seq, meta.id, meta.store, meta.transaction_time, write.body)):
            committed.append(Committed(seq, meta.store, write.body))

    def _advance(self, committed: list[Committed]) -> None:
        """Apply own facts that continue the mirror, tell listeners, answer writers."""
        mirror = self.mirror
        while mirror.last_seq + 1 in self._early:
            self._apply_own(mirror.last_seq + 1, committed)
        if committed:
            for listener in self._listeners:
                try:
                    listener(committed)
                except Exception:
                    self.log.failure("push listener failed")
        if self._answers:
            last = mirror.last_seq
            for seq in [s for s in self._answers if s <= last]:
                for d in self._answers.pop(seq):
                    d.callback(seq)
        if self._opened:
            self._install_waiting_snapshot()
        self._check_idle()

    # -- snapshots and compaction -------------------------------------------------------

    def write_snapshot(self, facts: Iterable[tuple[bytes, Any]]) -> defer.Deferred:
        return self._exclusive.run(lambda: defer.Deferred.fromCoroutine(self._snapshot(facts)))

    async def _quiet(self) -> None:
        """Hold new writes back and wait until every earlier one is answered."""
        self._paused = True
        await self._wait(self._quiet_waiters, self._settled)

    def _resume(self) -> None:
        self._paused = False
        self._schedule()

    async def _snapshot(self, facts: Iterable[tuple[bytes, Any]]) -> int:
        if self._closed:
            raise StorageFailure("the store is shutting down")
        await self._quiet()
        try:
            numbered = self.mirror.number_snapshot(facts)
            name = uuid.uuid4().hex
            new = self._reserve(name, [body for seq, body, _m in numbered if seq is None])
            try:
                seqs = iter(await defer.gatherResults(new, consumeErrors=True))
            except defer.FirstError as e:
                raise e.subFailure.value from None
            stored = []
            for seq, body, meta in numbered:
                number = seq if seq is not None else next(seqs)
                stored.append(Stored(number, meta.id, meta.store, meta.transaction_time, body))
            entries = [(f.seq, f.body) for f in stored]
            try:
                await self.runner.run(self.link.write_snapshot(name, entries))
            except Exception as e:
                raise StorageFailure(f"JetStream: storing the snapshot failed: {e!r}") from e
            self.mirror.install_snapshot(name, stored)
            return len(stored)
        finally:
            self._resume()

    def _snapshot_arrived(self, name: str, entries: list[tuple[int, bytes]]) -> None:
        if name == self.mirror.snapshot_name:
            return  # this server's own, installed when it was written
        stored = []
        for seq, body in entries:
            try:
                fact_id, store, time = peek_fields(body)
            except InvalidFact:
                continue
            stored.append(Stored(seq, fact_id, store, time, body))
        self._snapshot_waiting = (name, stored)
        if self._opened:
            self._install_waiting_snapshot()

    def _install_waiting_snapshot(self) -> None:
        """Install a snapshot another server wrote once the mirror holds every number it
        names (its reservations came through the feed)."""
        waiting = self._snapshot_waiting
        if waiting is None:
            return
        name, stored = waiting
        if stored and max(f.seq for f in stored) > self.mirror.last_seq:
            return
        self._snapshot_waiting = None
        self.mirror.install_snapshot(name, stored)

    def compact(self) -> defer.Deferred:
        return self._exclusive.run(lambda: defer.Deferred.fromCoroutine(self._compact()))

    async def _compact(self) -> dict[str, Any]:
        await self._quiet()
        try:
            last = self.mirror.last_seq
            doomed = [seq for seq in self.mirror.hidden() if seq != last]
            try:
                before = await self.runner.run(self.link.sizes())
                after = before
                if doomed:
                    await self.runner.run(self.link.delete(doomed))
                    after = await self.runner.run(self.link.sizes())
            except Exception as e:
                raise StorageFailure(f"JetStream: compaction failed: {e!r}") from e
            self.mirror.forget(doomed)
            return {
                "through": last,
                "facts": len(self.mirror.log),
                "bytes_before": before,
                "bytes_after": after,
                "compacted": bool(doomed),
            }
        finally:
            self._resume()

    # -- reading --------------------------------------------------------------------------

    def read(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        return self._readers.run(fn, *args)

    def plan_replay(self) -> MirrorPlan:
        return self.mirror.plan_replay()

    def page(  # noqa: PLR0917 - IStorageBackend.page
        self,
        since: int,
        stores: Iterable[str] | None,
        limit: int | None,
        budget: int,
        scan_limit: int | None = None,
        then: Callable[[MirrorPlan], Any] | None = None,
    ) -> defer.Deferred:
        plan = self.mirror.plan_page(since, stores, limit, budget, scan_limit)
        if then is None:
            return defer.succeed(plan)
        return self.read(then, plan)
