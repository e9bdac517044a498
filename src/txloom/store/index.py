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
from itertools import islice

__all__ = ["FactIndex"]

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

    def recount(self) -> None:
        """Recompute the totals after rows were added to the columns directly."""
        self.body_bytes = sum(self.sizes)
        times = self.times
        self._time_ordered = all(map(operator.le, times, islice(times, 1, None)))
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

    def time_order(self) -> Sequence[int]:
        """Rows in the compatible replay order: transaction time, then sequence number."""
        count = len(self.seqs)
        if self._time_ordered:
            return range(count)
        times = self.times
        order = self._order
        if order is None:
            # sorted() is stable and rows are in sequence order: ties keep arrival order
            order = self._order = array("q", sorted(range(count), key=times.__getitem__))
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
    ) -> tuple[list[int], int, bool]:
        """Rows of facts numbered above ``since`` in the given stores, for one page.

        Stops after ``limit`` rows, before the bytes (sizes plus one separator each)
        would exceed ``budget``, or after looking at ``scan_limit`` rows. Returns the
        rows, the number up to which the index was examined (the ``next`` cursor) and
        whether facts may remain.
        """
        start = self.position_after(since)
        end = len(self.seqs)
        if scan_limit is not None:
            end = min(end, start + scan_limit)
        rows: list[int] = []
        used = 0
        sizes = self.sizes
        store_col = self.stores
        cursor = since
        position = start
        while position < end:
            if stores is None or store_col[position] in stores:
                cost = sizes[position] + separator
                if (limit is not None and len(rows) >= limit) or used + cost > budget:
                    return rows, cursor, True
                rows.append(position)
                used += cost
            cursor = self.seqs[position]
            position += 1
        return rows, cursor, position < len(self.seqs)

    def merged(self, rows: Iterable[tuple[int, int, int, int, float, str]]) -> FactIndex:
        """A new index: these rows plus this one's (``(seq, vol, offset, size, time, store)``).

        ``rows`` must be sorted by sequence number and share none with this index; the
        runs of this index between them are copied with array slices.
        """
        new = FactIndex()
        new.store_names = list(self.store_names)
        new._store_ids = dict(self._store_ids)
        start = 0
        for seq, vol, offset, size, time, store in rows:
            position = bisect_right(self.seqs, seq, start)
            new._extend(self, start, position)
            new.append(seq, vol, offset, size, time, new.store_id(store))
            start = position
        new._extend(self, start, len(self))
        new.recount()
        return new

    def relocated(self, rows: Sequence[int], vol: int, offsets: Sequence[int]) -> FactIndex:
        """A new index in which the given rows live in ``vol`` at ``offsets``."""
        new = FactIndex()
        new.store_names = list(self.store_names)
        new._store_ids = dict(self._store_ids)
        new._extend(self, 0, len(self))
        new._time_ordered = self._time_ordered
        if self._order is not None:  # same rows, same order
            new._order = array("q", self._order)
            new._order_rows = self._order_rows
        vols, new_offsets = new.vols, new.offsets
        for row, offset in zip(rows, offsets, strict=True):
            vols[row] = vol
            new_offsets[row] = offset
        return new

    def _extend(self, other: FactIndex, start: int, end: int) -> None:
        if start >= end:
            return
        if self.seqs and other.seqs[start] <= self.seqs[-1]:
            raise ValueError(f"sequence number {other.seqs[start]} is not above {self.seqs[-1]}")
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
