"""Nested streams: ``u64 LE length | payload`` frames, optional LZ4 per source, and the
small CBOR control messages that open a master connection and attach a channel.

The control messages are txloom's own (the model leaves them unspecified) and carry a
version number ``v`` so that they can grow without breaking older peers:

- ``Hello`` — the first frame a client sends on a master connection: the service address
  and the request tags (``bucket`` selects an endpoint by consistent hashing).
- ``Announce`` — the second frame of each source on the master connection (the first is the
  source's header, raw): the opaque channel token and whether the source is compressed.
- ``Attach`` — the first frame a client sends on a descendant connection.
- ``End`` — the last thing on a master that served its request (after an empty header
  frame); a master closed without it was cut, and the client says so.
- ``Accepted`` / ``Refuse`` — the server's first frame on a descendant connection (so that a
  refused attach is never mistaken for an empty source); ``Refuse`` also ends a master whose
  request cannot be served (with an empty header frame in front, keeping frames in pairs).

``Hello`` and ``Attach`` carry the optional shared token; channel tokens are random and
single-use, so a token seen on the wire is worth nothing once attached.

Three sans-I/O state machines read the connections: ``ServerConnectionDecoder`` (what a
server receives: hello + body, or attach), ``MasterDecoder`` (the client's master: sources
announced) and ``ChannelDecoder`` (the client's channel: frames, decompressed).

Compression fixes two defects of the model: an incompressible payload is sent raw (never as
an empty block), and a raw payload that happens to begin with the marker is always sent
compressed, so the marker is never ambiguous on a compressed source.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import cbor2
import lz4.block

from txloom.wire.decoder import NEED_DATA, ConnectionClosed, ReceiveBuffer
from txloom.wire.errors import LocalProtocolError, RemoteProtocolError, TruncatedFrame
from txloom.wire.framing import U64_LE, Frame, LengthPrefixDecoder, encode_length_prefixed

__all__ = [
    "ABORT_MARK",
    "CONTROL_VERSION",
    "DEFAULT_FRAME_SIZE_LIMIT",
    "DEFAULT_MAX_SOURCES",
    "LARGE_FRAME",
    "LZ4_MARKER",
    "MIN_COMPRESS_SIZE",
    "Accepted",
    "Announce",
    "Attach",
    "BadCompression",
    "ChannelDecoder",
    "End",
    "Frame",
    "Hello",
    "InvalidControl",
    "MasterClosedEarly",
    "MasterDecoder",
    "Refuse",
    "Request",
    "ServerConnectionDecoder",
    "SourceAborted",
    "SourceAnnounced",
    "StreamFrameDecoder",
    "TooManySources",
    "UnexpectedFrame",
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


# -- control messages ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """Client -> server, first frame of a master connection (the request body follows)."""

    service: str
    tags: dict[str, str] = field(default_factory=dict)
    token: bytes | None = None


@dataclass(frozen=True, slots=True)
class Announce:
    """Server -> client on the master, after a source's header frame."""

    channel: bytes
    compressed: bool = False


@dataclass(frozen=True, slots=True)
class Attach:
    """Client -> server, first (and only) frame of a descendant connection."""

    channel: bytes
    token: bytes | None = None


@dataclass(frozen=True, slots=True)
class Accepted:
    """Server -> client, first frame of a descendant connection: the source's frames follow."""


@dataclass(frozen=True, slots=True)
class Refuse:
    """Server -> client: the request (on the master) or the attach (on a channel) is refused.

    On the master it takes the place of an ``Announce`` (its header frame is empty) and is
    the last thing sent; the reason is one line for the client's error.
    """

    reason: str


@dataclass(frozen=True, slots=True)
class End:
    """Server -> client, last on a master after its last source (its header frame is empty).

    A master that closes without ``End`` or ``Refuse`` was cut (a crashed server, a TLS
    mismatch), which the client reports instead of taking it for "no more sources".
    """


Control = Hello | Announce | Attach | Accepted | Refuse | End


def encode_control(msg: Control) -> bytes:
    """A control message as a CBOR map (to be sent as one frame)."""
    body: dict[str, Any] = {"v": CONTROL_VERSION}
    if isinstance(msg, Hello):
        body.update(hello=msg.service, tags=msg.tags)
        if msg.token is not None:
            body["token"] = msg.token
    elif isinstance(msg, Announce):
        body.update(channel=msg.channel, lz4=msg.compressed)
    elif isinstance(msg, Attach):
        body["attach"] = msg.channel
        if msg.token is not None:
            body["token"] = msg.token
    elif isinstance(msg, Accepted):
        body["accepted"] = True
    elif isinstance(msg, Refuse):
        body["refuse"] = msg.reason
    elif isinstance(msg, End):
        body["end"] = True
    else:
        raise LocalProtocolError(f"not a control message: {msg!r}")
    return cbor2.dumps(body)


def _token(obj: dict[Any, Any]) -> bytes | None:
    token = obj.get("token")
    if token is not None and not isinstance(token, bytes):
        raise InvalidControl("token must be bytes")
    return token


def decode_control(payload: bytes) -> Control:
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
        return Hello(obj["hello"], dict(tags), _token(obj))
    if isinstance(obj.get("channel"), bytes):
        return Announce(obj["channel"], obj.get("lz4") is True)
    if isinstance(obj.get("attach"), bytes):
        return Attach(obj["attach"], _token(obj))
    if obj.get("accepted") is True:
        return Accepted()
    if isinstance(obj.get("refuse"), str):
        return Refuse(obj["refuse"])
    if obj.get("end") is True:
        return End()
    raise InvalidControl("control frame is not a known control message")


# -- connection state machines -------------------------------------------------------------

#: Length a server writes, then closes, when a source fails mid-stream: over any limit, so a
#: peer that does not know it still sees an error; a txloom client names it.
ABORT_LENGTH = 2**64 - 1
ABORT_MARK = U64_LE.pack(ABORT_LENGTH)
#: Frames at least this large are handled whole: a receiver gathers one from its reads (or
#: reads it in one piece, see ``ChannelDecoder.read_hint``), a sender writes it on its own.
LARGE_FRAME = 256 * 1024
#: Largest read ``ChannelDecoder.read_hint`` asks for (a bigger frame takes several).
MAX_READ_HINT = 16 * 1024 * 1024
#: Default most sources one request may announce (server and client).
DEFAULT_MAX_SOURCES = 100_000


class TooManySources(RemoteProtocolError):
    """The server announced more sources than the client accepts for one request."""


class UnexpectedFrame(RemoteProtocolError):
    """A frame where the connection's state allows none (or not this one)."""


class SourceAborted(RemoteProtocolError):
    """The server's source failed mid-stream (it wrote the abort mark and closed)."""


@dataclass(frozen=True, slots=True)
class Request:
    """Server side of a master: the request body (after the ``Hello`` event)."""

    body: bytes


@dataclass(frozen=True, slots=True)
class SourceAnnounced:
    """Client side of a master: one source, its header and where to attach."""

    header: bytes
    channel: bytes
    compressed: bool


class ServerConnectionDecoder(LengthPrefixDecoder):
    """What a client sends to a stream server, on either kind of connection.

    The first frame (a control frame, at most ``MAX_CONTROL_SIZE``) decides: ``Hello`` makes
    the connection a master, whose second frame is the ``Request`` body (at most
    ``max_frame_size``); ``Attach`` makes it a descendant channel. Nothing else may follow:
    one request per master connection, one source per channel.
    """

    def __init__(self, max_frame_size: int = DEFAULT_FRAME_SIZE_LIMIT) -> None:
        super().__init__(U64_LE, MAX_CONTROL_SIZE)
        self.max_frame_size = max_frame_size
        self._state = "first"

    def _event(self, payload: bytes) -> object:
        if self._state == "first":
            msg = decode_control(payload)
            if isinstance(msg, Hello):
                self._state, self.max_size = "body", self.max_frame_size
            elif isinstance(msg, Attach):
                self._state = "done"
            else:
                raise UnexpectedFrame(f"a connection must start with hello or attach, not {msg}")
            return msg
        if self._state == "body":
            self._state = "done"
            return Request(payload)
        raise UnexpectedFrame("one request per master connection and nothing after an attach")


class MasterClosedEarly(RemoteProtocolError):
    """The master closed without ``End`` or ``Refuse``: the request was cut, not finished."""


class MasterDecoder(LengthPrefixDecoder):
    """The client's side of a master: ``SourceAnnounced`` events, then ``End`` or ``Refuse``.

    Each source is two frames, its raw header (at most ``max_frame_size``) and a control
    frame. A connection closed between the two, or before ``End``/``Refuse``, is an error
    (``TruncatedFrame``, ``MasterClosedEarly``), never taken for the last source.
    """

    def __init__(
        self,
        max_frame_size: int = DEFAULT_FRAME_SIZE_LIMIT,
        max_sources: int = DEFAULT_MAX_SOURCES,
    ) -> None:
        super().__init__(U64_LE, max_frame_size)
        self.max_frame_size = max_frame_size
        self.max_sources = max_sources
        self.announced = 0
        self._header: bytes | None = None
        self._refused = False

    @property
    def in_frame(self) -> bool:
        return bool(self._buffer) or self._header is not None

    def _decode(self, buffer: ReceiveBuffer) -> object:
        event = super()._decode(buffer)
        if event is NEED_DATA and self._eof and not buffer:
            if self._header is not None:
                raise TruncatedFrame(0)
            if not self._refused:
                raise MasterClosedEarly("master closed before the end of the request")
        return event

    def _event(self, payload: bytes) -> object:
        if self._refused:
            raise UnexpectedFrame("frame after the end of the request")
        if self._header is None:
            self._header, self.max_size = payload, MAX_CONTROL_SIZE
            return self._decode(self._buffer)
        header, self._header, self.max_size = self._header, None, self.max_frame_size
        msg = decode_control(payload)
        if isinstance(msg, Refuse | End):
            self._refused = True
            return msg
        if not isinstance(msg, Announce):
            raise UnexpectedFrame(f"expected an announce after a source header, not {msg}")
        if self.announced >= self.max_sources:
            raise TooManySources(f"more than {self.max_sources} sources in one request")
        self.announced += 1
        return SourceAnnounced(header, msg.channel, msg.compressed)


class ChannelDecoder(LengthPrefixDecoder):
    """The client's side of a descendant channel: ``Accepted`` or ``Refuse``, then ``Frame``s.

    Payloads of a compressed source are decompressed here. The abort mark and a cut frame
    raise; a clean close after a whole frame is ``ConnectionClosed``.
    """

    def __init__(self, compressed: bool, max_frame_size: int = DEFAULT_FRAME_SIZE_LIMIT) -> None:
        super().__init__(U64_LE, MAX_CONTROL_SIZE)
        self.compressed = compressed
        self.max_frame_size = max_frame_size
        self._state = "first"
        #: Pieces of one large frame being assembled, and how many bytes complete it.
        self._pieces: list[bytes] | None = None
        self._pieces_size = 0
        self._pieces_need = 0
        #: A large frame's payload, joined and not yet returned.
        self._ready: bytes | None = None
        #: Whether the last payload returned was a large one (the next may well be too).
        self._last_large = False

    @property
    def pending(self) -> int:
        return len(self._buffer) + self._pieces_size + len(self._ready or b"")

    @property
    def in_frame(self) -> bool:
        return bool(self._buffer) or self._pieces is not None

    @property
    def read_hint(self) -> int | None:
        """How many bytes the next read had best ask for, or None for the caller's usual.

        Inside a large frame: exactly the rest of it, so no read runs past its end. Right
        after a large frame: just the next length prefix, so that the payload after it
        can be read as one object, and (being a whole read) kept without a copy.
        """
        if self._pieces is not None:
            return min(self._pieces_need - self._pieces_size, MAX_READ_HINT)
        if self._last_large and not self._buffer and self._ready is None:
            return U64_LE.size
        return None

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """As ``Decoder.receive_data``; a large frame's payload is gathered as a list of
        reads and joined once, straight into the payload (no buffer grown read by read, no
        second copy out of it)."""
        if self._pieces is None or self._eof:
            super().receive_data(data)
            return
        data = bytes(data)
        missing = self._pieces_need - self._pieces_size
        if len(data) < missing:
            self._pieces.append(data)
            self._pieces_size += len(data)
            return
        self._pieces.append(data[:missing])
        self._ready = b"".join(self._pieces)
        self._pieces, self._pieces_size = None, 0
        super().receive_data(data[missing:])

    def receive_eof(self) -> None:
        if self._pieces is not None:  # a cut large frame: back into the buffer, to raise
            pieces, self._pieces, self._pieces_size = self._pieces, None, 0
            super().receive_data(U64_LE.pack(self._pieces_need) + b"".join(pieces))
        super().receive_eof()

    def next_event(self) -> Any:
        ready = self._ready
        if ready is not None:
            self._ready = None
            return Frame(ready)
        return super().next_event()

    def next_frames(self) -> list[bytes]:
        """The payloads of every whole frame available now, in order (maybe none).

        The fast path of an accepted, uncompressed source: one loop and one slice per frame,
        no event object. Anything else -- the first control frame, compressed payloads, the
        abort mark, a length over the limit, the end of stream -- is left for
        ``next_event``, so callers take ``next_frames()`` and then ``next_event()`` until it
        returns ``NEED_DATA``. A large frame still being received is gathered as a list of
        reads (see ``receive_data``).
        """
        ready = self._ready
        if ready is not None:
            self._ready = None
            payloads = [ready]
        else:
            payloads = []
        if self._state != "frames" or self.compressed or self._error is not None:
            return payloads
        buffer = self._buffer
        payloads += buffer.take_frames(U64_LE, self.max_size)
        if payloads:
            self._last_large = len(payloads[-1]) >= LARGE_FRAME
        head = buffer.unpack(U64_LE)
        if (
            head is not None
            and LARGE_FRAME <= head[0] <= self.max_size
            and len(buffer) < 8 + head[0]
            and not self._eof
        ):
            buffer.skip(8)
            first = buffer.peek()
            self._pieces = [first] if first else []
            self._pieces_size = len(first)
            self._pieces_need = head[0]
            buffer.clear()
        return payloads

    def __iter__(self) -> Iterator[Any]:
        """Every event available now (whole plain frames taken through ``next_frames``)."""
        while True:
            for payload in self.next_frames():
                yield Frame(payload)
            event = self.next_event()
            if event is NEED_DATA:
                return
            yield event
            if isinstance(event, ConnectionClosed):
                return

    def _payload(self, buffer: ReceiveBuffer) -> bytes | None:
        head = buffer.unpack(U64_LE)
        if head is not None and head[0] == ABORT_LENGTH:
            raise SourceAborted("the source failed on the server")
        return super()._payload(buffer)

    def _event(self, payload: bytes) -> object:
        if self._state == "frames":
            if self.compressed:
                payload = decompress_payload(payload, self.max_frame_size)
            return Frame(payload)
        if self._state == "refused":
            raise UnexpectedFrame("frame after a refusal")
        msg = decode_control(payload)
        if isinstance(msg, Accepted):
            self._state, self.max_size = "frames", self.max_frame_size
        elif isinstance(msg, Refuse):
            self._state = "refused"
        else:
            raise UnexpectedFrame(f"a channel must start with accepted or refuse, not {msg}")
        return msg
