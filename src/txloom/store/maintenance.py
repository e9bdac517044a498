"""Snapshots and compactions that writers do not wait for.

Both need time proportional to the store: a snapshot must find, in the whole log, the
facts its ids hide and the numbers its facts already have; a compaction copies every log
fact into one file. Neither holds the write line for that. Each works from a *cut*, a
sequence number up to which the files are complete and no longer change, on the
maintenance thread; commits after the cut are recorded as they happen (the backend's
*tail*: number, place and meta of each, a few dozen bytes) and folded in afterwards.
The write line is taken only for the step that must see a quiet log:

- ``write_snapshot``: (1) scan the log up to the cut, on the maintenance thread;
  (2) on the writer thread, with every earlier write committed: read the rest from the
  tail, number the new facts after the last committed one, write the snapshot file
  (it came in one request, so it is bounded by the frame limit) and start a WAL
  segment after the new numbers; the new facts become readable at once; (3) build and
  sort the new index on the maintenance thread; (4) on the reactor thread, add the
  commits made meanwhile and switch to it.
- ``compact``: (1) on the writer thread, start a WAL segment at the cut; (2) copy the
  log facts up to the cut into ``log-<cut>.dat`` and relocate them in a copy of the
  index, on the maintenance thread; (3) on the reactor thread, add the rows appended
  meanwhile and switch; (4) remove the files it replaced.

Crash safety is unchanged: every file is written to a temporary name, fsynced, renamed
and the directory fsynced before anything refers to it, and old files are removed only
after that. A crash during a snapshot leaves the old snapshot or the new one (the new
one is in place, with its numbers, before the WAL moves past them); one during a
compaction leaves segments that the next start-up recognises as compacted already.
"""

from __future__ import annotations

import time
from array import array
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from txloom.store.errors import OperationFailed
from txloom.store.fact import FactMeta, InvalidFact, peek_fact
from txloom.store.index import COOPERATIVE_ROWS, FactIndex
from txloom.store.loader import IndexBuilder, scan_log
from txloom.store.replay import ReplayPlan
from txloom.store.snapshot import (
    LOG_KIND,
    SNAPSHOT_KIND,
    SNAPSHOT_NAME,
    log_entry_header,
    log_name,
    read_entries,
    write_entries,
)
from txloom.store.threads import let_others_run
from txloom.wire.crcjson import FRAME_OVERHEAD

if TYPE_CHECKING:
    from txloom.store.backend import StoreBackend, TailEntry
    from txloom.store.directory import Volume

__all__ = ["compact", "write_snapshot"]

log = Logger(namespace="txloom.store.maintenance")

#: ``(seq, vol, offset, size, transaction_time, store)`` of a snapshot fact.
_Row = tuple[int, int, int, int, float, str]


def _release(pinned: dict[int, Volume]) -> None:
    for volume in pinned.values():
        volume.release()


# ------------------------------------------------------------------------------------
# Snapshots
# ------------------------------------------------------------------------------------


async def write_snapshot(backend: StoreBackend, facts: list[tuple[bytes, FactMeta]]) -> int:
    """Replace the snapshot with ``facts``; the number of facts written."""
    backend.check_open()
    async with backend.maintenance:
        backend.check_open()
        started = time.monotonic()
        job = _Snapshot(backend, facts)
        tail = backend.start_tail()
        try:
            return await job.run(tail, started)
        finally:
            backend.stop_tail()


class _Snapshot:
    def __init__(self, backend: StoreBackend, facts: list[tuple[bytes, FactMeta]]) -> None:
        self.backend = backend
        self.facts = facts
        self.wanted = {meta.id for _body, meta in facts if meta.id is not None}
        self.builder = IndexBuilder(frozenset(self.wanted), self.wanted)
        #: Numbers the current snapshot gave to wanted ids.
        self.known: dict[str, int] = {}
        self.tail: list[TailEntry] = []
        #: Tail entries folded in so far.
        self.taken = 0

    async def run(self, tail: list[TailEntry], started: float) -> int:
        backend = self.backend
        assert backend.wal is not None
        self.tail = tail
        cut = backend.last_seq  # every fact up to here is in the files; the rest in `tail`
        pinned = backend.volumes.pin()
        segments = [(segment.base, segment.vol_id) for segment in backend.wal.segments]
        try:
            await backend.run_maintenance(
                self.scan, pinned, backend.snapshot_vol, backend.log_vol, segments, cut
            )
        finally:
            _release(pinned)
        written = await backend.exclusive(self.commit, self.publish)
        index = await backend.run_maintenance(self.build, written)
        return self.install(index, written, started)

    def scan(
        self,
        pinned: dict[int, Volume],
        snapshot_vol: int | None,
        log_vol: int | None,
        segments: list[tuple[int, int]],
        cut: int,
    ) -> None:
        """Maintenance thread: what the log up to ``cut`` says about the wanted ids."""
        max_frame = self.backend.max_frame_size
        if snapshot_vol is not None and self.wanted:
            for seq, _offset, _size, body in read_entries(
                pinned[snapshot_vol], SNAPSHOT_KIND, max_frame
            ):
                try:
                    fact_id = peek_fact(body).id
                except InvalidFact:
                    continue
                if fact_id in self.wanted and fact_id not in self.known:
                    self.known[fact_id] = seq
        scan_log(pinned, log_vol, segments, self.builder, max_frame, cut)
        self.take_tail_into_builder()  # what was committed during the scan

    def take_tail_into_builder(self) -> None:
        end = len(self.tail)
        add = self.builder.add_meta
        for n, (seq, vol, offset, size, meta) in enumerate(self.tail[self.taken : end], 1):
            add(seq, vol, offset, size, meta)
            if n % 1024 == 0:
                let_others_run()
        self.taken = end

    def commit(self) -> dict[str, Any]:
        """Writer thread, nothing in flight: number the facts and write the file."""
        backend = self.backend
        assert backend.directory is not None and backend.wal is not None
        self.take_tail_into_builder()  # now every commit up to the last is known
        last = backend.next_seq - 1
        known = self.known
        for fact_id, seq in self.builder.found.items():
            known.setdefault(fact_id, seq)
        next_seq = last + 1
        numbered: list[tuple[int, bytes, FactMeta]] = []
        used: set[str] = set()
        for body, meta in self.facts:
            seq = known.get(meta.id) if meta.id is not None and meta.id not in used else None
            if seq is None:
                seq = next_seq
                next_seq += 1
            if meta.id is not None:
                used.add(meta.id)
            numbered.append((seq, body, meta))
        numbered.sort(key=lambda entry: entry[0])
        try:
            written = write_entries(
                backend.directory,
                SNAPSHOT_NAME,
                SNAPSHOT_KIND,
                ((seq, body) for seq, body, _meta in numbered),
                count=len(numbered),
            )
        except OSError as e:
            # the old snapshot is still in place and nothing else was touched
            raise OperationFailed(f"snapshot not written: {e}") from e
        vol = backend.volumes.add(written.volume)
        if next_seq != last + 1:
            backend.wal.rotate(next_seq - 1)  # positional numbers resume after the new facts
        rows: list[_Row] = [
            (seq, vol, offset, len(body), meta.transaction_time, meta.store)
            for (seq, body, meta), offset in zip(numbered, written.offsets, strict=True)
        ]
        return {"vol": vol, "rows": rows, "last": last, "next_seq": next_seq}

    def publish(self, written: dict[str, Any]) -> dict[str, Any]:
        """Reactor thread, before the next batch: the new facts are readable now."""
        backend = self.backend
        backend.numbers_taken(written["next_seq"])
        index = backend.index
        for seq, vol, offset, size, transaction_time, store in written["rows"]:
            if seq > written["last"]:
                index.append(seq, vol, offset, size, transaction_time, index.store_id(store))
        return written

    def build(self, written: dict[str, Any]) -> FactIndex:
        """Maintenance thread: the new index, sorted for replay."""
        index = self.builder.index.merged(written["rows"], cooperative=True)
        self.take_tail_into_index(index)
        index.time_order(cooperative=True)
        self.take_tail_into_index(index)  # what came in while sorting
        return index

    def take_tail_into_index(self, index: FactIndex) -> None:
        end = len(self.tail)
        hidden = self.wanted
        for n, (seq, vol, offset, size, meta) in enumerate(self.tail[self.taken : end], 1):
            if meta.id is None or meta.id not in hidden:
                index.append(
                    seq, vol, offset, size, meta.transaction_time, index.store_id(meta.store)
                )
            if n % 1024 == 0:
                let_others_run()
        self.taken = end

    def install(self, index: FactIndex, written: dict[str, Any], started: float) -> int:
        """Reactor thread: the last commits, then the switch."""
        backend = self.backend
        self.take_tail_into_index(index)
        old = backend.snapshot_vol
        backend.index = index
        backend.snapshot_vol = written["vol"]
        backend.snapshot_ids = frozenset(self.wanted)
        backend.stop_tail()
        if old is not None:
            backend.volumes.retire(old)
        log.info(
            "snapshot written: {count} facts ({new} new); {visible} facts visible; {seconds:.3f}s",
            count=len(self.facts),
            new=written["next_seq"] - written["last"] - 1,
            visible=len(index),
            seconds=time.monotonic() - started,
        )
        return len(self.facts)


# ------------------------------------------------------------------------------------
# Compaction
# ------------------------------------------------------------------------------------


async def compact(backend: StoreBackend) -> dict[str, Any]:
    """Fold the log up to now into ``log-<through>.dat``; a small report."""
    backend.check_open()
    async with backend.maintenance:
        backend.check_open()
        started = time.monotonic()
        cut = await backend.exclusive(
            lambda: _start_segment(backend), lambda c: _cut_view(backend, c)
        )
        through, before, index, end, pinned, snapshot_vol, old_log = cut
        copied = await backend.run_maintenance(
            _copy_log, backend, index, end, pinned, snapshot_vol, through, before
        )
        if isinstance(copied, int):
            report = {
                "through": through,
                "facts": copied,
                "bytes_before": before,
                "bytes_after": before,
                "segments_removed": 0,
                "compacted": False,
                "seconds": time.monotonic() - started,
            }
            log.info(
                "compaction through seq {through} skipped: the {facts} log facts would not "
                "take less room than the {bytes_before} bytes they take now",
                **report,
            )
            return report
        relocated, vol, facts = copied
        live = backend.index
        if live is not index:  # pragma: no cover - maintenance runs one at a time
            raise RuntimeError("the index was replaced during a compaction")
        relocated.continue_from(live, end)
        backend.index = relocated
        backend.log_vol = vol
        backend.log_through = through
        report = await backend.run_maintenance(_remove_replaced, backend, old_log, through, vol)
        report.update(
            through=through,
            facts=facts,
            bytes_before=before,
            compacted=True,
            seconds=time.monotonic() - started,
        )
        log.info(
            "compacted through seq {through}: {facts} log facts kept, {bytes_before} -> "
            "{bytes_after} bytes, {segments_removed} WAL segments removed, {seconds:.3f}s",
            **report,
        )
        return report


def _start_segment(backend: StoreBackend) -> tuple[int, int]:
    """Writer thread: facts up to the cut are in segments that no longer change; the
    bytes of the files the compacted log would replace (those segments, the old log)."""
    assert backend.wal is not None
    through = backend.next_seq - 1
    before = backend.wal.size
    if backend.log_vol is not None:
        before += backend.volumes[backend.log_vol].size
    backend.wal.rotate(through)
    return through, before


def _cut_view(backend: StoreBackend, cut: tuple[int, int]) -> tuple[Any, ...]:
    """Reactor thread, nothing in flight: the index rows up to the cut, and their files."""
    through, before = cut
    index = backend.index
    return (
        through,
        before,
        index,
        len(index),
        backend.volumes.pin(),
        backend.snapshot_vol,
        backend.log_vol,
    )


def _copy_log(  # noqa: PLR0917 - the view taken at the cut
    backend: StoreBackend,
    index: FactIndex,
    end: int,
    pinned: dict[int, Volume],
    snapshot_vol: int | None,
    through: int,
    before: int,
) -> tuple[FactIndex, int, int] | int:
    """Maintenance thread: write the compacted log; relocate its facts in a new index.

    A compaction never makes the store larger: when the compacted log could take as
    much room as the files it replaces (a log with nothing hidden or superseded in it:
    each entry carries its number, a WAL frame does not), nothing is written and the
    number of log facts is returned instead.
    """
    assert backend.directory is not None
    vols = index.vols
    sizes = index.sizes
    rows: array | range = range(end)
    body_bytes = 0
    if snapshot_vol is not None:
        rows = array("q")  # not a list: a million ints take long to free, holding the GIL
        for start in range(0, end, COOPERATIVE_ROWS):
            stop = min(end, start + COOPERATIVE_ROWS)
            kept = [r for r in range(start, stop) if vols[r] != snapshot_vol]
            rows.extend(kept)
            body_bytes += sum(map(sizes.__getitem__, kept))
            let_others_run()
    else:
        for start in range(0, end, COOPERATIVE_ROWS):
            body_bytes += sum(sizes[start : min(end, start + COOPERATIVE_ROWS)])
    if compacted_size_bound(len(rows), body_bytes, through) >= before:
        _release(pinned)
        return len(rows)
    plan = ReplayPlan(index, rows, pinned, next_seq=through, body_bytes=0)  # owns the pins
    try:
        seqs = index.seqs
        bodies = (body for batch in plan.batches() for body in batch)
        written = write_entries(
            backend.directory,
            log_name(through),
            LOG_KIND,
            ((seqs[row], body) for row, body in zip(rows, bodies, strict=True)),
            count=len(rows),
            through=through,
        )
    finally:
        plan.close()
    vol = backend.volumes.add(written.volume)
    return index.relocated(rows, vol, written.offsets, upto=end), vol, len(rows)


def compacted_size_bound(count: int, body_bytes: int, through: int) -> int:
    """Most bytes a compacted log of ``count`` facts numbered up to ``through`` takes."""
    header = len(log_entry_header(count, through)) + FRAME_OVERHEAD
    entry = FRAME_OVERHEAD + len(b'{"seq":%d,"fact":}' % through)
    return header + count * entry + body_bytes


def _remove_replaced(
    backend: StoreBackend, old_log: int | None, through: int, vol: int
) -> dict[str, Any]:
    """Maintenance thread: drop the compacted log and the segments the new one holds."""
    assert backend.directory is not None and backend.wal is not None
    name = backend.volumes[vol].name
    if old_log is not None:
        old_name = backend.volumes[old_log].name
        backend.volumes.retire(old_log)
        if old_name != name:
            backend.directory.remove(old_name)
    removed = backend.wal.drop_through(through)
    backend.directory.sync()
    return {
        "segments_removed": removed,
        "bytes_after": backend.volumes[vol].size + backend.wal.size,
    }
