"""Replay plans: a fixed list of facts, read from the volumes a batch at a time.

A plan is made from the index as it is at that moment (an index object only ever grows
at the end; rebuilds make a new one, so rows a plan names never change under it), pins
the volumes it reads so that a compaction cannot close them underneath it, and yields
the facts' bytes in batches of about ``batch_bytes``. Facts that sit next to each other
in a file are read with one ``pread``; the whole store is never in memory at once.

Reading may block on the disk, so the server reads plans on its reader threads
(``StoreBackend.read``), one thread at a time per plan.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import repeat
from typing import Any

from zope.interface import implementer

from txloom.interfaces import IReplayPlan
from txloom.store.directory import Volume
from txloom.store.index import FactIndex
from txloom.store.threads import let_others_run

__all__ = ["DEFAULT_BATCH_BYTES", "ReplayPlan", "select_and", "select_page"]

#: Bytes of facts read and handed out per batch (one transport write, one pread or few).
DEFAULT_BATCH_BYTES = 256 * 1024

#: Two facts are read with one pread when at most this many bytes separate them
#: (the frame overhead between WAL entries, the entry prefix in snapshot files).
_COALESCE_GAP = 64


@implementer(IReplayPlan)
class ReplayPlan:
    """The facts of one replay (or one page of it), in answer order."""

    def __init__(
        self,
        index: FactIndex,
        rows: Sequence[int],
        volumes: dict[int, Volume],
        *,
        next_seq: int,
        more: bool = False,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        body_bytes: int | None = None,
    ) -> None:
        self.index = index
        self.rows = rows
        self.count = len(rows)
        if body_bytes is None:
            sizes = index.sizes
            if isinstance(rows, range) and rows.step == 1:
                body_bytes = sum(sizes[rows.start : rows.stop])
            else:
                body_bytes = sum(sizes[r] for r in rows)
        #: Sum of the sizes of the facts (the caller passes it when it knows it already).
        self.body_bytes = body_bytes
        #: The cursor a paged reader continues from (``next`` in the answer).
        self.next = next_seq
        self.more = more
        self.batch_bytes = batch_bytes
        self._volumes = volumes

    def encoded_size(self) -> int:
        """Bytes of the facts joined with commas (what goes between ``[`` and ``]``)."""
        return self.body_bytes + max(0, self.count - 1)

    def batches(self) -> Iterator[list[bytes]]:
        """Fact bodies in plan order, ``batch_bytes`` at a time."""
        rows = self.rows
        if isinstance(rows, range) and rows.step == 1 and self.count:
            yield from self._consecutive_batches(rows.start, rows.stop)
        else:
            yield from self._batches(rows)

    def _consecutive_batches(self, start: int, stop: int) -> Iterator[list[bytes]]:
        """Rows ``start..stop-1`` (a whole replay in time order, a page of every store):
        where a batch's facts lie one after the other in one file, as they do in WAL
        segments and compacted logs, it is read with one ``pread`` and cut with C-level
        loops instead of one Python step per fact."""
        index = self.index
        vols, offsets, sizes = index.vols, index.offsets, index.sizes
        step = max(1, self.batch_bytes * self.count // max(1, self.body_bytes))
        low = start
        while low < stop:
            high = min(stop, low + step)
            vol = vols[low]
            starts = offsets[low:high]
            ends = list(map(operator.add, starts, sizes[low:high]))
            gaps = list(map(operator.sub, starts[1:], ends))
            if vols[low:high].count(vol) != high - low or (
                gaps and not 0 <= min(gaps) <= max(gaps) <= _COALESCE_GAP
            ):
                yield from self._batches(range(low, high))  # not one stretch of one file
            else:
                first = starts[0]
                data = self._volumes[vol].pread(first, ends[-1] - first)
                cuts = map(
                    slice,
                    map(operator.sub, starts, repeat(first)),
                    map(operator.sub, ends, repeat(first)),
                )
                yield list(map(data.__getitem__, cuts))
            low = high
            let_others_run()  # plans are read on background threads

    def _batches(self, rows: Sequence[int]) -> Iterator[list[bytes]]:
        index = self.index
        vols, offsets, sizes = index.vols, index.offsets, index.sizes
        volumes = self._volumes
        batch: list[bytes] = []
        batch_size = 0
        # the run of rows being coalesced into one read
        run: list[int] = []
        run_vol = -1
        run_start = run_end = 0
        for row in rows:
            vol = vols[row]
            offset = offsets[row]
            size = sizes[row]
            if run and (
                vol != run_vol
                or not run_end <= offset <= run_end + _COALESCE_GAP
                or offset + size - run_start > self.batch_bytes
            ):
                batch_size += self._read_run(volumes[run_vol], run, run_start, run_end, batch)
                run = []
                if batch_size >= self.batch_bytes:
                    yield batch
                    batch = []
                    batch_size = 0
                    let_others_run()  # plans are read on background threads
            if not run:
                run_vol = vol
                run_start = offset
            run.append(row)
            run_end = offset + size
        if run:
            self._read_run(volumes[run_vol], run, run_start, run_end, batch)
        if batch:
            yield batch

    def _read_run(
        self, volume: Volume, run: list[int], start: int, end: int, out: list[bytes]
    ) -> int:
        offsets, sizes = self.index.offsets, self.index.sizes
        if len(run) == 1:
            out.append(volume.pread(start, end - start))
            return end - start
        data = volume.pread(start, end - start)
        view = memoryview(data)
        total = 0
        for row in run:
            o = offsets[row] - start
            s = sizes[row]
            out.append(bytes(view[o : o + s]))
            total += s
        return total

    def numbered_batches(self) -> Iterator[list[tuple[int, bytes]]]:
        """``batches`` with each body's sequence number."""
        seqs = self.index.seqs
        rows = iter(self.rows)
        for batch in self.batches():
            yield [(seqs[next(rows)], body) for body in batch]

    def close(self) -> None:
        """Let go of the pinned volumes (idempotent)."""
        volumes, self._volumes = self._volumes, {}
        for volume in volumes.values():
            volume.release()


def select_page(  # noqa: PLR0917 - runs on a reader thread with the reactor's view
    index: FactIndex,
    end: int,
    pinned: dict[int, Any],
    since: int,
    stores: Iterable[str] | None,
    limit: int | None,
    budget: int,
    scan_limit: int | None,
    covered: int = 0,
) -> ReplayPlan:
    """The page plan over the first ``end`` rows of ``index`` (safe on any thread).

    ``covered``: the newest number committed when those rows were taken; a last page
    continues from there (facts after the last row may be hidden by the snapshot).
    """
    try:
        store_ids = None if stores is None else index.store_ids(stores)
        if store_ids is not None and not store_ids:
            # none of the named stores has a fact: an empty page that covers the index
            last = index.seqs[end - 1] if end else 0
            for volume in pinned.values():
                volume.release()
            return ReplayPlan(index, [], {}, next_seq=max(since, last, covered), body_bytes=0)
        rows, cursor, more = index.select(
            since, store_ids, limit=limit, budget=budget, scan_limit=scan_limit, end=end
        )
    except BaseException:
        for volume in pinned.values():
            volume.release()
        raise
    if not more:
        cursor = max(cursor, covered)
    return ReplayPlan(index, rows, pinned, next_seq=cursor, more=more)


def select_and(then: Callable[[ReplayPlan], Any], *args: Any) -> Any:
    return then(select_page(*args))
