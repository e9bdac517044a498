"""What a source function returns, and how the server pulls from it.

A source function is called as ``source_func(body, tags)`` and returns the request's sources
in any of these shapes (Twisted code and plain code alike):

- an async iterator (``async def`` generator) of sources;
- a plain iterable of sources;
- a Deferred or coroutine firing with either of the above.

A source is a ``Source(header, frames)`` (or a ``(header, frames)`` pair), where ``frames``
is again an async iterator, or an iterable whose items are ``bytes`` or Deferreds firing with
bytes. The server pulls the next item only when the client can take it, so an iterator that
produces lazily is paced by its reader; one that was never attached is closed (``aclose``
or ``close``) when its channel times out, so a generator's ``finally`` runs.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred

__all__ = ["END", "Puller", "Source", "as_source"]


@dataclass(frozen=True, slots=True)
class Source:
    """One source: its header and its frames; ``compressed`` overrides the server's option."""

    header: bytes
    frames: AsyncIterator[bytes] | Iterable[Any]
    compressed: bool | None = None


def as_source(item: Any) -> Source:
    if isinstance(item, Source):
        return item
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], bytes):
        return Source(item[0], item[1])
    raise TypeError(f"a source is Source(header, frames) or (header, frames), not {item!r}")


class _End:
    __slots__ = ()

    def __repr__(self) -> str:
        return "END"


#: Returned (or fired) by ``Puller.pull`` after the last item.
END = _End()


async def _await(awaitable: Any) -> Any:
    return await awaitable


async def _next(iterator: AsyncIterator[Any]) -> Any:
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return END


class Puller:
    """One item at a time out of an async iterator or a plain iterable.

    ``pull()`` returns the item at once when it is there (plain iterables of plain values:
    no Deferred per item, which is what keeps small frames cheap) and a Deferred otherwise.
    """

    __slots__ = ("_async", "_sync")

    def __init__(self, items: Any) -> None:
        self._async: AsyncIterator[Any] | None = None
        self._sync: Iterator[Any] | None = None
        if hasattr(items, "__aiter__"):
            self._async = items.__aiter__()
        elif isinstance(items, bytes | bytearray | str):
            raise TypeError("frames must be an iterable of bytes, not one bytes object")
        else:
            self._sync = iter(items)

    def pull(self) -> Any:
        sync = self._sync
        if sync is not None:
            return next(sync, END)
        assert self._async is not None
        return Deferred.fromCoroutine(_next(self._async))

    def close(self) -> None:
        """Release the iterator (its ``finally`` blocks run); errors in them are ignored."""
        items, self._sync = self._sync, None
        closer = getattr(items, "close", None)
        if closer is not None:
            closer()
        aitems, self._async = self._async, None
        aclose = getattr(aitems, "aclose", None)
        if aclose is not None:
            d = Deferred.fromCoroutine(_await(aclose()))
            d.addErrback(lambda _: None)


async def resolve_items(result: Any) -> Any:
    """The iterable behind what a source function returned (awaiting a Deferred/coroutine)."""
    while isinstance(result, Deferred) or inspect.isawaitable(result):
        result = await result
    return result
