"""The storage backend: ordered, group-committed writes over the WAL and snapshot files.

One class serves both backends: ``file`` gives it a real directory and a writer thread,
``memory`` gives it byte arrays and runs everything inline. Writes queue on the reactor
thread; whenever the writer is free, every write queued so far becomes one batch: the
batch gets consecutive sequence numbers, is written with one ``write`` and made durable
with one fsync (group commit), then the index learns the new facts, listeners (push
subscriptions) hear of them and only then are the writers answered. Snapshots and
compactions queue in the same line, so they see every write queued before them and none
after.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from txloom.interfaces import IStorageBackend
from txloom.store.config import FsyncPolicy
from txloom.store.directory import Directory, FileDirectory, MemoryDirectory
from txloom.store.fact import FactMeta, InvalidFact, peek_fact
from txloom.store.index import FactIndex
from txloom.store.loader import IndexBuilder, LoadedStore, load_store, scan_log
from txloom.store.replay import ReplayPlan
from txloom.store.snapshot import (
    LOG_KIND,
    SNAPSHOT_KIND,
    SNAPSHOT_NAME,
    log_name,
    read_entries,
    write_entries,
)
from txloom.store.volumes import VolumeTable
from txloom.store.wal import WriteAheadLog
from txloom.wire.crcjson import DEFAULT_MAX_FRAME_SIZE, encode_frame

__all__ = ["Committed", "StorageFailure", "StoreBackend", "file_backend", "memory_backend"]

#: Largest group commit, in bytes of frames: past this a batch is cut so that one huge
#: burst does not delay the answers of the writes at its front.
MAX_BATCH_BYTES = 8 * 1024 * 1024


class StorageFailure(Exception):
    """The disk refused a write or an fsync; the backend takes no more writes."""


@dataclass(frozen=True, slots=True)
class Committed:
    """A fact that just became durable: what push subscribers are sent."""

    seq: int
    store: str
    body: bytes


Listener = Callable[[Sequence[Committed]], None]


@dataclass(slots=True)
class _Write:
    body: bytes
    meta: FactMeta
    deferred: defer.Deferred


@dataclass(slots=True)
class _Exclusive:
    work: Callable[[], Any]
    install: Callable[[Any], Any]
    deferred: defer.Deferred


@implementer(IStorageBackend)
class StoreBackend:
    """Facts on a ``Directory``: see the module docstring."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        open_directory: Callable[[], Directory],
        *,
        name: str,
        fsync: FsyncPolicy | None = None,
        threaded: bool = True,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        self.reactor = reactor
        self.name = name
        self.fsync = fsync or FsyncPolicy()
        self.max_frame_size = max_frame_size
        self._open_directory = open_directory
        self._threaded = threaded
        self._pool: ThreadPool | None = None
        self.directory: Directory | None = None
        self.volumes = VolumeTable()
        self.wal: WriteAheadLog | None = None
        self.index = FactIndex()
        #: The number the next batch starts at (numbers are taken when a batch forms).
        self.next_seq = 1
        # The highest number whose fact is committed, indexed and published: what a new
        # subscriber starts after. Facts in a batch still being written have numbers
        # above it, and reach the subscriber when their batch completes.
        self._committed_seq = 0
        self.snapshot_vol: int | None = None
        self.snapshot_ids: frozenset[str] = frozenset()
        self.log_vol: int | None = None
        self.log_through = 0
        self.loaded: LoadedStore | None = None
        self._listeners: list[Listener] = []
        self._queue: deque[_Write | _Exclusive] = deque()
        self._busy = False
        self._scheduled = False
        self._failed: Failure | None = None
        self._closed = False
        self._dirty = False
        self._syncer: task.LoopingCall | None = None
        self._idle: list[defer.Deferred] = []

    # -- IStorageBackend: lifetime ------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return self._committed_seq

    @property
    def fact_count(self) -> int:
        return len(self.index)

    @property
    def durable(self) -> bool:
        return bool(self.directory is not None and self.directory.durable)

    def prepare(self) -> None:
        """Open (and lock) the data directory now, so that a locked one fails at once."""
        if self.directory is None:
            self.directory = self._open_directory()

    def open(self) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._open())

    async def _open(self) -> LoadedStore:
        self.prepare()
        assert self.directory is not None
        if self._threaded:
            self._pool = ThreadPool(1, 1, name=f"txloom-store-{self.name}-writer")
            # A daemon thread: a process that ends without close() must not hang on it
            # (nothing is lost: a write is answered only after its thread job finished).
            self._pool.threadFactory = _daemon_thread
            self._pool.start()
        self.wal = WriteAheadLog(self.directory, self.volumes, self.max_frame_size)
        loaded = await self._run(
            load_store, self.directory, self.volumes, self.wal, self.max_frame_size
        )
        self.loaded = loaded
        self.index = loaded.index
        self.next_seq = loaded.next_seq
        self._committed_seq = loaded.next_seq - 1
        self.snapshot_vol = loaded.snapshot_vol
        self.snapshot_ids = loaded.snapshot_ids
        self.log_vol = loaded.log_vol
        self.log_through = loaded.log_through
        if self.fsync.mode == "interval":
            self._syncer = task.LoopingCall(self._interval_sync)
            self._syncer.clock = self.reactor
            self._syncer.start(self.fsync.interval_ms / 1000.0, now=False)
        return loaded

    def close(self) -> defer.Deferred:
        """Finish every queued write and task, fsync, release the files."""
        return defer.Deferred.fromCoroutine(self._close())

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._syncer is not None and self._syncer.running:
            self._syncer.stop()
        await self.when_idle()
        if self.wal is not None:
            try:
                await self._run(self.wal.close)
            except Exception:
                self.log.failure("final fsync of the WAL failed")
        self.volumes.close()
        if self.directory is not None:
            self.directory.close()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.stop()  # the writer is idle by now: joining it is immediate

    def when_idle(self) -> defer.Deferred:
        """Fires when nothing is queued or being written."""
        if not self._busy and not self._queue:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._idle.append(d)
        return d

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    # -- the write line -----------------------------------------------------------------

    def append(self, body: bytes, meta: FactMeta) -> defer.Deferred:
        """Queue one fact; fires with its sequence number once committed."""
        if self._failed is not None:
            return defer.fail(StorageFailure(f"storage failed earlier: {self._failed.value}"))
        if self._closed:
            return defer.fail(StorageFailure("the store is shutting down"))
        d: defer.Deferred = defer.Deferred()
        self._queue.append(_Write(body, meta, d))
        self._schedule()
        return d

    def _exclusive(self, work: Callable[[], Any], install: Callable[[Any], Any]) -> defer.Deferred:
        if self._failed is not None:
            return defer.fail(StorageFailure(f"storage failed earlier: {self._failed.value}"))
        d: defer.Deferred = defer.Deferred()
        self._queue.append(_Exclusive(work, install, d))
        self._schedule()
        return d

    def _schedule(self) -> None:
        if not self._busy and not self._scheduled:
            self._scheduled = True
            # One reactor turn lets every request read in this turn join the batch.
            self.reactor.callLater(0, self._pump)

    def _pump(self) -> None:
        self._scheduled = False
        if self._busy:
            return
        if not self._queue:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)
            return
        self._busy = True
        if isinstance(self._queue[0], _Exclusive):
            item = self._queue.popleft()
            assert isinstance(item, _Exclusive)
            self._run(item.work).addCallbacks(
                self._exclusive_done, self._exclusive_failed, (item,), None, (item,)
            )
            return
        batch: list[_Write] = []
        frames: list[bytes] = []
        size = 0
        queue = self._queue
        while queue and size < MAX_BATCH_BYTES and isinstance(queue[0], _Write):
            item = queue.popleft()
            frame = encode_frame(item.body)  # type: ignore[union-attr]
            batch.append(item)  # type: ignore[arg-type]
            frames.append(frame)
            size += len(frame)
        first_seq = self.next_seq
        self.next_seq += len(batch)
        sync = self.fsync.mode == "always"
        self._run(self._write_batch, b"".join(frames), len(batch), sync).addCallbacks(
            self._batch_done, self._batch_failed, (batch, first_seq), None, (batch,)
        )

    def _write_batch(self, frames: bytes, count: int, sync: bool) -> tuple[int, int]:
        assert self.wal is not None
        located = self.wal.append(frames, count)
        if sync:
            self.wal.sync()
        return located

    def _batch_done(self, located: tuple[int, int], batch: list[_Write], first_seq: int) -> None:
        vol, offset = located
        index = self.index
        hidden = self.snapshot_ids
        committed = []
        seq = first_seq
        for item in batch:
            body = item.body
            meta = item.meta
            offset += 4
            if meta.id is None or meta.id not in hidden:
                index.append(
                    seq, vol, offset, len(body), meta.transaction_time, index.store_id(meta.store)
                )
            committed.append(Committed(seq, meta.store, body))
            offset += len(body) + 4
            seq += 1
        self._committed_seq = seq - 1
        self._dirty = True
        self._busy = False
        for listener in self._listeners:
            try:
                listener(committed)
            except Exception:
                self.log.failure("push listener failed")
        seq = first_seq
        for item in batch:
            item.deferred.callback(seq)
            seq += 1
        self._pump()

    def _batch_failed(self, failure: Failure, batch: list[_Write]) -> None:
        self._fail(failure)
        error = StorageFailure(f"write failed: {failure.value}")
        for item in batch:
            item.deferred.errback(error)

    def _exclusive_done(self, result: Any, item: _Exclusive) -> None:
        try:
            value = item.install(result)
        except Exception:
            self._busy = False
            item.deferred.errback()
        else:
            self._busy = False
            item.deferred.callback(value)
        self._pump()

    def _exclusive_failed(self, failure: Failure, item: _Exclusive) -> None:
        self._fail(failure)
        item.deferred.errback(StorageFailure(f"{failure.value}"))

    def _fail(self, failure: Failure) -> None:
        self.log.failure(
            "storage failure: no more writes are accepted; restart to recover", failure
        )
        self._failed = failure
        self._busy = False
        queued, self._queue = self._queue, deque()
        error = StorageFailure(f"storage failed: {failure.value}")
        for item in queued:
            item.deferred.errback(error)
        self._pump()

    def _interval_sync(self) -> None:
        if self._dirty and self.wal is not None and self._failed is None:
            self._dirty = False
            self._run(self.wal.sync).addErrback(self._fail)

    def _run(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        if self._pool is None:
            return defer.maybeDeferred(fn, *args)
        return defer_to_pool(self.reactor, self._pool, fn, *args)

    # -- snapshots and compaction -------------------------------------------------------

    def write_snapshot(self, facts: Sequence[tuple[bytes, FactMeta]]) -> defer.Deferred:
        """Replace the snapshot with ``facts``; fires with the number of facts."""
        facts = list(facts)
        return self._exclusive(lambda: self._snapshot_work(facts), self._snapshot_install)

    def _snapshot_work(self, facts: list[tuple[bytes, FactMeta]]) -> dict[str, Any]:
        assert self.directory is not None and self.wal is not None
        wanted = {meta.id for _body, meta in facts if meta.id is not None}
        # A fact keeps the number it already has (from the old snapshot, else the log).
        known = self._snapshot_seqs(wanted) if self.snapshot_vol is not None else {}
        builder = IndexBuilder(frozenset(wanted), wanted)
        scan_log(self.volumes, self.log_vol, self.wal, builder, self.max_frame_size)
        for fact_id, seq in builder.found.items():
            known.setdefault(fact_id, seq)
        next_seq = max(self.next_seq, builder.max_seq + 1)
        numbered: list[tuple[int, bytes, FactMeta]] = []
        used: set[str] = set()
        for body, meta in facts:
            seq = known.get(meta.id) if meta.id is not None and meta.id not in used else None
            if seq is None:
                seq = next_seq
                next_seq += 1
            if meta.id is not None:
                used.add(meta.id)
            numbered.append((seq, body, meta))
        numbered.sort(key=lambda entry: entry[0])
        written = write_entries(
            self.directory,
            SNAPSHOT_NAME,
            SNAPSHOT_KIND,
            ((seq, body) for seq, body, _meta in numbered),
            count=len(numbered),
        )
        vol = self.volumes.add(written.volume)
        if next_seq != self.next_seq:
            self.wal.rotate(next_seq - 1)
        rows = [
            (seq, vol, offset, len(body), meta.transaction_time, meta.store)
            for (seq, body, meta), offset in zip(numbered, written.offsets, strict=True)
        ]
        index = builder.finish().merged(rows)
        index.time_order()  # sorted here, off the reactor thread
        return {
            "index": index,
            "vol": vol,
            "ids": frozenset(wanted),
            "next_seq": next_seq,
            "count": len(numbered),
        }

    def _snapshot_seqs(self, wanted: set[str]) -> dict[str, int]:
        """Numbers the current snapshot gave to the wanted ids."""
        assert self.snapshot_vol is not None
        numbers: dict[str, int] = {}
        volume = self.volumes[self.snapshot_vol]
        for seq, _offset, _size, body in read_entries(volume, SNAPSHOT_KIND, self.max_frame_size):
            try:
                fact_id = peek_fact(body).id
            except InvalidFact:
                continue
            if fact_id in wanted and fact_id not in numbers:
                numbers[fact_id] = seq
        return numbers

    def _snapshot_install(self, result: dict[str, Any]) -> int:
        old = self.snapshot_vol
        self.index = result["index"]
        self.snapshot_vol = result["vol"]
        self.snapshot_ids = result["ids"]
        self.next_seq = result["next_seq"]
        self._committed_seq = self.next_seq - 1
        if old is not None:
            self.volumes.retire(old)
        self.log.info(
            "snapshot written: {count} facts; {visible} facts visible",
            count=result["count"],
            visible=len(self.index),
        )
        return result["count"]

    def compact(self) -> defer.Deferred:
        """Fold the WAL into a compacted log file; fires with a small report."""
        return self._exclusive(self._compact_work, self._compact_install)

    def _compact_work(self) -> dict[str, Any]:
        assert self.directory is not None and self.wal is not None
        started = time.monotonic()
        through = self.next_seq - 1
        before = self.wal.size
        if self.log_vol is not None:
            before += self.volumes[self.log_vol].size
        self.wal.rotate(through)
        index = self.index
        snapshot_vol = self.snapshot_vol
        rows = [r for r in range(len(index)) if index.vols[r] != snapshot_vol]
        plan = ReplayPlan(index, rows, self.volumes.pin(), next_seq=through)
        try:
            seqs = index.seqs
            bodies = (body for batch in plan.batches() for body in batch)
            written = write_entries(
                self.directory,
                log_name(through),
                LOG_KIND,
                ((seqs[r], body) for r, body in zip(rows, bodies, strict=True)),
                count=len(rows),
                through=through,
            )
        finally:
            plan.close()
        vol = self.volumes.add(written.volume)
        old_log = self.log_vol
        if old_log is not None:
            old_name = self.volumes[old_log].name
            self.volumes.retire(old_log)
            if old_name != written.volume.name:
                self.directory.remove(old_name)
        removed = self.wal.drop_through(through)
        self.directory.sync()
        return {
            "index": index.relocated(rows, vol, written.offsets),
            "vol": vol,
            "through": through,
            "facts": len(rows),
            "segments_removed": removed,
            "bytes_before": before,
            "bytes_after": written.volume.size + self.wal.size,
            "seconds": time.monotonic() - started,
        }

    def _compact_install(self, result: dict[str, Any]) -> dict[str, Any]:
        self.index = result.pop("index")
        self.log_vol = result.pop("vol")
        self.log_through = result["through"]
        self.log.info(
            "compacted through seq {through}: {facts} log facts kept, {bytes_before} -> "
            "{bytes_after} bytes, {seconds:.3f}s",
            **result,
        )
        return result

    # -- reading ------------------------------------------------------------------------

    def plan_replay(self, batch_bytes: int | None = None) -> ReplayPlan:
        """Every visible fact in the compatible order (transaction time, then arrival)."""
        index = self.index
        kwargs = {} if batch_bytes is None else {"batch_bytes": batch_bytes}
        return ReplayPlan(
            index, index.time_order(), self.volumes.pin(), next_seq=index.last_seq, **kwargs
        )

    def plan_page(
        self,
        since: int,
        stores: Iterable[str] | None,
        limit: int | None,
        budget: int,
        scan_limit: int | None = None,
    ) -> ReplayPlan:
        """Facts numbered above ``since`` in sequence order, at most ``budget`` bytes."""
        index = self.index
        store_ids = None if stores is None else index.store_ids(stores)
        if store_ids is not None and not store_ids:
            # none of the named stores has a fact: an empty page that covers the index
            return ReplayPlan(index, [], {}, next_seq=max(since, index.last_seq))
        rows, cursor, more = index.select(
            since, store_ids, limit=limit, budget=budget, scan_limit=scan_limit
        )
        return ReplayPlan(index, rows, self.volumes.pin(), next_seq=cursor, more=more)


def _daemon_thread(*args: Any, **kwargs: Any) -> threading.Thread:
    return threading.Thread(*args, daemon=True, **kwargs)


def defer_to_pool(
    reactor: Any, pool: ThreadPool, fn: Callable[..., Any], *args: Any
) -> defer.Deferred:
    """``deferToThreadPool`` without the context copy: this runs once per group commit."""
    d: defer.Deferred = defer.Deferred()

    def done(success: bool, result: Any) -> None:
        if success:
            reactor.callFromThread(d.callback, result)
        else:
            reactor.callFromThread(d.errback, result)

    pool.callInThreadWithCallback(done, fn, *args)
    return d


def file_backend(
    reactor: Any,
    path: str,
    fsync: FsyncPolicy | None = None,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
) -> StoreBackend:
    """The durable backend: WAL and snapshot files in ``path``, written by one thread."""
    return StoreBackend(
        reactor,
        lambda: FileDirectory(path),
        name="file",
        fsync=fsync,
        threaded=True,
        max_frame_size=max_frame_size,
    )


def memory_backend(reactor: Any, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> StoreBackend:
    """Facts in process memory, same semantics as ``file``, gone at exit."""
    return StoreBackend(
        reactor,
        MemoryDirectory,
        name="memory",
        fsync=FsyncPolicy("never"),
        threaded=False,
        max_frame_size=max_frame_size,
    )
