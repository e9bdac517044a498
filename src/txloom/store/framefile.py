"""Reading files made of CRC32-framed JSON: the WAL segments and the snapshot files.

A file is read in large chunks through the wire codec's ``FrameDecoder``, whose
``consumed`` counter gives each frame's offset; the scan stops at the first frame that is
cut short or fails its checksum, and says where and why, so that recovery can cut the
file there. ``salvage`` then looks past a damaged region for frames that are still whole.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

from txloom.store.directory import Volume
from txloom.wire.crcjson import FRAME_OVERHEAD, FrameDecoder, FrameTooLarge
from txloom.wire.errors import RemoteProtocolError

__all__ = ["READ_CHUNK", "FrameScanner", "salvage"]

#: Bytes read per ``pread`` while scanning (large enough to amortise the syscall).
READ_CHUNK = 1 << 20

_U32 = struct.Struct(">I")


class FrameScanner:
    """Iterate ``(offset, body)`` over the whole frames of a volume, from ``start``.

    After iteration, ``end`` is the offset just past the last whole frame and ``error``
    says why the scan stopped early (``None`` when the file ended on a frame boundary).
    ``stop_at(offset, reason)`` lets the caller end the scan at a frame it rejects for
    its own reasons (a body that is not a fact).
    """

    def __init__(self, volume: Volume, max_frame_size: int, start: int = 0) -> None:
        self.volume = volume
        self.max_frame_size = max_frame_size
        self.start = start
        self.end = start
        self.error: str | None = None

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        decoder = FrameDecoder(self.max_frame_size)
        size = self.volume.size
        position = self.start
        while True:
            try:
                while (body := decoder.next_frame()) is not None:
                    offset = self.start + decoder.consumed - len(body) - FRAME_OVERHEAD
                    self.end = self.start + decoder.consumed
                    yield offset, body
                    if self.error is not None:
                        return
            except FrameTooLarge as e:
                self.error = f"frame length {e.size} exceeds the limit of {e.limit}"
                return
            except RemoteProtocolError as e:
                self.error = str(e)
                return
            if position >= size:
                break
            chunk = self.volume.pread(position, min(READ_CHUNK, size - position))
            position += len(chunk)
            decoder.receive_data(chunk)
        if decoder.pending:
            self.error = f"{decoder.pending} bytes of an incomplete frame at the end"

    def stop_at(self, offset: int, reason: str) -> None:
        self.end = offset
        self.error = reason


def salvage(data: bytes, max_frame_size: int) -> list[bytes]:
    """Bodies of whole, checksummed frames found anywhere in ``data``.

    Used on the bytes cut from a damaged WAL: a frame in the middle may be bad while the
    ones after it are intact. A candidate position is accepted only if its length fits
    and its CRC-32 matches, which random bytes pass with a probability of 2**-32; the
    caller still checks that each body is a fact.
    """
    found: list[bytes] = []
    pos = 0
    end = len(data)
    while pos + FRAME_OVERHEAD <= end:
        (length,) = _U32.unpack_from(data, pos)
        stop = pos + 4 + length
        if length <= max_frame_size and stop + 4 <= end:
            body = data[pos + 4 : stop]
            (crc,) = _U32.unpack_from(data, stop)
            if zlib.crc32(body) & 0xFFFFFFFF == crc:
                found.append(body)
                pos = stop + 4
                continue
        pos += 1
    return found
