"""Building the fact index from the files: at start-up, and again after a snapshot.

The visible facts are the snapshot's, plus every log fact (compacted log, then WAL
segments) whose id the snapshot does not hold. Loading reads each file once, front to
back, peeking at three fields per fact; it never holds the facts themselves.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from twisted.logger import Logger

from txloom.store.directory import Directory, Volume
from txloom.store.fact import FactMeta, InvalidFact, peek_fact, peek_fields
from txloom.store.framefile import FrameScanner
from txloom.store.index import FactIndex
from txloom.store.snapshot import (
    LOG_KIND,
    SNAPSHOT_KIND,
    SNAPSHOT_NAME,
    EntryFileError,
    parse_log_name,
    read_entries,
)
from txloom.store.threads import let_others_run
from txloom.store.volumes import VolumeTable
from txloom.store.wal import RecoveryReport, WriteAheadLog
from txloom.wire.crcjson import encode_frame

__all__ = ["IndexBuilder", "LoadedStore", "SnapshotRow", "load_store", "scan_log"]

log = Logger(namespace="txloom.store.loader")

#: ``(seq, vol, offset, size, transaction_time, store)`` of one snapshot fact.
SnapshotRow = tuple[int, int, int, int, float, str]


class IndexBuilder:
    """Collects log facts into an index, leaving out those a snapshot hides."""

    def __init__(self, hidden: frozenset[str] | set[str], wanted: Iterable[str] = ()) -> None:
        self.index = index = FactIndex()
        self.hidden = hidden
        self.wanted = set(wanted)
        #: First sequence number seen for each wanted id.
        self.found: dict[str, int] = {}
        self.max_seq = 0
        self.invalid = 0
        # Facts come in sequence order, so rows can go straight onto the columns; this
        # runs once per fact at start-up, hence the bound methods.
        self._columns = (
            index.seqs.append,
            index.vols.append,
            index.offsets.append,
            index.sizes.append,
            index.times.append,
            index.stores.append,
        )
        self._store_ids = index._store_ids

    def add(self, seq: int, vol: int, offset: int, body: bytes) -> bool:
        if seq > self.max_seq:  # noqa: PLR1730 - max() costs a call per fact
            self.max_seq = seq
        try:
            fact_id, store, transaction_time = peek_fields(body)
        except InvalidFact:
            self.invalid += 1
            return False
        if fact_id is not None:
            if fact_id in self.wanted and fact_id not in self.found:
                self.found[fact_id] = seq
            if fact_id in self.hidden:
                return True
        store_id = self._store_ids.get(store)
        if store_id is None:
            store_id = self.index.store_id(store)
        add_seq, add_vol, add_offset, add_size, add_time, add_store = self._columns
        add_seq(seq)
        add_vol(vol)
        add_offset(offset)
        add_size(len(body))
        add_time(transaction_time)
        add_store(store_id)
        return True

    def add_meta(self, seq: int, vol: int, offset: int, size: int, meta: FactMeta) -> None:
        """A fact known without reading it (a commit seen as it happened)."""
        self.max_seq = max(self.max_seq, seq)
        fact_id = meta.id
        if fact_id is not None:
            if fact_id in self.wanted and fact_id not in self.found:
                self.found[fact_id] = seq
            if fact_id in self.hidden:
                return
        add_seq, add_vol, add_offset, add_size, add_time, add_store = self._columns
        add_seq(seq)
        add_vol(vol)
        add_offset(offset)
        add_size(size)
        add_time(meta.transaction_time)
        add_store(self.index.store_id(meta.store))

    def finish(self) -> FactIndex:
        """The index, with its totals computed."""
        self.index.recount()
        return self.index


@dataclass
class LoadedStore:
    """Everything the backend needs after loading."""

    index: FactIndex
    next_seq: int
    snapshot_vol: int | None = None
    snapshot_ids: frozenset[str] = frozenset()
    snapshot_rows: int = 0
    log_vol: int | None = None
    log_through: int = 0
    report: RecoveryReport = field(default_factory=RecoveryReport)
    seconds: float = 0.0
    invalid: int = 0


def read_snapshot(
    volume: Volume, vol: int, max_frame_size: int
) -> tuple[list[SnapshotRow], set[str]]:
    """Rows and ids of a snapshot file; ``EntryFileError`` if it is damaged."""
    rows: list[SnapshotRow] = []
    ids: set[str] = set()
    for seq, offset, size, body in read_entries(volume, SNAPSHOT_KIND, max_frame_size):
        try:
            meta = peek_fact(body)
        except InvalidFact as e:
            raise EntryFileError(volume.name, f"entry {seq} is not a fact: {e}", len(rows)) from e
        rows.append((seq, vol, offset, size, meta.transaction_time, meta.store))
        if meta.id is not None:
            ids.add(meta.id)
    rows.sort()
    return rows, ids


def scan_log(  # noqa: PLR0917 - the log's parts, as the caller saw them at its cut
    volumes: Mapping[int, Volume],
    log_vol: int | None,
    segments: Iterable[tuple[int, int]],
    builder: IndexBuilder,
    max_frame_size: int,
    through: int,
) -> None:
    """Feed every log fact numbered up to ``through`` to ``builder``: the compacted log,
    then the WAL segments given as ``(base, vol)``. The active segment may be growing
    meanwhile; what lies past ``through`` is not read."""
    if log_vol is not None:
        volume = volumes[log_vol]
        for seq, offset, _size, body in read_entries(volume, LOG_KIND, max_frame_size):
            if seq > through:
                return
            builder.add(seq, log_vol, offset, body)
            if seq % 128 == 0:
                let_others_run()  # this runs beside the reactor and the writer
    for base, vol in segments:
        if base >= through:
            return
        seq = base
        scanner = FrameScanner(volumes[vol], max_frame_size)
        for offset, body in scanner:
            seq += 1
            builder.add(seq, vol, offset + 4, body)
            if seq >= through:
                return
            if seq % 128 == 0:
                let_others_run()
        if scanner.error is not None:
            raise EntryFileError(volumes[vol].name, scanner.error, seq - base)


def load_store(
    directory: Directory, volumes: VolumeTable, wal: WriteAheadLog, max_frame_size: int
) -> LoadedStore:
    """Recover the WAL, read the snapshot files and build the index (blocking)."""
    started = time.monotonic()
    names = directory.names()

    snapshot_rows: list[SnapshotRow] = []
    snapshot_ids: set[str] = set()
    snapshot_vol = None
    if SNAPSHOT_NAME in names:
        volume = directory.open(SNAPSHOT_NAME)
        vol = volumes.add(volume)
        try:
            snapshot_rows, snapshot_ids = read_snapshot(volume, vol, max_frame_size)
            snapshot_vol = vol
        except EntryFileError as e:
            volumes.retire(vol)
            aside = f"{SNAPSHOT_NAME}.refused-{int(time.time())}"
            directory.rename(SNAPSHOT_NAME, aside)
            directory.sync()
            log.error(
                "snapshot refused ({reason}); renamed to {aside}; replay uses the log alone",
                reason=str(e),
                aside=aside,
            )

    builder = IndexBuilder(frozenset(snapshot_ids))
    log_vol = None
    log_through = 0
    logs = sorted((t, n) for n in names if (t := parse_log_name(n)) is not None)
    for _through, name in logs[:-1]:  # superseded by a later compaction that finished
        directory.remove(name)
    if logs:
        log_through, name = logs[-1]
        volume = directory.open(name)
        log_vol = volumes.add(volume)
        try:
            for seq, offset, _size, body in read_entries(volume, LOG_KIND, max_frame_size):
                builder.add(seq, log_vol, offset, body)
        except EntryFileError as e:
            log.critical(
                "compacted log damaged: {reason}; the facts after the damage are lost",
                reason=str(e),
            )
        builder.max_seq = max(builder.max_seq, log_through)

    report = wal.recover(builder.add, skip_through=log_through)
    last = max(
        builder.max_seq,
        wal.next_seq - 1,
        log_through,
        snapshot_rows[-1][0] if snapshot_rows else 0,
    )
    wal.start(last + 1)
    if report.salvaged:
        # Intact facts found behind a damaged frame: written again at the end, with new
        # numbers, so that they are readable and survive the next recovery.
        frames = [encode_frame(body) for body in report.salvaged]
        vol, offset = wal.append(b"".join(frames), len(frames))
        wal.sync()
        for body, frame in zip(report.salvaged, frames, strict=True):
            last += 1
            builder.add(last, vol, offset + 4, body)
            offset += len(frame)
    index = builder.finish()
    if snapshot_rows:
        index = index.merged(snapshot_rows)
    index.time_order()  # sort now, on this thread, rather than at the first replay
    return LoadedStore(
        index=index,
        next_seq=last + 1,
        snapshot_vol=snapshot_vol,
        snapshot_ids=frozenset(snapshot_ids),
        snapshot_rows=len(snapshot_rows),
        log_vol=log_vol,
        log_through=log_through,
        report=report,
        seconds=time.monotonic() - started,
        invalid=builder.invalid,
    )
