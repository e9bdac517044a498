"""Snapshot files: facts with explicit sequence numbers, written atomically.

Two files use this format. ``snapshot.dat`` holds the facts of the last ``write_snapshot``
(they hide log facts with the same id, as the spec says). ``log-<through>.dat`` holds the
log facts a ``compact`` folded out of the WAL segments, numbered up to ``through``. Both
are a header frame then one frame per fact, ``{"seq":N,"fact":F}``; the fact is written
last so that its bytes can be sliced out of the frame and replayed without parsing.

Files are written to a temporary name, fsynced, renamed and the directory fsynced
(``Directory.replace``), so a crash leaves the old file or the new one, never a mix.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from txloom.store.directory import Directory, Volume
from txloom.store.framefile import FrameScanner
from txloom.store.threads import let_others_run
from txloom.wire.crcjson import BadJSON, NotAnObject, decode_body, encode_frame

__all__ = [
    "SNAPSHOT_NAME",
    "EntryFile",
    "EntryFileError",
    "log_name",
    "parse_log_name",
    "read_entries",
    "write_entries",
]

SNAPSHOT_NAME = "snapshot.dat"
SNAPSHOT_KIND = "snapshot"
LOG_KIND = "log"
FORMAT_VERSION = 1

_LOG_NAME = re.compile(r"^log-(\d{20})\.dat$")
_ENTRY = re.compile(rb'\{"seq":(\d+),"fact":')


def log_name(through: int) -> str:
    return f"log-{through:020d}.dat"


def parse_log_name(name: str) -> int | None:
    m = _LOG_NAME.match(name)
    return int(m.group(1)) if m else None


class EntryFileError(Exception):
    """The file is damaged or not one of ours; ``entries`` says how many were good."""

    def __init__(self, name: str, reason: str, entries: int) -> None:
        super().__init__(f"{name}: {reason} (after {entries} good entries)")
        self.reason = reason
        self.entries = entries


@dataclass
class EntryFile:
    """A snapshot file as written: where each fact's bytes are.

    Typed arrays rather than lists: a compacted log holds a million entries, and a
    million int objects take tens of milliseconds to free, holding the interpreter lock.
    """

    volume: Volume
    seqs: array = field(default_factory=lambda: array("q"))
    offsets: array = field(default_factory=lambda: array("q"))
    sizes: array = field(default_factory=lambda: array("q"))


def _header(kind: str, count: int, through: int) -> bytes:
    return b'{"txloom":"%s","version":%d,"count":%d,"through":%d}' % (
        kind.encode(),
        FORMAT_VERSION,
        count,
        through,
    )


def log_entry_header(count: int, through: int) -> bytes:
    """The header body of a compacted log of ``count`` facts numbered up to ``through``."""
    return _header(LOG_KIND, count, through)


def write_entries(
    directory: Directory,
    name: str,
    kind: str,
    entries: Iterable[tuple[int, bytes]],
    *,
    count: int,
    through: int = 0,
) -> EntryFile:
    """Write ``count`` ``(seq, fact_body)`` pairs atomically as ``name``."""
    seqs = array("q")
    offsets = array("q")
    sizes = array("q")

    def chunks() -> Iterator[bytes]:
        header = encode_frame(_header(kind, count, through))
        position = len(header)
        yield header
        written = 0
        for seq, body in entries:
            prefix = b'{"seq":%d,"fact":' % seq
            frame = encode_frame(prefix + body + b"}")
            seqs.append(seq)
            offsets.append(position + 4 + len(prefix))
            sizes.append(len(body))
            position += len(frame)
            written += 1
            yield frame
            if written % 256 == 0:
                let_others_run()  # a large file is written beside the reactor
        if written != count:
            raise ValueError(f"{name}: {written} entries given, {count} announced")

    volume = directory.replace(name, chunks())
    return EntryFile(volume, seqs, offsets, sizes)


def read_entries(
    volume: Volume, kind: str, max_frame_size: int
) -> Iterator[tuple[int, int, int, bytes]]:
    """``(seq, fact_offset, fact_size, fact_body)`` for each entry, in file order.

    Raises ``EntryFileError`` at the point the file stops making sense (damaged frame,
    wrong header, fewer entries than announced); entries yielded before it were whole.
    """
    scanner = FrameScanner(volume, max_frame_size)
    frames = iter(scanner)
    first = next(frames, None)
    if first is None:
        raise EntryFileError(volume.name, scanner.error or "empty file", 0)
    try:
        header = decode_body(first[1])
    except (BadJSON, NotAnObject) as e:
        raise EntryFileError(volume.name, f"bad header: {e}", 0) from None
    if header.get("txloom") != kind or header.get("version") != FORMAT_VERSION:
        raise EntryFileError(volume.name, f"not a version {FORMAT_VERSION} {kind} file", 0)
    count = header.get("count")
    if not isinstance(count, int):
        raise EntryFileError(volume.name, "header has no count", 0)
    seen = 0
    for offset, body in frames:
        m = _ENTRY.match(body)
        if m is None or not body.endswith(b"}"):
            raise EntryFileError(volume.name, f"entry at offset {offset} is malformed", seen)
        seen += 1
        start = m.end()
        yield int(m.group(1)), offset + 4 + start, len(body) - start - 1, body[start:-1]
    if scanner.error is not None:
        raise EntryFileError(volume.name, scanner.error, seen)
    if seen != count:
        raise EntryFileError(volume.name, f"{seen} entries, header announces {count}", seen)
