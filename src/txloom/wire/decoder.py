"""The one shape of every txloom decoder: bytes in with ``receive_data``, events out with
``next_event``.

Modelled on h11 and wsproto. A decoder is a plain object with no sockets, no reactor and no
clock:

- ``receive_data(data)`` appends bytes from the peer (empty bytes are ignored);
  ``receive_eof()`` says the peer closed its side, after which no more bytes may be given.
  (h11 spells the end of stream ``receive_data(b"")``; an explicit method keeps an empty
  read from ever being taken for a close.)
- ``next_event()`` returns the next whole event (a small frozen dataclass), ``NEED_DATA``
  until more bytes arrive, and ``ConnectionClosed()`` once the stream ended cleanly after a
  whole event. A stream that ends inside an event raises ``TruncatedFrame``: an end of
  stream is never silently taken for a clean one.
- Iterating a decoder yields every event available now (``ConnectionClosed`` included, and
  last).
- Errors are sticky. A framed stream has no resynchronisation point, so once a decoder has
  raised a ``RemoteProtocolError`` every later ``next_event`` raises the same error.
- Limits are declared up front (constructor arguments with named defaults) and checked from
  the length field alone, before the announced bytes are buffered.

``ReceiveBuffer`` is the buffer bookkeeping every decoder shares: one ``bytearray`` with a
read position, compacted only when the consumed prefix is large, so that taking many small
frames out of one big read costs no quadratic copying.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from txloom.wire.errors import LocalProtocolError, RemoteProtocolError, TruncatedFrame

__all__ = ["NEED_DATA", "ConnectionClosed", "Decoder", "NeedData", "ReceiveBuffer"]


class NeedData:
    """Type of ``NEED_DATA``: the decoder holds no whole event yet."""

    __slots__ = ()
    _instance: NeedData | None = None

    def __new__(cls) -> NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"

    def __bool__(self) -> bool:
        return False


#: Returned by ``next_event`` until more bytes arrive.
NEED_DATA: Final = NeedData()


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer ended the stream cleanly: after a whole event, with nothing left over."""


#: Compact the buffer once this many consumed bytes lie in front of the read position.
_COMPACT_THRESHOLD = 64 * 1024


class ReceiveBuffer:
    """Bytes received and not yet decoded.

    Decoders read from the front with ``unpack`` (peek at a fixed-size header) and ``take``
    (consume bytes). Consumed bytes are dropped lazily, in one ``del`` once at least
    ``_COMPACT_THRESHOLD`` of them have accumulated.
    """

    __slots__ = ("_data", "_pos")

    def __init__(self) -> None:
        self._data = bytearray()
        self._pos = 0

    def __len__(self) -> int:
        return len(self._data) - self._pos

    def __bool__(self) -> bool:
        return len(self._data) > self._pos

    def append(self, data: bytes | bytearray | memoryview) -> None:
        self._data += data

    def unpack(self, layout: struct.Struct, offset: int = 0) -> tuple[Any, ...] | None:
        """``layout`` unpacked at ``offset`` unread bytes in, or None if not all there yet."""
        start = self._pos + offset
        if len(self._data) - start < layout.size:
            return None
        return layout.unpack_from(self._data, start)

    def take(self, size: int, skip: int = 0) -> bytes:
        """Consume ``skip + size`` bytes; return the last ``size`` of them.

        The caller checked with ``len()`` that they are there.
        """
        start = self._pos + skip
        end = start + size
        with memoryview(self._data) as view:  # one copy (a bytearray slice would be two)
            out = bytes(view[start:end])
        self._consume_to(end)
        return out

    def take_frames(self, layout: struct.Struct, limit: int) -> list[bytes]:
        """Consume every whole ``layout``-prefixed frame at the front; return their payloads.

        One loop over one ``bytes`` copy of the unread data, one slice per frame: the cheap
        way through a read holding hundreds of small frames. It stops, leaving the rest
        unread, at a cut frame or at a length over ``limit`` (the decoder's own path then
        waits or raises).
        """
        data = self._data
        start = self._pos
        size = layout.size
        if len(data) - start < size:
            return []
        (length,) = layout.unpack_from(data, start)
        if length > limit or len(data) - start < size + length:
            return []
        with memoryview(data) as view:
            chunk = bytes(view[start:])
        unpack = layout.unpack_from
        payloads: list[bytes] = []
        append = payloads.append
        pos, end = 0, len(chunk)
        while end - pos >= size:
            (length,) = unpack(chunk, pos)
            stop = pos + size + length
            if length > limit or stop > end:
                break
            append(chunk[pos + size : stop])
            pos = stop
        self._consume_to(start + pos)
        return payloads

    def skip(self, size: int) -> None:
        """Consume ``size`` bytes without copying them."""
        self._consume_to(self._pos + size)

    def peek(self, size: int | None = None) -> bytes:
        """A copy of the first ``size`` unread bytes (all of them when None)."""
        end = len(self._data) if size is None else self._pos + size
        return bytes(self._data[self._pos : end])

    def clear(self) -> None:
        self._data = bytearray()
        self._pos = 0

    def _consume_to(self, end: int) -> None:
        if end >= len(self._data):
            self._data.clear()
            self._pos = 0
        elif end >= _COMPACT_THRESHOLD:
            del self._data[:end]
            self._pos = 0
        else:
            self._pos = end


class Decoder:
    """Base class of every decoder in ``txloom.wire`` (see the module doc).

    A subclass implements ``_decode(buffer)``: take one whole event off the front of the
    buffer and return it, or return ``NEED_DATA`` leaving the buffer as it was; raise a
    ``RemoteProtocolError`` for bytes that break the format.
    """

    def __init__(self) -> None:
        self._buffer = ReceiveBuffer()
        self._error: RemoteProtocolError | None = None
        self._eof = False

    @property
    def pending(self) -> int:
        """Bytes received and not yet part of a returned event."""
        return len(self._buffer)

    @property
    def in_frame(self) -> bool:
        """True while bytes of an unfinished event are buffered."""
        return bool(self._buffer)

    @property
    def closed(self) -> bool:
        """True once the peer's end of stream was received."""
        return self._eof

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes from the peer, any split of the stream."""
        if self._eof:
            raise LocalProtocolError("receive_data after the end of stream")
        if self._error is None:
            self._buffer.append(data)

    def receive_eof(self) -> None:
        """The peer closed its side; ``next_event`` ends with ``ConnectionClosed`` or raises."""
        self._eof = True

    def next_event(self) -> Any:
        """The next event, ``NEED_DATA``, or ``ConnectionClosed()`` (see the module doc)."""
        if self._error is not None:
            raise self._error
        try:
            event = self._decode(self._buffer)
        except RemoteProtocolError as e:
            self._error = e
            raise
        if event is NEED_DATA and self._eof:
            if self.in_frame:
                self._error = TruncatedFrame(self.pending)
                raise self._error
            return ConnectionClosed()
        return event

    def __iter__(self) -> Iterator[Any]:
        while True:
            event = self.next_event()
            if event is NEED_DATA:
                return
            yield event
            if isinstance(event, ConnectionClosed):
                return

    def _decode(self, buffer: ReceiveBuffer) -> Any:
        raise NotImplementedError
