"""The in-memory index of the facts replay returns: where each one's bytes are.

It keeps no fact, only six numbers per fact in typed arrays (sequence number, volume,
offset, size, transaction time, store), about 36 bytes each: a million facts cost ~36 MB
however large their values are, and replay reads the bytes from the volumes on demand.
Rows are kept in sequence-number order, which is WAL order for appended facts.
"""

from __future__ import annotations

import heapq
import operator
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from itertools import accumulate, islice, repeat
from typing import Any

from txloom.store.threads import let_others_run

__all__ = ["FactIndex", "sorted_cooperatively"]

#: Rows a background thread handles in one go (a sort of a run, a sum over a slice)
#: before it lets other threads run: C code such as a sort keeps the interpreter lock
#: throughout, and this many rows take a few milliseconds.
COOPERATIVE_ROWS = 16_384

#: Up to this many rows added since the replay order was last brought up to date are
#: inserted one by one (each insert moves the tail of the array); more are sorted and
#: merged, so that writing facts in falling time order never costs quadratic time.
_INSERT_LIMIT = 64


class FactIndex:
    """Columns of the visible facts, sorted by sequence number."""

    def __init__(self) -> None:
        self.seqs = array("q")
        self.vols = array("i")
        self.offsets = array("q")
        self.sizes = array("i")
        self.times = array("d")
        self.stores = array("i")
        #: Store names by number, and numbers by name.
        self.store_names: list[str] = []
        self._store_ids: dict[str, int] = {}
        #: Sum of the fact sizes (the bytes a plain replay carries).
        self.body_bytes = 0
        # True while transaction times never decrease in sequence order: then the
        # compatible replay order is the row order and needs no sort.
        self._time_ordered = True
        # Otherwise: rows sorted by (time, seq), kept up to date incrementally (a new
        # fact's time is usually close to the newest, so it lands near the end), and
        # how many rows that order covers.
        self._order: array | None = None
        self._order_rows = 0

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def last_seq(self) -> int:
        return self.seqs[-1] if self.seqs else 0

    def recount(self, cooperative: bool = False) -> None:
        """Recompute the totals after rows were added to the columns directly.

        ``cooperative``: on a background thread, in steps that let other threads run.
        """
        sizes, times = self.sizes, self.times
        if not cooperative:
            self.body_bytes = sum(sizes)
            self._time_ordered = all(map(operator.le, times, islice(times, 1, None)))
        else:
            total = 0
            ordered = True
            for start in range(0, len(sizes), COOPERATIVE_ROWS):
                total += sum(sizes[start : start + COOPERATIVE_ROWS])
                if ordered:
                    part = times[start : start + COOPERATIVE_ROWS + 1]
                    ordered = all(map(operator.le, part, islice(part, 1, None)))
                let_others_run()
            self.body_bytes = total
            self._time_ordered = ordered
        self._order = None
        self._order_rows = 0

    def store_id(self, name: str) -> int:
        number = self._store_ids.get(name)
        if number is None:
            number = self._store_ids[name] = len(self.store_names)
            self.store_names.append(name)
        return number

    def store_ids(self, names: Iterable[str]) -> set[int]:
        """Numbers of the named stores that have (or had) facts; unknown names match none."""
        return {self._store_ids[n] for n in names if n in self._store_ids}

    def append(  # noqa: PLR0917 - one row, called once per fact on the hot path
        self, seq: int, vol: int, offset: int, size: int, time: float, store: int
    ) -> None:
        """Add a row; ``seq`` must be above every number already in the index."""
        if self.seqs and seq <= self.seqs[-1]:
            raise ValueError(f"sequence number {seq} is not above {self.seqs[-1]}")
        if self._time_ordered and self.times and time < self.times[-1]:
            # the rows so far are in time order; from here on the order is kept apart
            self._time_ordered = False
            self._order = array("q", range(len(self.seqs)))
            self._order_rows = len(self.seqs)
        self.seqs.append(seq)
        self.vols.append(vol)
        self.offsets.append(offset)
        self.sizes.append(size)
        self.times.append(time)
        self.stores.append(store)
        self.body_bytes += size

    def position_after(self, seq: int) -> int:
        """Row of the first fact numbered above ``seq``."""
        return bisect_right(self.seqs, seq)

    def time_order(self, cooperative: bool = False) -> Sequence[int]:
        """Rows in the compatible replay order: transaction time, then sequence number.

        ``cooperative``: a full sort runs in steps that let other threads run (for a
        background thread: the sort holds the interpreter lock while it runs).
        """
        count = len(self.seqs)
        if self._time_ordered:
            return range(count)
        times = self.times
        order = self._order
        if order is None:
            # sorted() is stable and rows are in sequence order: ties keep arrival order
            if cooperative:
                order = sorted_cooperatively(times.__getitem__, 0, count)
            else:
                order = array("q", sorted(range(count), key=times.__getitem__))
            self._order = order
        elif count - self._order_rows <= _INSERT_LIMIT:
            key = times.__getitem__
            for row in range(self._order_rows, count):
                time = times[row]
                if time >= times[order[-1]]:
                    order.append(row)
                else:  # after equal times: ties keep arrival order
                    order.insert(bisect_right(order, time, key=key), row)
        else:  # many new rows (a backfill in any order): sort them, merge in one pass
            key = times.__getitem__
            new = sorted(range(self._order_rows, count), key=key)
            # only the tail from where the earliest new row goes needs merging; merge()
            # prefers its first input on ties, so older rows stay first
            start = bisect_right(order, times[new[0]], key=key)
            tail = order[start:]
            del order[start:]
            order.extend(heapq.merge(tail, new, key=key))
        self._order_rows = count
        return order[:]  # the caller's copy: later appends change this one

    def select(
        self,
        since: int,
        stores: set[int] | None,
        *,
        limit: int | None,
        budget: int,
        separator: int = 1,
        scan_limit: int | None = None,
        end: int | None = None,
    ) -> tuple[Sequence[int], int, bool]:
        """Rows of facts numbered above ``since`` in the given stores, for one page.

        Looks at the first ``end`` rows (all by default: a reader on another thread
        passes the length it saw, since the reactor may be appending). Stops after
        ``limit`` rows, before the bytes (sizes plus one separator each) would exceed
        ``budget``, or after looking at ``scan_limit`` rows. Returns the rows, the number
        up to which the index was examined (the ``next`` cursor) and whether facts may
        remain.
        """
        length = len(self.seqs) if end is None else end
        start = bisect_right(self.seqs, since, 0, length)
        stop = length if scan_limit is None else min(length, start + scan_limit)
        if stores is None:
            return self._select_all(since, start, stop, length, limit, budget, separator)
        rows: list[int] = []
        used = 0
        sizes = self.sizes
        store_col = self.stores
        seqs = self.seqs
        cursor = since
        position = start
        while position < stop:
            if stores is None or store_col[position] in stores:
                cost = sizes[position] + separator
                if (limit is not None and len(rows) >= limit) or used + cost > budget:
                    return rows, cursor, True
                rows.append(position)
                used += cost
            cursor = seqs[position]
            position += 1
        return rows, cursor, position < length

    def _select_all(  # noqa: PLR0917 - select() without a store filter
        self,
        since: int,
        start: int,
        stop: int,
        length: int,
        limit: int | None,
        budget: int,
        separator: int,
    ) -> tuple[range, int, bool]:
        """Every row from ``start`` while they fit: found by summing sizes in C-level
        steps rather than one Python step per row."""
        last = stop if limit is None else min(stop, start + limit)
        taken = start
        used = 0
        while taken < last:
            step_end = min(last, taken + COOPERATIVE_ROWS)
            costs = list(
                accumulate(map(operator.add, self.sizes[taken:step_end], repeat(separator)))
            )
            fit = bisect_right(costs, budget - used)
            if fit < step_end - taken:  # the budget ends inside this step
                taken += fit
                cursor = self.seqs[taken - 1] if taken > start else since
                return range(start, taken), cursor, True
            used += costs[-1]
            taken = step_end
        cursor = self.seqs[last - 1] if last > start else since
        return range(start, last), cursor, last < stop or stop < length

    def merged(
        self, rows: Iterable[tuple[int, int, int, int, float, str]], cooperative: bool = False
    ) -> FactIndex:
        """A new index: these rows plus this one's (``(seq, vol, offset, size, time, store)``).

        ``rows`` must be sorted by sequence number and share none with this index; the
        runs of this index between them are copied with array slices.
        """
        new = FactIndex()
        new.store_names = list(self.store_names)
        new._store_ids = dict(self._store_ids)
        start = 0
        for n, (seq, vol, offset, size, time, store) in enumerate(rows, 1):
            position = bisect_right(self.seqs, seq, start)
            new._extend(self, start, position, cooperative)
            new.append(seq, vol, offset, size, time, new.store_id(store))
            start = position
            if cooperative and n % 128 == 0:
                let_others_run()
        new._extend(self, start, len(self), cooperative)
        new.recount(cooperative)
        return new

    def relocated(
        self, rows: Sequence[int], vol: int, offsets: Sequence[int], upto: int | None = None
    ) -> FactIndex:
        """A new index in which the given rows live in ``vol`` at ``offsets``.

        With ``upto``, only the first ``upto`` rows are copied (compaction relocates the
        rows it saw, on its own thread, and ``continue_from`` adds the later ones).
        """
        new = FactIndex()
        new.store_names = list(self.store_names)
        new._store_ids = dict(self._store_ids)
        new._extend(self, 0, len(self) if upto is None else upto, cooperative=True)
        if upto is None:
            new._time_ordered = self._time_ordered
            if self._order is not None:  # same rows, same order
                new._order = array("q", self._order)
                new._order_rows = self._order_rows
        vols, new_offsets = new.vols, new.offsets
        for n, (row, offset) in enumerate(zip(rows, offsets, strict=True), 1):
            vols[row] = vol
            new_offsets[row] = offset
            if n % 4096 == 0:
                let_others_run()  # this runs on the maintenance thread
        return new

    def continue_from(self, live: FactIndex, start: int) -> None:
        """Append ``live``'s rows from ``start`` on and take its replay order and store
        numbers: this index holds ``live``'s first ``start`` rows (relocated), so both
        then list the same facts in the same rows."""
        self._extend(live, start, len(live))
        self.store_names = list(live.store_names)
        self._store_ids = dict(live._store_ids)
        self._time_ordered = live._time_ordered
        self._order = None if live._order is None else array("q", live._order)
        self._order_rows = live._order_rows

    def _extend(self, other: FactIndex, start: int, end: int, cooperative: bool = False) -> None:
        if start >= end:
            return
        if self.seqs and other.seqs[start] <= self.seqs[-1]:
            raise ValueError(f"sequence number {other.seqs[start]} is not above {self.seqs[-1]}")
        step = 4 * COOPERATIVE_ROWS
        if cooperative and end - start > step:
            # copying a million rows holds the interpreter lock for tens of milliseconds
            for low in range(start, end, step):
                self._extend(other, low, min(end, low + step))
                let_others_run()
            return
        self.seqs.extend(other.seqs[start:end])
        self.vols.extend(other.vols[start:end])
        self.offsets.extend(other.offsets[start:end])
        sizes = other.sizes[start:end]
        self.sizes.extend(sizes)
        self.times.extend(other.times[start:end])
        self.stores.extend(other.stores[start:end])
        self.body_bytes += sum(sizes)
        self._order = None
        self._order_rows = 0


def sorted_cooperatively(key: Any, start: int, end: int) -> array:
    """``sorted(range(start, end), key=key)`` (stable) in steps that let other threads run.

    Runs of ``COOPERATIVE_ROWS`` rows are sorted one at a time, then put together:
    appended one after the other, merging only where neighbours overlap, which is
    cheap when the rows are nearly in order (transaction times from several clients);
    when they are far from it, by one k-way merge taken a step at a time.
    """
    runs = []
    for low in range(start, end, COOPERATIVE_ROWS):
        runs.append(sorted(range(low, min(end, low + COOPERATIVE_ROWS)), key=key))
        let_others_run()
    order = array("q")
    if _append_runs(order, runs, key):
        return order
    order = array("q")
    merged = heapq.merge(*runs, key=key)
    while True:
        before = len(order)
        order.extend(islice(merged, COOPERATIVE_ROWS))
        if len(order) == before:
            return order
        let_others_run()


def _append_runs(order: array, runs: list[list[int]], key: Any) -> bool:
    """Append sorted runs (of ascending rows) to ``order``, merging where they overlap;
    False, leaving ``order`` unusable, as soon as an overlap is too large for that."""
    for run in runs:
        if order and key(run[0]) < key(order[-1]):
            first = key(run[0])
            start = bisect_right(order, first, key=key)
            if len(order) - start > 2 * COOPERATIVE_ROWS:
                return False
            stop = bisect_right(run, key(order[-1]), key=key)
            tail = order[start:]
            del order[start:]
            # merge() prefers its first input on ties: earlier rows stay first
            order.extend(heapq.merge(tail, run[:stop], key=key))
            order.extend(run[stop:])
        else:
            order.extend(run)
        let_others_run()
    return True
