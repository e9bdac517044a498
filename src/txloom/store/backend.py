"""The storage backend: ordered, group-committed writes over the WAL and snapshot files.

One class serves both backends: ``file`` gives it a real directory and a writer thread,
``memory`` gives it byte arrays and runs everything inline. Writes queue on the reactor
thread; whenever the writer is free, every write queued so far becomes one batch: the
batch gets consecutive sequence numbers, is written with one ``write`` and made durable
with one fsync (group commit), then the index learns the new facts, listeners (push
subscriptions) hear of them and only then are the writers answered.

Nothing that takes time proportional to the store holds that line or the reactor
thread: replays and catch-up subscriptions read on reader threads (``read``, ``page``),
and snapshots and compactions (``txloom.store.maintenance``) scan and rewrite on a
maintenance thread from a consistent cut, taking the write line only for the short
step that switches files.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txloom.interfaces import IStorageBackend
from txloom.store import maintenance
from txloom.store.config import (
    DEFAULT_READER_THREADS,
    DEFAULT_STORAGE_RETRY_INITIAL,
    DEFAULT_STORAGE_RETRY_MAX,
    FsyncPolicy,
)
from txloom.store.directory import Directory
from txloom.store.errors import OperationFailed, StorageFailure
from txloom.store.fact import FactMeta
from txloom.store.factories import file_backend, memory_backend
from txloom.store.index import FactIndex
from txloom.store.loader import LoadedStore, load_store
from txloom.store.replay import ReplayPlan, select_and, select_page
from txloom.store.threads import WorkerThreads
from txloom.store.volumes import VolumeTable
from txloom.store.wal import WriteAheadLog
from txloom.wire.crcjson import DEFAULT_MAX_FRAME_SIZE, encode_frame

__all__ = [
    "Committed",
    "OperationFailed",
    "StorageFailure",
    "StorageState",
    "StoreBackend",
    "file_backend",
    "memory_backend",
]

#: Largest group commit, in bytes of frames: past this a batch is cut so that one huge
#: burst does not delay the answers of the writes at its front.
MAX_BATCH_BYTES = 8 * 1024 * 1024


class StorageState(enum.Enum):
    """Whether the write line takes writes."""

    #: Writes are taken.
    OK = "ok"
    #: A write or fsync failed: writes are refused at once while the backend retries,
    #: with growing pauses, to repair the log's end and sync it; then it is OK again.
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Committed:
    """A fact that just became durable: what push subscribers are sent."""

    seq: int
    store: str
    body: bytes


Listener = Callable[[Sequence[Committed]], None]

#: What a snapshot or compaction in progress learns of each commit after its cut:
#: ``(seq, vol, offset, size, meta)``.
TailEntry = tuple[int, int, int, int, FactMeta]


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
        reader_threads: int = DEFAULT_READER_THREADS,
        retry_initial: float = DEFAULT_STORAGE_RETRY_INITIAL,
        retry_max: float = DEFAULT_STORAGE_RETRY_MAX,
    ) -> None:
        self.reactor = reactor
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.name = name
        self.fsync = fsync or FsyncPolicy()
        self.max_frame_size = max_frame_size
        self._open_directory = open_directory
        prefix = f"txloom-store-{name}"
        self._writer = WorkerThreads(reactor, f"{prefix}-writer", 1 if threaded else 0)
        self._readers = WorkerThreads(
            reactor, f"{prefix}-reader", reader_threads if threaded else 0
        )
        self._maintainer = WorkerThreads(reactor, f"{prefix}-maintenance", 1 if threaded else 0)
        #: Held by a snapshot or compaction from start to finish: one at a time.
        self.maintenance = defer.DeferredLock()
        self._tail: list[TailEntry] | None = None
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
        self.state = StorageState.OK
        #: Why the backend is FAILED (None when OK), and since when (monotonic seconds).
        self.failure_reason: str | None = None
        self._failed_since = 0.0
        #: Storage failures over the process's life.
        self.failures = 0
        self._retry_delay = retry_initial
        self._retry_call: Any = None
        self._retrying = False
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

    @property
    def location(self) -> str:
        return self.directory.describe() if self.directory is not None else self.name

    def open(self) -> defer.Deferred:
        """Recover; fires with a one-line summary (``self.loaded`` has the details)."""
        return defer.Deferred.fromCoroutine(self._open())

    async def _open(self) -> str:
        self.prepare()
        assert self.directory is not None
        for threads in (self._writer, self._readers, self._maintainer):
            threads.start()
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
        report = loaded.report
        cut = ""
        if report.cut_bytes:
            cut = f"; cut {report.cut_bytes} damaged bytes, salvaged {len(report.salvaged)} facts"
        return (
            f"recovered {len(loaded.index)} facts (last seq {loaded.next_seq - 1}) in "
            f"{loaded.seconds * 1000:.0f} ms: {report.frames} WAL frames in {report.segments} "
            f"segments ({report.bytes} bytes), {loaded.snapshot_rows} snapshot facts{cut}"
        )

    def close(self) -> defer.Deferred:
        """Finish every queued write and task, fsync, release the files."""
        return defer.Deferred.fromCoroutine(self._close())

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._syncer is not None and self._syncer.running:
            self._syncer.stop()
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        await self.maintenance.acquire()  # a snapshot or compaction under way finishes
        try:
            await self.when_idle()
            if self.wal is not None:
                try:
                    await self._run(self.wal.close)
                except Exception:
                    self.log.failure("final fsync of the WAL failed")
            self.volumes.close()
            if self.directory is not None:
                self.directory.close()
        finally:
            self.maintenance.release()
        # every thread is idle by now (replays still reading were cut off with their
        # connections, which the server closed first): joining them is immediate
        for threads in (self._writer, self._readers, self._maintainer):
            threads.stop()

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
        refused = self._refusal()
        if refused is not None:
            return defer.fail(refused)
        d: defer.Deferred = defer.Deferred()
        self._queue.append(_Write(body, meta, d))
        self._schedule()
        return d

    def exclusive(self, work: Callable[[], Any], install: Callable[[Any], Any]) -> defer.Deferred:
        """Run ``work`` on the writer thread once every write queued before is committed,
        then ``install(result)`` on the reactor thread before the next batch forms; fires
        with what ``install`` returned. Writes queued meanwhile wait: keep it short."""
        refused = self._refusal()
        if refused is not None:
            return defer.fail(refused)
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
        return self.wal.append(frames, count, sync)

    def _batch_done(self, located: tuple[int, int], batch: list[_Write], first_seq: int) -> None:
        vol, offset = located
        index = self.index
        hidden = self.snapshot_ids
        tail = self._tail
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
            if tail is not None:
                tail.append((seq, vol, offset, len(body), meta))
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
        if failure.check(OperationFailed):
            # nothing was changed: this operation fails, the write line goes on
            self.log.error("{error}", error=failure.getErrorMessage())
            self._busy = False
            item.deferred.errback(StorageFailure(failure.getErrorMessage()))
            self._pump()
            return
        self._fail(failure)
        item.deferred.errback(StorageFailure(f"{failure.value}"))

    # -- storage failures and recovery --------------------------------------------------

    def _refusal(self) -> StorageFailure | None:
        if self.state is StorageState.FAILED:
            return StorageFailure(f"storage failed: {self.failure_reason}; retrying")
        if self._closed:
            return StorageFailure("the store is shutting down")
        return None

    def _fail(self, failure: Failure, in_line: bool = True) -> None:
        """A write or fsync failed: refuse writes, fail what is queued, start retrying.

        ``in_line``: the failure ended the write line's current item (not an interval
        fsync running beside it), so the line is free and the numbers that item took are
        given again (its frames were cut off).
        """
        reason = failure.getErrorMessage()
        self.failures += 1
        if in_line:
            self._busy = False
            self.next_seq = self._committed_seq + 1
        if self.state is StorageState.OK:
            self.state = StorageState.FAILED
            self._failed_since = time.monotonic()
            self._retry_delay = self.retry_initial
        self.failure_reason = reason
        self.log.error(
            "storage failure: {reason}; writes are refused until the log is repaired "
            "(next try in {delay:.2f}s)",
            reason=reason,
            delay=self._retry_delay,
        )
        queued, self._queue = self._queue, deque()
        error = StorageFailure(f"storage failed: {reason}")
        for item in queued:
            item.deferred.errback(error)
        self._schedule_retry()
        if in_line:
            self._pump()

    def _schedule_retry(self) -> None:
        if self._closed or self._retrying:
            return
        if self._retry_call is not None and self._retry_call.active():
            return
        self._retry_call = self.reactor.callLater(self._retry_delay, self._retry)

    def _retry(self) -> None:
        """Repair the log's end on the writer thread; back off while the disk refuses."""
        self._retry_call = None
        if self._closed or self.wal is None or self.state is StorageState.OK:
            return
        self._retrying = True
        self._run(self.wal.restore).addCallbacks(self._recovered, self._still_failed)

    def _recovered(self, _: Any) -> None:
        self._retrying = False
        self.log.info(
            "storage recovered after {seconds:.1f}s ({reason}); writes are taken again",
            seconds=time.monotonic() - self._failed_since,
            reason=self.failure_reason,
        )
        self.state = StorageState.OK
        self.failure_reason = None
        self._retry_delay = self.retry_initial
        self._pump()

    def _still_failed(self, failure: Failure) -> None:
        self._retrying = False
        self._retry_delay = min(self.retry_max, self._retry_delay * 2)
        self.failure_reason = failure.getErrorMessage()
        self.log.warn(
            "storage still failing: {reason}; next try in {delay:.2f}s",
            reason=self.failure_reason,
            delay=self._retry_delay,
        )
        self._schedule_retry()

    def storage_status(self) -> dict[str, Any]:
        """The backend's health for ``stats``: state, why it failed, failures so far."""
        status: dict[str, Any] = {"storage": self.state.value, "storage_failures": self.failures}
        if self.state is StorageState.FAILED:
            status["storage_error"] = self.failure_reason
        return status

    def _interval_sync(self) -> None:
        if self._dirty and self.wal is not None and self.state is StorageState.OK:
            self._dirty = False
            self._run(self.wal.sync).addErrback(self._fail, in_line=False)

    def _run(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        return self._writer.run(fn, *args)

    # -- hooks for snapshots and compactions (txloom.store.maintenance) -----------------

    def run_maintenance(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        """Run ``fn`` on the maintenance thread (inline for the memory backend)."""
        return self._maintainer.run(fn, *args)

    def start_tail(self) -> list[TailEntry]:
        """From now on, record every commit (hidden or not) in the returned list."""
        self._tail = []
        return self._tail

    def stop_tail(self) -> None:
        self._tail = None

    def numbers_taken(self, next_seq: int) -> None:
        """Numbers up to ``next_seq - 1`` are used (a snapshot's new facts took them)."""
        self.next_seq = next_seq
        self._committed_seq = next_seq - 1

    def check_open(self) -> None:
        refused = self._refusal()
        if refused is not None:
            raise refused

    # -- snapshots and compaction -------------------------------------------------------

    def write_snapshot(self, facts: Sequence[tuple[bytes, FactMeta]]) -> defer.Deferred:
        """Replace the snapshot with ``facts``; fires with the number of facts."""
        return defer.Deferred.fromCoroutine(maintenance.write_snapshot(self, list(facts)))

    def compact(self) -> defer.Deferred:
        """Fold the WAL into a compacted log file; fires with a small report."""
        return defer.Deferred.fromCoroutine(maintenance.compact(self))

    # -- reading ------------------------------------------------------------------------

    def read(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        """Run ``fn`` (which reads plans, and so may wait on the disk) on a reader thread."""
        return self._readers.run(fn, *args)

    def plan_replay(self, batch_bytes: int | None = None) -> ReplayPlan:
        """Every visible fact in the compatible order (transaction time, then arrival)."""
        index = self.index
        kwargs = {} if batch_bytes is None else {"batch_bytes": batch_bytes}
        return ReplayPlan(
            index,
            index.time_order(),
            self.volumes.pin(),
            next_seq=index.last_seq,
            body_bytes=index.body_bytes,
            **kwargs,
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
        return select_page(
            index, len(index), self.volumes.pin(), since, stores, limit, budget, scan_limit
        )

    def page(  # noqa: PLR0917 - IStorageBackend.page
        self,
        since: int,
        stores: Iterable[str] | None,
        limit: int | None,
        budget: int,
        scan_limit: int | None = None,
        then: Callable[[ReplayPlan], Any] | None = None,
    ) -> defer.Deferred:
        """``plan_page`` on a reader thread (selecting rows of a store filter may look
        at the whole index), then ``then(plan)`` there too if given (it must close the
        plan); fires with the plan, or with what ``then`` returned."""
        index = self.index
        pinned = self.volumes.pin()  # now: a compaction may retire volumes meanwhile
        covered = self._committed_seq
        args = (index, len(index), pinned, since, stores, limit, budget, scan_limit, covered)
        if then is None:
            return self.read(select_page, *args)
        return self.read(select_and, then, *args)
