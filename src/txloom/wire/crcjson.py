"""CRC32-framed JSON: the store server's wire format and its write-ahead log format.

A frame is ``u32 BE length | body | u32 BE CRC-32 of body``; the body is one UTF-8 JSON
object. There is no magic and no version byte, so the only defences against a confused or
hostile peer are the length limit, the checksum and strict JSON parsing; all three are here.

Both decoders have the shape of every txloom decoder (``txloom.wire.decoder``):
``receive_data``, then ``next_event``. ``FrameDecoder`` gives ``Frame`` events, raw bodies
(the WAL reader needs them to keep byte offsets and to skip JSON parsing when it only
scans); ``ObjectDecoder`` gives ``JSONObject`` events. Errors a peer can cause are
``RemoteProtocolError``s: ``FrameTooLarge`` (from the length prefix alone),
``BadChecksum``, ``BadJSON``, ``NotAnObject``, ``TruncatedFrame`` (a stream that ends
inside a frame).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from txloom.wire import strictjson
from txloom.wire.decoder import NEED_DATA, Decoder, ReceiveBuffer
from txloom.wire.errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "FRAME_OVERHEAD",
    "BadChecksum",
    "BadJSON",
    "CrcJsonError",
    "Frame",
    "FrameDecoder",
    "FrameTooLarge",
    "JSONObject",
    "NotAnObject",
    "ObjectDecoder",
    "decode_body",
    "encode_body",
    "encode_frame",
    "encode_object",
]

#: Largest body accepted by default (16 MiB), as the store spec requires.
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024

#: Bytes a frame adds around its body: the length prefix and the checksum.
FRAME_OVERHEAD = 8

_U32 = struct.Struct(">I")


class CrcJsonError(RemoteProtocolError):
    """Base of the errors a peer can cause in this format (other than ``FrameTooLarge``)."""


class BadChecksum(CrcJsonError):
    """The CRC-32 trailer does not match the body."""

    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"CRC mismatch: frame says {expected:#010x}, body has {actual:#010x}")
        self.expected = expected
        self.actual = actual


class BadJSON(CrcJsonError):
    """The body is not valid UTF-8 JSON (or nests deeper than the parser allows)."""


class NotAnObject(CrcJsonError):
    """The body is valid JSON but not an object."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"frame body is a JSON {kind}, not an object")
        self.kind = kind


def encode_frame(body: bytes, max_frame_size: int | None = None) -> bytes:
    """Wrap ``body`` in a length prefix and CRC-32 trailer."""
    size = len(body)
    if max_frame_size is not None and size > max_frame_size:
        raise LocalProtocolError(f"body of {size} bytes exceeds the limit of {max_frame_size}")
    if size > 0xFFFFFFFF:
        raise LocalProtocolError(f"body of {size} bytes does not fit a u32 length")
    return b"".join((_U32.pack(size), body, _U32.pack(zlib.crc32(body) & 0xFFFFFFFF)))


def encode_body(obj: Mapping[str, Any]) -> bytes:
    """Serialise ``obj`` as compact UTF-8 JSON; NaN and infinities are refused."""
    try:
        return strictjson.dump(obj)
    except (TypeError, ValueError) as e:  # UnicodeEncodeError (lone surrogates) included
        raise LocalProtocolError(f"cannot encode as JSON: {e}") from e


def encode_object(obj: Mapping[str, Any], max_frame_size: int | None = None) -> bytes:
    """One framed JSON object, ready for the socket or the WAL."""
    return encode_frame(encode_body(obj), max_frame_size)


def decode_body(body: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Parse one frame body; raise ``BadJSON`` or ``NotAnObject`` if it is not an object."""
    try:
        value = strictjson.parse(body if type(body) is bytes else bytes(body))
    except UnicodeDecodeError as e:
        raise BadJSON(f"body is not UTF-8: {e.reason} at byte {e.start}") from None
    except RecursionError:
        raise BadJSON("JSON nests too deeply") from None
    except ValueError as e:  # json.JSONDecodeError is a ValueError
        raise BadJSON(f"body is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise NotAnObject(_json_kind(value))
    return value


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number"


@dataclass(frozen=True, slots=True)
class Frame:
    """One whole, checksummed frame body (not parsed)."""

    body: bytes


@dataclass(frozen=True, slots=True)
class JSONObject:
    """One frame body parsed as a JSON object."""

    value: dict[str, Any]


class FrameDecoder(Decoder):
    """``Frame`` events from any split of the byte stream (see ``txloom.wire.decoder``).

    ``max_frame_size`` is checked on the length prefix, before the body is buffered; it
    may be raised or lowered between frames (the store server lets a connection send
    large frames only once it authenticated).
    """

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        super().__init__()
        self.max_frame_size = max_frame_size
        #: Bytes of whole frames handed out so far (the offset of the next frame).
        self.consumed = 0

    def _decode(self, buffer: ReceiveBuffer) -> Any:
        body = self._body(buffer)
        return NEED_DATA if body is None else Frame(body)

    def _body(self, buffer: ReceiveBuffer) -> bytes | None:
        head = buffer.unpack(_U32)
        if head is None:
            return None
        size = head[0]
        if size > self.max_frame_size:
            raise FrameTooLarge(size, self.max_frame_size)
        trailer = buffer.unpack(_U32, 4 + size)
        if trailer is None:
            return None
        body = buffer.take(size, skip=4)
        buffer.skip(4)
        actual = zlib.crc32(body) & 0xFFFFFFFF
        if actual != trailer[0]:
            raise BadChecksum(trailer[0], actual)
        self.consumed += size + FRAME_OVERHEAD
        return body

    def next_frame(self) -> bytes | None:
        """The next body itself, or None until more bytes arrive (or at a clean end)."""
        event = self.next_event()
        return event.body if isinstance(event, Frame) else None


class ObjectDecoder(FrameDecoder):
    """``JSONObject`` events: what the store protocol and its clients read."""

    def _decode(self, buffer: ReceiveBuffer) -> Any:
        body = self._body(buffer)
        return NEED_DATA if body is None else JSONObject(decode_body(body))

    def next_object(self) -> dict[str, Any] | None:
        """The next object itself, or None until more bytes arrive (or at a clean end).

        The store server reads every request through here: while the stream is open and
        well formed it skips the event object (same errors, same stickiness).
        """
        if self._error is None and not self._eof:
            try:
                body = self._body(self._buffer)
                return None if body is None else decode_body(body)
            except RemoteProtocolError as e:
                self._error = e
                raise
        event = self.next_event()
        return event.value if isinstance(event, JSONObject) else None
