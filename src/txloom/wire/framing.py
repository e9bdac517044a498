"""Length-prefixed framing without a checksum: ``length | payload``.

Reverse RPC frames use a u32 big-endian length, nested streams a u64 little-endian one;
both are this one decoder with a different prefix. (The store's CRC32 frames carry a
trailer and live in ``crcjson``.) The limit is checked as soon as the prefix is read, so a
peer announcing a huge frame costs nothing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from txloom.wire.decoder import NEED_DATA, Decoder, NeedData, ReceiveBuffer
from txloom.wire.errors import FrameTooLarge, LocalProtocolError

__all__ = ["U32_BE", "U64_LE", "Frame", "LengthPrefixDecoder", "encode_length_prefixed"]

#: The reverse-RPC stream transport's prefix.
U32_BE = struct.Struct(">I")
#: The nested-streams prefix.
U64_LE = struct.Struct("<Q")


def encode_length_prefixed(prefix: struct.Struct, payload: bytes, max_size: int) -> bytes:
    """``prefix(len(payload)) + payload``; refuses payloads the peer would refuse."""
    if len(payload) > max_size:
        raise LocalProtocolError(f"payload of {len(payload)} bytes exceeds the limit of {max_size}")
    return prefix.pack(len(payload)) + payload


@dataclass(frozen=True, slots=True)
class Frame:
    """One whole payload."""

    payload: bytes


class LengthPrefixDecoder(Decoder):
    """``Frame`` events out of any split of the stream (see ``txloom.wire.decoder``).

    Subclasses that give the payload a meaning override ``_event(payload)``.
    """

    def __init__(self, prefix: struct.Struct, max_size: int) -> None:
        super().__init__()
        self.prefix = prefix
        self.max_size = max_size

    def _decode(self, buffer: ReceiveBuffer) -> object:
        payload = self._payload(buffer)
        if payload is None:
            return NEED_DATA
        return self._event(payload)

    def _event(self, payload: bytes) -> object:
        return Frame(payload)

    def _payload(self, buffer: ReceiveBuffer) -> bytes | None:
        head = buffer.unpack(self.prefix)
        if head is None:
            return None
        size = head[0]
        if size > self.max_size:
            raise FrameTooLarge(size, self.max_size)
        if len(buffer) < self.prefix.size + size:
            return None
        return buffer.take(size, skip=self.prefix.size)

    def next_payload(self) -> bytes | NeedData:
        """The next payload itself, for callers that want bytes rather than ``Frame``."""
        event = self.next_event()
        return event.payload if isinstance(event, Frame) else event
