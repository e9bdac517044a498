"""What a store server knows of a JetStream-held store: every fact, in memory, by number.

JetStream keeps the facts; each server keeps a mirror of the stream so that replays,
pages and catch-up subscriptions are answered as the file backend answers them, without a
round trip per page. The mirror is fed in stream order (see ``JetStreamBackend``): log
facts, snapshot reservations (numbers a snapshot's new facts took) and snapshots. The
numbers are the stream's own; a number whose message was deleted, or that a snapshot
reserved and never committed, is simply never seen.

Plain data, no Twisted and no NATS: the backend calls it on the reactor thread; plans it
hands out hold their own lists, so a reader thread may read them while facts arrive.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from zope.interface import implementer

from txloom.interfaces import IReplayPlan

__all__ = ["BATCH_BYTES", "FactMirror", "MirrorPlan", "Stored"]

#: Bytes of fact bodies a plan hands out per batch.
BATCH_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Stored:
    """One fact as the mirror keeps it."""

    seq: int
    id: str | None
    store: str
    transaction_time: float
    body: bytes


@implementer(IReplayPlan)
class MirrorPlan:
    """A fixed list of ``(seq, body)`` pairs, taken from the mirror when it was made."""

    def __init__(self, facts: Sequence[Stored], next_seq: int, more: bool = False) -> None:
        self._facts: Sequence[Stored] | None = facts
        self.count = len(facts)
        self._size = sum(len(f.body) for f in facts)
        self.next = next_seq
        self.more = more

    def encoded_size(self) -> int:
        return self._size + max(0, self.count - 1)

    def numbered_batches(self) -> Iterator[list[tuple[int, bytes]]]:
        facts = self._facts or ()
        batch: list[tuple[int, bytes]] = []
        size = 0
        for fact in facts:
            batch.append((fact.seq, fact.body))
            size += len(fact.body)
            if size >= BATCH_BYTES:
                yield batch
                batch, size = [], 0
        if batch:
            yield batch

    def batches(self) -> Iterator[list[bytes]]:
        for batch in self.numbered_batches():
            yield [body for _seq, body in batch]

    def close(self) -> None:
        self._facts = None


class FactMirror:
    """Log facts and the current snapshot, as the store spec combines them for replay.

    A log fact whose id the snapshot holds is kept but hidden; a snapshot replaces the
    last one whole. ``visible`` is kept in number order (new numbers only ever come at the
    end); the replay order (transaction time, then number) is sorted when first asked for
    after a change that did not simply extend it.
    """

    def __init__(self) -> None:
        #: Highest stream number applied (log fact, reservation or snapshot fact).
        self.last_seq = 0
        self.log: dict[int, Stored] = {}
        self.log_ids: dict[str, int] = {}  # id -> lowest log number with that id
        self.snapshot: dict[int, Stored] = {}
        self.snapshot_ids: dict[str, int] = {}  # id -> its number in the snapshot
        self.snapshot_name: str | None = None
        self._visible_seqs: list[int] = []
        self._visible: dict[int, Stored] = {}
        self._time_order: list[Stored] | None = []

    # -- applying the stream ----------------------------------------------------------

    def add(self, fact: Stored) -> bool:
        """A log fact numbered above everything applied; True when replay shows it."""
        self.last_seq = fact.seq
        self.log[fact.seq] = fact
        if fact.id is not None:
            self.log_ids.setdefault(fact.id, fact.seq)
            if fact.id in self.snapshot_ids:
                return False
        self._show(fact)
        return True

    def skip(self, seq: int) -> None:
        """A number that holds no log fact (a snapshot's reservation)."""
        self.last_seq = max(self.last_seq, seq)

    def _show(self, fact: Stored) -> None:
        self._visible_seqs.append(fact.seq)
        self._visible[fact.seq] = fact
        order = self._time_order
        if order is not None and (not order or order[-1].transaction_time <= fact.transaction_time):
            order.append(fact)
        else:
            self._time_order = None

    def number_snapshot(
        self, facts: Iterable[tuple[bytes, Any]]
    ) -> list[tuple[int | None, bytes, Any]]:
        """Which facts of a new snapshot keep a number (an id the store holds already: its
        number in the current snapshot, else its first in the log) and which need a new
        one (``None``): ``(seq or None, body, meta)`` in the snapshot's order."""
        out: list[tuple[int | None, bytes, Any]] = []
        used: set[str] = set()
        for body, meta in facts:
            seq = None
            if meta.id is not None and meta.id not in used:
                used.add(meta.id)
                seq = self.snapshot_ids.get(meta.id)
                if seq is None:
                    seq = self.log_ids.get(meta.id)
            out.append((seq, body, meta))
        return out

    def install_snapshot(self, name: str, facts: Sequence[Stored]) -> None:
        """Replace the snapshot with ``facts`` (each numbered) and recompute what shows."""
        self.snapshot_name = name
        self.snapshot = {f.seq: f for f in facts}
        self.snapshot_ids = {f.id: f.seq for f in facts if f.id is not None}
        self._rebuild()

    def forget(self, seqs: Iterable[int]) -> None:
        """Log facts deleted from the stream (a compaction dropped what was hidden)."""
        for seq in seqs:
            fact = self.log.pop(seq, None)
            if fact is not None and fact.id is not None and self.log_ids.get(fact.id) == seq:
                rest = [s for s, f in self.log.items() if f.id == fact.id]
                if rest:
                    self.log_ids[fact.id] = min(rest)
                else:
                    del self.log_ids[fact.id]
        self._rebuild()

    def hidden(self) -> list[int]:
        """Numbers of the log facts the snapshot hides (what a compaction may delete)."""
        ids = self.snapshot_ids
        return [seq for seq, f in self.log.items() if f.id is not None and f.id in ids]

    def _rebuild(self) -> None:
        ids = self.snapshot_ids
        visible = dict(self.snapshot)
        for seq, fact in self.log.items():
            if fact.id is None or fact.id not in ids:
                visible[seq] = fact
        self._visible = visible
        self._visible_seqs = sorted(visible)
        self._time_order = None

    # -- reading ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._visible_seqs)

    def plan_replay(self) -> MirrorPlan:
        """Every visible fact by transaction time, then number (arrival)."""
        if self._time_order is None:
            self._time_order = sorted(
                self._visible.values(), key=lambda f: (f.transaction_time, f.seq)
            )
        return MirrorPlan(list(self._time_order), self.last_seq)

    def plan_page(
        self,
        since: int,
        stores: Iterable[str] | None,
        limit: int | None,
        budget: int,
        scan_limit: int | None = None,
    ) -> MirrorPlan:
        """Visible facts numbered above ``since`` in number order, within the limits."""
        wanted = None if stores is None else frozenset(stores)
        seqs = self._visible_seqs
        visible = self._visible
        start = bisect.bisect_right(seqs, since)
        taken: list[Stored] = []
        used = 0
        cursor = since
        more = False
        for scanned, i in enumerate(range(start, len(seqs))):
            if scan_limit is not None and scanned >= scan_limit:
                more = True
                break
            fact = visible[seqs[i]]
            if wanted is None or fact.store in wanted:
                size = len(fact.body) + 1
                if (limit is not None and len(taken) >= limit) or used + size > budget:
                    more = True
                    break
                taken.append(fact)
                used += size
            cursor = fact.seq
        if not more:
            cursor = max(cursor, self.last_seq)
        return MirrorPlan(taken, cursor, more)
