"""The Cocaine v12 message stream: MessagePack arrays back to back, no length prefix.

Every message is ``[channel, type, args]`` or ``[channel, type, args, headers]``. The same
stream carries the engine <-> worker protocol (over a Unix socket) and every service
protocol (Locator, Logging, app services, over TCP); what a ``type`` means depends on the
channel's protocol, which is the business of the layer above this one.

Strings go out as old-spec raw (``use_bin_type=False``), which is what old peers expect;
on input raw, str and bin all arrive as ``bytes`` (``raw=True``), because a raw payload may
be binary and must never be decoded as UTF-8 behind the caller's back.

The stream has no length prefix, so the size limit is enforced by counting the bytes of
the message being parsed: once one message has taken more than ``max_message_size`` bytes
without completing, the stream is refused. That bounds memory whatever the message nests.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack

from txloom.wire.decoder import NEED_DATA, NeedData, ReceiveBuffer
from txloom.wire.decoder import Decoder as BaseDecoder
from txloom.wire.errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError

__all__ = [
    "CHOKE",
    "CHUNK",
    "CONTROL_CHANNEL",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "ERROR",
    "HANDSHAKE",
    "HEARTBEAT",
    "MAX_CHANNEL",
    "NEED_DATA",
    "TERMINATE",
    "Decoder",
    "Encoder",
    "Header",
    "MalformedMessage",
    "Message",
    "MessageTooLarge",
    "encode",
    "header_value",
]

#: Largest message accepted by default (64 MiB), as the protocol requires.
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024

#: Channel ids are unsigned 64-bit integers on the wire.
MAX_CHANNEL = 2**64 - 1

#: The engine <-> worker control channel and its message types.
CONTROL_CHANNEL = 1
HANDSHAKE = 0  # worker -> engine, first message, args [uuid]
HEARTBEAT = 0  # both ways after the handshake, args []
TERMINATE = 1  # both ways, args [code, reason]

#: Message types of the streaming protocol (sessions, ``enqueue``): write, error, close.
CHUNK = 0
ERROR = 1
CHOKE = 2


class Header(NamedTuple):
    """A literal header entry, ``[store, name, value]`` on the wire.

    ``store`` is the first element of the entry: old peers always send ``false`` (do not
    add to the dynamic table); ``true`` is accepted and kept so that a relay can pass it on.
    """

    name: bytes
    value: bytes
    store: bool = False


#: A header entry: a literal ``Header`` or an integer index into the static table.
HeaderEntry = Header | int


@dataclass(frozen=True, slots=True)
class Message:
    """One message of the stream. ``headers`` is a tuple of ``Header`` and ``int`` entries."""

    channel: int
    type: int
    args: list[Any]
    headers: tuple[HeaderEntry, ...] = ()


class MalformedMessage(RemoteProtocolError):
    """The bytes are not MessagePack, or not a message of the expected shape."""


class MessageTooLarge(FrameTooLarge):
    """A message grew past the limit before it was complete.

    The stream has no length prefix, so the real size is unknown: ``size`` is the number of
    bytes seen when the limit was crossed (at least ``limit + 1``).
    """

    def __init__(self, size: int, limit: int) -> None:
        RemoteProtocolError.__init__(
            self, f"message exceeds the limit of {limit} bytes (at least {size} bytes)"
        )
        self.size = size
        self.limit = limit


def header_value(headers: Iterable[HeaderEntry], name: bytes) -> bytes | None:
    """The value of the first literal header called ``name`` (case-insensitive), or None."""
    name = name.lower()
    for entry in headers:
        if isinstance(entry, Header) and entry.name.lower() == name:
            return entry.value
    return None


def _check_headers(raw: Any) -> tuple[HeaderEntry, ...]:
    if not isinstance(raw, list):
        raise MalformedMessage(f"headers must be an array, not {type(raw).__name__}")
    entries: list[HeaderEntry] = []
    for entry in raw:
        if isinstance(entry, int) and not isinstance(entry, bool):
            entries.append(entry)
        elif (
            isinstance(entry, list)
            and len(entry) == 3
            and isinstance(entry[0], bool)
            and isinstance(entry[1], bytes)
            and isinstance(entry[2], bytes)
        ):
            entries.append(Header(entry[1], entry[2], entry[0]))
        else:
            raise MalformedMessage(f"bad header entry {entry!r:.80}")
    return tuple(entries)


def _check(obj: Any) -> Message:
    """Turn one decoded object into a ``Message`` or say precisely what is wrong with it."""
    if not isinstance(obj, list) or len(obj) not in (3, 4):
        raise MalformedMessage(f"a message is an array of 3 or 4 items, not {obj!r:.80}")
    channel, mtype, args = obj[0], obj[1], obj[2]
    if type(channel) is not int or not 0 <= channel <= MAX_CHANNEL:
        raise MalformedMessage(f"bad channel id {channel!r:.40}")
    if type(mtype) is not int or mtype < 0:
        raise MalformedMessage(f"bad message type {mtype!r:.40}")
    if not isinstance(args, list):
        raise MalformedMessage(f"message arguments must be an array, not {args!r:.40}")
    if len(obj) == 4:
        return Message(channel, mtype, args, _check_headers(obj[3]))
    return Message(channel, mtype, args)


class Decoder(BaseDecoder):
    """Incremental decoder: feed any split of the stream, take whole messages out.

    ``receive_data(bytes)``, then ``next_event()`` until it returns ``NEED_DATA`` (or
    iterate the decoder), as for every decoder in ``txloom.wire``; errors are sticky.

    The format has no length prefix, so only a streaming parser can tell where a message
    ends: the bytes go from the shared ``ReceiveBuffer`` into a ``msgpack.Unpacker``, at
    most ``max_message_size`` bytes of one unfinished message at a time. Re-parsing the
    buffer from the start on every read would cost quadratic time on a large message.
    """

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        if max_message_size < 1:
            raise ValueError("max_message_size must be positive")
        super().__init__()
        self.max_message_size = max_message_size
        self._unpacker = msgpack.Unpacker(
            raw=True,
            strict_map_key=False,
            use_list=True,
            max_buffer_size=max_message_size,
        )
        self._fed = 0  # bytes moved into the unpacker so far
        # where the message being parsed began (``tell()`` also counts a partial one)
        self._start = 0

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes from the peer, any split of the stream.

        While the unpacker has room for them they go straight in (one copy, not three);
        otherwise they wait in the receive buffer until ``next_event`` makes room.
        """
        room = self.max_message_size - (self._fed - self._start)
        if (
            self._error is None
            and data
            and not self._eof
            and not self._buffer
            and len(data) <= room
        ):
            self._unpacker.feed(data)
            self._fed += len(data)
            return
        super().receive_data(data)

    @property
    def pending(self) -> int:
        """Bytes received and not yet part of a returned message."""
        return len(self._buffer) + self._fed - self._start

    @property
    def in_frame(self) -> bool:
        return self.pending > 0

    def _decode(self, buffer: ReceiveBuffer) -> Message | NeedData:
        unpacker = self._unpacker
        limit = self.max_message_size
        while True:
            try:
                obj = unpacker.unpack()
            except msgpack.OutOfData:
                pass
            except Exception as e:  # msgpack raises several unrelated types for bad input
                raise MalformedMessage(f"not MessagePack: {e}") from None
            else:
                self._start = unpacker.tell()
                return _check(obj)
            if not buffer:
                return NEED_DATA
            room = limit - (self._fed - self._start)
            if room <= 0:
                raise MessageTooLarge(limit + 1, limit)
            piece = buffer.take(min(room, len(buffer)))
            unpacker.feed(piece)
            self._fed += len(piece)


def _header_entry(entry: HeaderEntry) -> Any:
    if isinstance(entry, Header):
        return [entry.store, entry.name, entry.value]
    if isinstance(entry, int) and not isinstance(entry, bool):
        return entry
    raise LocalProtocolError(f"bad header entry {entry!r}")


class Encoder:
    """Packs messages as old-spec MessagePack; one per connection (a Packer is not shared)."""

    def __init__(self) -> None:
        self._packer = msgpack.Packer(use_bin_type=False, autoreset=True)

    def encode(
        self,
        channel: int,
        mtype: int,
        args: Sequence[Any] = (),
        headers: Sequence[HeaderEntry] | None = None,
    ) -> bytes:
        """The bytes of one message; ``headers`` is left off the wire when None or empty."""
        try:
            if headers:
                return self._packer.pack(
                    [channel, mtype, args, [_header_entry(h) for h in headers]]
                )
            return self._packer.pack([channel, mtype, args])
        except (TypeError, ValueError, OverflowError) as e:
            raise LocalProtocolError(f"cannot encode message: {e}") from e

    def message(self, message: Message) -> bytes:
        return self.encode(message.channel, message.type, message.args, message.headers)


def encode(
    channel: int,
    mtype: int,
    args: Sequence[Any] = (),
    headers: Sequence[HeaderEntry] | None = None,
) -> bytes:
    """One message with a throwaway ``Encoder``; use an ``Encoder`` on hot paths."""
    return Encoder().encode(channel, mtype, args, headers)
