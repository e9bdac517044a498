"""CRC32-framed JSON: the store server's wire format and its write-ahead log format.

A frame is ``u32 BE length | body | u32 BE CRC-32 of body``; the body is one UTF-8 JSON
object. There is no magic and no version byte, so the only defences against a confused or
hostile peer are the length limit, the checksum and strict JSON parsing; all three are here.

``FrameDecoder`` yields raw bodies (the WAL reader needs them to keep byte offsets and to
skip JSON parsing when it only scans), ``ObjectDecoder`` yields parsed objects.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

from txloom.wire.errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "FRAME_OVERHEAD",
    "BadChecksum",
    "BadJSON",
    "CrcJsonError",
    "FrameDecoder",
    "FrameTooLarge",
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

#: Once this many consumed bytes sit at the front of the buffer, they are dropped. Smaller
#: values copy more often; larger ones keep more dead bytes alive.
_COMPACT_THRESHOLD = 64 * 1024

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
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8")
    except (TypeError, ValueError) as e:  # UnicodeEncodeError (lone surrogates) included
        raise LocalProtocolError(f"cannot encode as JSON: {e}") from e


def encode_object(obj: Mapping[str, Any], max_frame_size: int | None = None) -> bytes:
    """One framed JSON object, ready for the socket or the WAL."""
    return encode_frame(encode_body(obj), max_frame_size)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_decoder = json.JSONDecoder(parse_constant=_refuse_constant)


def decode_body(body: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Parse one frame body; raise ``BadJSON`` or ``NotAnObject`` if it is not an object."""
    try:
        text = bytes(body).decode("utf-8")
        value = _decoder.decode(text)
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


class FrameDecoder:
    """Incremental frame parser: feed any split of the byte stream, take whole bodies out.

    After an error the decoder is broken for good: the stream has no resynchronisation
    point, so every later call raises the same error.
    """

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        #: Bytes of whole frames handed out so far (the offset of the next frame).
        self.consumed = 0
        self._buffer = bytearray()
        self._pos = 0
        self._error: RemoteProtocolError | None = None

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a returned frame."""
        return len(self._buffer) - self._pos

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes from the peer; parsing happens in ``next_frame``."""
        if self._error is None:
            self._buffer += data

    def next_frame(self) -> bytes | None:
        """The next whole body, or ``None`` until more bytes arrive."""
        if self._error is not None:
            raise self._error
        buf = self._buffer
        pos = self._pos
        available = len(buf) - pos
        if available < 4:
            return None
        (size,) = _U32.unpack_from(buf, pos)
        if size > self.max_frame_size:
            self._error = FrameTooLarge(size, self.max_frame_size)
            raise self._error
        end = pos + 4 + size
        if len(buf) < end + 4:
            return None
        body = bytes(memoryview(buf)[pos + 4 : end])
        (expected,) = _U32.unpack_from(buf, end)
        actual = zlib.crc32(body) & 0xFFFFFFFF
        if actual != expected:
            self._error = BadChecksum(expected, actual)
            raise self._error
        self._pos = end + 4
        self.consumed += size + FRAME_OVERHEAD
        if self._pos >= _COMPACT_THRESHOLD:
            del buf[: self._pos]
            self._pos = 0
        return body

    def __iter__(self) -> Iterator[bytes]:
        """Every whole body buffered so far."""
        while (body := self.next_frame()) is not None:
            yield body


class ObjectDecoder:
    """Incremental decoder of framed JSON objects (what the store protocol reads)."""

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.frames = FrameDecoder(max_frame_size)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        self.frames.receive_data(data)

    def next_object(self) -> dict[str, Any] | None:
        """The next whole object, ``None`` until more bytes arrive; errors are raised."""
        body = self.frames.next_frame()
        if body is None:
            return None
        return decode_body(body)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while (obj := self.next_object()) is not None:
            yield obj
