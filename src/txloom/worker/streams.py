"""One direction of a channel as something to read: ``await stream.read()`` or ``async for``.

Used for a worker's request (the chunks a caller sends) and for a client's replies. The
sender pushes items as messages arrive; the reader takes them in order. ``read()`` fires
with the next item, with ``None`` once the stream has been closed, or fails with the
``ServiceError`` that ended it.
"""

from __future__ import annotations

import contextlib
from collections import deque
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed


class _Closed:
    __slots__ = ()


_CLOSED = _Closed()


class ChunkStream:
    """Items of one direction of a channel, read in order."""

    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._readers: deque[Deferred[Any]] = deque()
        self._end: _Closed | BaseException | None = None

    @property
    def ended(self) -> bool:
        """True once the sender has closed or failed the stream (items may still be unread)."""
        return self._end is not None

    @property
    def error(self) -> BaseException | None:
        """The error the sender ended the stream with, if it did."""
        return self._end if isinstance(self._end, BaseException) else None

    # -- sender side ----------------------------------------------------------------------

    def push(self, item: Any) -> None:
        if self._end is not None:
            return
        if self._readers:
            self._readers.popleft().callback(item)
        else:
            self._items.append(item)

    def close(self) -> None:
        if self._end is None:
            self._end = _CLOSED
            while self._readers:
                self._readers.popleft().callback(None)

    def fail(self, error: BaseException) -> None:
        if self._end is None:
            self._end = error
            while self._readers:
                self._readers.popleft().errback(error)

    # -- reader side ----------------------------------------------------------------------

    def read(self) -> Deferred[Any]:
        """The next item; ``None`` at the end of the stream; fails with the stream's error."""
        if self._items:
            return succeed(self._items.popleft())
        end = self._end
        if end is _CLOSED:
            return succeed(None)
        if isinstance(end, BaseException):
            return fail(end)
        d: Deferred[Any] = Deferred(self._cancel_read)
        self._readers.append(d)
        return d

    def _cancel_read(self, d: Deferred[Any]) -> None:
        with contextlib.suppress(ValueError):
            self._readers.remove(d)

    async def read_all(self) -> bytes:
        """Every remaining chunk joined (the stream must carry bytes)."""
        parts = []
        while (chunk := await self.read()) is not None:
            parts.append(chunk)
        return b"".join(parts)

    def __aiter__(self) -> ChunkStream:
        return self

    async def __anext__(self) -> Any:
        item = await self.read()
        if item is None:
            raise StopAsyncIteration
        return item
