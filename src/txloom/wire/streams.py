"""Nested streams: ``u64 LE length | payload`` frames, optional LZ4 per source, and the
small CBOR control messages that open a master connection and attach a channel.

The control messages are txloom's own (the model leaves them unspecified) and carry a
version number ``v`` so that they can grow without breaking older peers:

- ``Hello`` — the first frame a client sends on a master connection: the service address
  and the request tags (``bucket`` selects an endpoint by consistent hashing).
- ``Announce`` — the second frame of each source on the master connection (the first is the
  source's header, raw): the opaque channel token and whether the source is compressed.
- ``Attach`` — the first frame a client sends on a descendant connection.

Compression fixes two defects of the model: an incompressible payload is sent raw (never as
an empty block), and a raw payload that happens to begin with the marker is always sent
compressed, so the marker is never ambiguous on a compressed source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cbor2
import lz4.block

from txloom.wire.errors import LocalProtocolError, RemoteProtocolError
from txloom.wire.framing import U64_LE, LengthPrefixDecoder, encode_length_prefixed

__all__ = [
    "CONTROL_VERSION",
    "DEFAULT_FRAME_SIZE_LIMIT",
    "LZ4_MARKER",
    "MIN_COMPRESS_SIZE",
    "Announce",
    "Attach",
    "BadCompression",
    "Hello",
    "InvalidControl",
    "StreamFrameDecoder",
    "compress_payload",
    "decode_control",
    "decompress_payload",
    "encode_control",
    "encode_frame",
]

#: Largest frame payload by default (the model's ``FrameSizeLimit``): 100 MiB.
DEFAULT_FRAME_SIZE_LIMIT = 100 * 1024 * 1024
#: Prefix of a compressed payload, followed by the u64 LE uncompressed length.
LZ4_MARKER = b"lz4!"
#: Payloads of this many bytes or fewer are never compressed (the header alone is 12).
MIN_COMPRESS_SIZE = 12
#: Version of the control messages this module writes.
CONTROL_VERSION = 1
#: Largest control message accepted (they are small by design).
MAX_CONTROL_SIZE = 64 * 1024

_HEADER = len(LZ4_MARKER) + U64_LE.size


class BadCompression(RemoteProtocolError):
    """A compressed payload that does not decompress to its announced length."""


class InvalidControl(RemoteProtocolError):
    """A control frame that is not a well-formed hello, announce or attach."""


def encode_frame(payload: bytes, limit: int = DEFAULT_FRAME_SIZE_LIMIT) -> bytes:
    return encode_length_prefixed(U64_LE, payload, limit)


class StreamFrameDecoder(LengthPrefixDecoder):
    """``Frame`` events out of a master or descendant connection.

    A connection cut inside a frame raises ``TruncatedFrame`` once ``receive_eof()``
    reports the close: a cut payload is an error, never a clean end (a defect of the model).
    """

    def __init__(self, limit: int = DEFAULT_FRAME_SIZE_LIMIT) -> None:
        super().__init__(U64_LE, limit)


def compress_payload(payload: bytes) -> bytes:
    """The form of ``payload`` to send on a compressed source."""
    if len(payload) <= MIN_COMPRESS_SIZE and not payload.startswith(LZ4_MARKER):
        return payload
    block = lz4.block.compress(payload, store_size=False)
    packed = LZ4_MARKER + U64_LE.pack(len(payload)) + block
    if len(packed) < len(payload) or payload.startswith(LZ4_MARKER):
        return packed
    return payload


def decompress_payload(payload: bytes, limit: int = DEFAULT_FRAME_SIZE_LIMIT) -> bytes:
    """The original bytes of a payload received on a compressed source."""
    if not payload.startswith(LZ4_MARKER):
        return payload
    if len(payload) < _HEADER:
        raise BadCompression("compressed payload shorter than its header")
    (size,) = U64_LE.unpack_from(payload, len(LZ4_MARKER))
    if size > 2 * limit:
        raise BadCompression(f"uncompressed length {size} exceeds twice the frame limit {limit}")
    try:
        out = lz4.block.decompress(payload[_HEADER:], uncompressed_size=size)
    except (lz4.block.LZ4BlockError, ValueError, MemoryError) as e:
        raise BadCompression(f"LZ4 block does not decompress: {e}") from None
    if len(out) != size:
        raise BadCompression(f"LZ4 block gave {len(out)} bytes, header said {size}")
    return out


@dataclass(frozen=True, slots=True)
class Hello:
    service: str
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Announce:
    channel: bytes
    compressed: bool = False


@dataclass(frozen=True, slots=True)
class Attach:
    channel: bytes


def encode_control(msg: Hello | Announce | Attach) -> bytes:
    """A control message as a CBOR map (to be sent as one frame)."""
    if isinstance(msg, Hello):
        body: dict[str, Any] = {"v": CONTROL_VERSION, "hello": msg.service, "tags": msg.tags}
    elif isinstance(msg, Announce):
        body = {"v": CONTROL_VERSION, "channel": msg.channel, "lz4": msg.compressed}
    elif isinstance(msg, Attach):
        body = {"v": CONTROL_VERSION, "attach": msg.channel}
    else:
        raise LocalProtocolError(f"not a control message: {msg!r}")
    return cbor2.dumps(body)


def decode_control(payload: bytes) -> Hello | Announce | Attach:
    """Parse a control frame; newer versions are read as far as this one understands."""
    if len(payload) > MAX_CONTROL_SIZE:
        raise InvalidControl(f"control frame of {len(payload)} bytes is too large")
    try:
        obj = cbor2.loads(payload)
    except RecursionError:
        raise InvalidControl("control frame nests too deeply") from None
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, MemoryError) as e:
        raise InvalidControl(f"control frame is not CBOR: {e}") from None
    if not isinstance(obj, dict):
        raise InvalidControl("control frame is not a map")
    version = obj.get("v")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidControl("control frame has no valid version")
    if isinstance(obj.get("hello"), str):
        tags = obj.get("tags", {})
        if not isinstance(tags, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
        ):
            raise InvalidControl("hello tags must map strings to strings")
        return Hello(obj["hello"], dict(tags))
    if isinstance(obj.get("channel"), bytes):
        return Announce(obj["channel"], obj.get("lz4") is True)
    if isinstance(obj.get("attach"), bytes):
        return Attach(obj["attach"])
    raise InvalidControl("control frame is neither hello, announce nor attach")
