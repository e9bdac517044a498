"""Length-prefixed framing without a checksum: ``length | payload``.

Reverse RPC frames use a u32 big-endian length, nested streams a u64 little-endian one;
both are this one decoder with a different prefix. (The store's CRC32 frames carry a
trailer and live in ``crcjson``.) The limit is checked as soon as the prefix is read, so a
peer announcing a huge frame costs nothing.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from txloom.wire.errors import FrameTooLarge, LocalProtocolError

__all__ = ["U32_BE", "U64_LE", "LengthPrefixDecoder", "encode_length_prefixed"]

#: The reverse-RPC stream transport's prefix.
U32_BE = struct.Struct(">I")
#: The nested-streams prefix.
U64_LE = struct.Struct("<Q")

_COMPACT_THRESHOLD = 64 * 1024


def encode_length_prefixed(prefix: struct.Struct, payload: bytes, max_size: int) -> bytes:
    """``prefix(len(payload)) + payload``; refuses payloads the peer would refuse."""
    if len(payload) > max_size:
        raise LocalProtocolError(f"payload of {len(payload)} bytes exceeds the limit of {max_size}")
    return prefix.pack(len(payload)) + payload


class LengthPrefixDecoder:
    """Incremental decoder: feed any split of the stream, take whole payloads out.

    ``in_frame`` tells whether bytes of an unfinished frame are buffered, which is how a
    transport tells a clean end of stream (close after a whole frame) from a cut one.
    """

    def __init__(self, prefix: struct.Struct, max_size: int) -> None:
        self.prefix = prefix
        self.max_size = max_size
        self._buffer = bytearray()
        self._pos = 0
        self._error: FrameTooLarge | None = None

    @property
    def in_frame(self) -> bool:
        """True if some bytes of a frame arrived but not all of it."""
        return len(self._buffer) > self._pos

    @property
    def pending(self) -> int:
        return len(self._buffer) - self._pos

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._error is None:
            self._buffer += data

    def next_payload(self) -> bytes | None:
        """The next whole payload, or ``None`` until more bytes arrive."""
        if self._error is not None:
            raise self._error
        buf, pos, head = self._buffer, self._pos, self.prefix.size
        if len(buf) - pos < head:
            return None
        (size,) = self.prefix.unpack_from(buf, pos)
        if size > self.max_size:
            self._error = FrameTooLarge(size, self.max_size)
            raise self._error
        end = pos + head + size
        if len(buf) < end:
            return None
        payload = bytes(memoryview(buf)[pos + head : end])
        self._pos = end
        if end >= _COMPACT_THRESHOLD:
            del buf[:end]
            self._pos = 0
        return payload

    def __iter__(self) -> Iterator[bytes]:
        while (payload := self.next_payload()) is not None:
            yield payload
