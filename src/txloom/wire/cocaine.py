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
from typing import Any, NamedTuple

import msgpack

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


class Message(NamedTuple):
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


class Decoder:
    """Incremental decoder: feed any split of the stream, get whole messages back.

    After an error the decoder is broken for good (the stream has no resynchronisation
    point) and every later call raises the same error.
    """

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        if max_message_size < 1:
            raise ValueError("max_message_size must be positive")
        self.max_message_size = max_message_size
        self._unpacker = msgpack.Unpacker(
            raw=True,
            strict_map_key=False,
            use_list=True,
            max_buffer_size=max_message_size,
        )
        self._fed = 0  # bytes fed to the unpacker so far
        self._start = 0  # stream offset where the message being parsed began
        self._error: RemoteProtocolError | None = None

    @property
    def pending(self) -> int:
        """Bytes of the message not yet complete."""
        return self._fed - self._start

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Every message that ``data`` completes, in order; raise if the stream is bad."""
        if self._error is not None:
            raise self._error
        out: list[Message] = []
        view = memoryview(data)
        limit = self.max_message_size
        unpacker = self._unpacker
        try:
            while view:
                room = limit - (self._fed - self._start)
                if room <= 0:
                    raise MessageTooLarge(limit + 1, limit)
                piece = view[:room]
                view = view[room:]
                unpacker.feed(piece)
                self._fed += len(piece)
                for obj in unpacker:
                    out.append(_check(obj))
                    self._start = unpacker.tell()
        except RemoteProtocolError as e:
            self._error = e
            raise
        except Exception as e:  # msgpack raises several unrelated types for bad input
            self._error = MalformedMessage(f"not MessagePack: {e}")
            raise self._error from None
        return out


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
