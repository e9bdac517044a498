"""The write-ahead log: segment files of framed facts, with positional sequence numbers.

Each segment is named after its *base*: ``wal-<base>.log`` holds the facts with sequence
numbers ``base+1, base+2, ...`` in file order, so a fact's number is stable across
restarts without being written into the fact (the segment bytes are exactly the frames the
reference server writes). A new segment is started whenever numbers are taken by
something other than an append (a snapshot's new facts, a compaction), which keeps the
positional rule exact.

Everything here blocks; the backend runs it on its writer thread. Group commit and fsync
policies live in ``txloom.store.backend``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.logger import Logger

from txloom.store.directory import Directory, Volume
from txloom.store.framefile import FrameScanner, salvage
from txloom.store.volumes import VolumeTable

__all__ = ["RecoveryReport", "Segment", "WriteAheadLog", "segment_name"]

_SEGMENT = re.compile(r"^wal-(\d{20})\.log$")


def segment_name(base: int) -> str:
    return f"wal-{base:020d}.log"


@dataclass
class Segment:
    base: int
    volume: Volume
    vol_id: int
    count: int = 0

    @property
    def last_seq(self) -> int:
        return self.base + self.count


@dataclass
class RecoveryReport:
    """What recovery found and did, for the start-up log line and for tests."""

    segments: int = 0
    frames: int = 0
    bytes: int = 0
    cut_bytes: int = 0
    side_files: list[str] = field(default_factory=list)
    salvaged: list[bytes] = field(default_factory=list)
    skipped_frames: int = 0
    removed_segments: int = 0


#: Called for each frame during recovery: ``(seq, vol_id, body_offset, body)``. Returns
#: False when the body is not a fact (the frame keeps its number and is skipped).
EntrySink = Callable[[int, int, int, bytes], bool]


class WriteAheadLog:
    log = Logger()

    def __init__(self, directory: Directory, volumes: VolumeTable, max_frame_size: int) -> None:
        self.directory = directory
        self.volumes = volumes
        self.max_frame_size = max_frame_size
        self.segments: list[Segment] = []
        # Set while the active segment may end in bytes of a failed append.
        self._dirty = False
        self._good_size = 0
        #: fsyncs of the log and the seconds they took (for the status site's metrics).
        self.syncs = 0
        self.sync_seconds = 0.0

    @property
    def active(self) -> Segment:
        return self.segments[-1]

    @property
    def next_seq(self) -> int:
        return self.active.last_seq + 1 if self.segments else 1

    @property
    def size(self) -> int:
        return sum(s.volume.size for s in self.segments)

    # -- recovery -----------------------------------------------------------------------

    def recover(self, sink: EntrySink, skip_through: int = 0) -> RecoveryReport:
        """Scan every segment, cut damaged tails, report every fact to ``sink``.

        Frames numbered ``<= skip_through`` are already in the compacted log (a crash
        came between writing it and removing the segments); they are not reported, and
        segments holding only such frames are removed now.
        """
        report = RecoveryReport()
        bases = sorted(int(m.group(1)) for n in self.directory.names() if (m := _SEGMENT.match(n)))
        previous_end = 0
        for base in bases:
            if base < previous_end:
                raise RuntimeError(
                    f"{segment_name(base)} overlaps the segment before it "
                    f"(which ends at sequence number {previous_end}); refusing to guess"
                )
            volume = self.directory.open(segment_name(base))
            segment = Segment(base, volume, self.volumes.add(volume))
            self._scan(segment, sink, skip_through, report)
            previous_end = segment.last_seq
            if segment.last_seq <= skip_through and base != bases[-1]:
                self.volumes.retire(segment.vol_id)
                self.directory.remove(volume.name)
                report.removed_segments += 1
                continue
            self.segments.append(segment)
            report.segments += 1
        if report.removed_segments or report.side_files:
            self.directory.sync()
        return report

    def _scan(
        self, segment: Segment, sink: EntrySink, skip_through: int, report: RecoveryReport
    ) -> None:
        scanner = FrameScanner(segment.volume, self.max_frame_size)
        for offset, body in scanner:
            segment.count += 1
            seq = segment.base + segment.count
            if seq <= skip_through:
                continue
            report.frames += 1
            if not sink(seq, segment.vol_id, offset + 4, body):
                report.skipped_frames += 1
        report.bytes += scanner.end
        if scanner.error is not None:
            self._cut(segment, scanner.end, scanner.error, report)

    def _cut(self, segment: Segment, at: int, reason: str, report: RecoveryReport) -> None:
        volume = segment.volume
        cut = volume.pread(at, volume.size - at)
        side = f"{volume.name}.torn-{int(time.time())}-{at}"
        self.directory.write_file(side, cut)
        volume.truncate(at)
        bodies = salvage(cut, self.max_frame_size)
        report.cut_bytes += len(cut)
        report.side_files.append(side)
        report.salvaged.extend(bodies)
        self.log.warn(
            "WAL {segment}: cut {count} bytes at offset {offset} ({reason}); "
            "kept in {side}; {found} intact frames found after the damage",
            segment=volume.name,
            count=len(cut),
            offset=at,
            reason=reason,
            side=side,
            found=len(bodies),
        )

    # -- writing ------------------------------------------------------------------------

    def start(self, next_seq: int) -> None:
        """Make the active segment the one whose next positional number is ``next_seq``."""
        if not self.segments or self.next_seq != next_seq:
            self.rotate(next_seq - 1)

    def append(self, frames: bytes, count: int, sync: bool = False) -> tuple[int, int]:
        """Write ``count`` whole frames at the end (and fsync them with ``sync``);
        ``(vol_id, offset)`` of the first.

        On failure the segment is cut back to where it was, so that no partial frame is
        left for later appends to hide behind; if even the cut fails (the disk is gone),
        the log stays *dirty* and ``restore`` must succeed before the next append.
        """
        if self._dirty:
            raise OSError("the log has unrepaired bytes at its end; restore() it first")
        segment = self.active
        volume = segment.volume
        before = volume.size
        try:
            offset = volume.append(frames)
            if sync:
                started = time.monotonic()
                volume.sync()
                self._synced(started)
        except BaseException:
            self._dirty = True
            self._good_size = before
            volume.truncate(before)
            self._dirty = False
            raise
        segment.count += count
        return segment.vol_id, offset

    def sync(self) -> None:
        if self.segments:
            started = time.monotonic()
            self.active.volume.sync()
            self._synced(started)

    def _synced(self, started: float) -> None:
        # read by the status site; written on the writer thread only
        self.syncs += 1
        self.sync_seconds += time.monotonic() - started

    def restore(self) -> None:
        """After a failed write: cut the active segment back to its last whole frame and
        make it durable; raises while the disk still refuses.

        An fsync that failed may have dropped pages the kernel never wrote, so the bytes
        before the cut are synced again too, before the log takes new appends.
        """
        if not self.segments:
            return
        volume = self.active.volume
        if self._dirty:
            volume.truncate(self._good_size)
            self._dirty = False
        volume.sync()
        self.directory.sync()

    def rotate(self, base: int) -> None:
        """Start ``wal-<base>.log``; earlier segments become read-only."""
        if self.segments:
            if self.active.count == 0 and self.active.base == base:
                return
            self.active.volume.sync()
            if self.active.count == 0:  # an empty segment says nothing: drop it
                empty = self.segments.pop()
                self.volumes.retire(empty.vol_id)
                self.directory.remove(empty.volume.name)
        volume = self.directory.open(segment_name(base), create=True)
        if volume.size:
            volume.release()
            raise RuntimeError(f"{segment_name(base)} exists and is not empty")
        self.segments.append(Segment(base, volume, self.volumes.add(volume)))
        self.directory.sync()

    def drop_through(self, seq: int) -> int:
        """Remove the read-only segments whose facts are all numbered ``<= seq``."""
        keep = []
        removed = 0
        for segment in self.segments:
            if segment is not self.active and segment.last_seq <= seq:
                self.volumes.retire(segment.vol_id)
                self.directory.remove(segment.volume.name)
                removed += 1
            else:
                keep.append(segment)
        self.segments = keep
        if removed:
            self.directory.sync()
        return removed

    def close(self) -> None:
        if self.segments:
            self.active.volume.sync()
        for segment in self.segments:
            self.volumes.retire(segment.vol_id)
        self.segments = []
