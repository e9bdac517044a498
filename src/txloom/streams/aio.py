"""Nested streams from asyncio code: the same client and server, with asyncio awaitables.

Twisted's coroutine driver awaits Deferreds; asyncio's awaits futures. This module wraps
both directions with txaio's asyncio API, as ``txloom.bus.aio`` does for the bus, so that
asyncio code posts requests and writes source functions in its own idiom. Twisted must run
on its asyncio reactor (``twisted.internet.asyncioreactor``) on the same event loop.

    client = AsyncioStreamClient(StaticResolver({"search": ["tcp:127.0.0.1:7410"]}))
    async for source in client.post("search", b"query"):
        async for frame in source:        # asyncio futures underneath
            ...

    async def sources(body, tags):        # may await asyncio.sleep, aiohttp, ...
        yield Source(b"header", frames())
    server = AsyncioStreamServer(sources, endpoint="tcp:7410")
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import txaio.aio
from twisted.internet.defer import Deferred

from txloom.streams.channel import SourceMeta, SourceStream
from txloom.streams.client import RequestStream, StreamClient
from txloom.streams.server import StreamServer
from txloom.streams.source import Source, as_source

__all__ = ["AsyncioRequest", "AsyncioSource", "AsyncioStreamClient", "AsyncioStreamServer"]


class _Bridge:
    """The loop, and txaio's conversions between its futures and Deferreds."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.loop = loop if loop is not None else asyncio.get_event_loop()
        self.aio = txaio.aio.with_config(loop=self.loop)

    def future(self, d: Deferred[Any]) -> asyncio.Future[Any]:
        return d.asFuture(self.loop)

    def deferred(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return Deferred.fromFuture(self.aio.as_future(fn, *args))


class AsyncioSource:
    """A ``SourceStream`` read with ``async for`` from asyncio code."""

    def __init__(self, bridge: _Bridge, source: SourceStream) -> None:
        self._bridge = bridge
        self.source = source

    @property
    def header(self) -> bytes:
        return self.source.header

    @property
    def meta(self) -> SourceMeta | None:
        return self.source.meta

    def __aiter__(self) -> AsyncioSource:
        return self

    async def __anext__(self) -> bytes:
        frame = await self._bridge.future(self.source.read())
        if frame is None:
            raise StopAsyncIteration
        return frame

    def close(self) -> None:
        self.source.close()


class AsyncioRequest:
    """A ``RequestStream`` whose sources are read from asyncio code."""

    def __init__(self, bridge: _Bridge, request: RequestStream) -> None:
        self._bridge = bridge
        self.request = request

    def __aiter__(self) -> AsyncioRequest:
        return self

    async def __anext__(self) -> AsyncioSource:
        source = await self._bridge.future(self.request.next_source())
        if source is None:
            raise StopAsyncIteration
        return AsyncioSource(self._bridge, source)

    def close(self) -> None:
        self.request.close()


class AsyncioStreamClient:
    """``StreamClient`` for asyncio code (same options)."""

    def __init__(
        self, resolver: Any, loop: asyncio.AbstractEventLoop | None = None, **options: Any
    ) -> None:
        self._bridge = _Bridge(loop)
        self.client = StreamClient(resolver, **options)

    def post(self, vaddr: str, body: bytes, tags: dict[str, str] | None = None) -> AsyncioRequest:
        return AsyncioRequest(self._bridge, self.client.post(vaddr, body, tags))


class _FromAsyncio:
    """An asyncio async iterator seen by Twisted code: each step is a Deferred."""

    def __init__(self, bridge: _Bridge, items: Any, convert: Callable[[Any], Any] | None) -> None:
        self._bridge = bridge
        self._items = items.__aiter__()
        self._convert = convert

    def __aiter__(self) -> _FromAsyncio:
        return self

    def __anext__(self) -> Deferred[Any]:
        d = self._bridge.deferred(self._items.__anext__)
        return d if self._convert is None else d.addCallback(self._convert)

    def aclose(self) -> Deferred[Any]:
        aclose = getattr(self._items, "aclose", None)
        if aclose is None:
            return Deferred.fromFuture(self._bridge.loop.create_future()).addErrback(lambda _: None)
        return self._bridge.deferred(aclose)


def asyncio_source_function(
    source_func: Callable[[bytes, dict[str, str]], Any], loop: asyncio.AbstractEventLoop | None
) -> Callable[[bytes, dict[str, str]], Any]:
    """``source_func`` written for asyncio, as ``StreamServer`` wants it."""
    bridge = _Bridge(loop)

    def source(item: Any) -> Source:
        made = as_source(item)
        if hasattr(made.frames, "__aiter__"):
            made = Source(made.header, _FromAsyncio(bridge, made.frames, None), made.compressed)
        return made

    def sources(items: Any) -> Any:
        if hasattr(items, "__aiter__"):
            return _FromAsyncio(bridge, items, source)
        return map(source, items)

    def wrapped(body: bytes, tags: dict[str, str]) -> Any:
        result = source_func(body, tags)
        if inspect.isawaitable(result):
            return bridge.deferred(lambda: result).addCallback(sources)
        return sources(result)

    return wrapped


class AsyncioStreamServer(StreamServer):
    """``StreamServer`` whose source function (or functions) are asyncio code."""

    def __init__(
        self, source_func: Any, loop: asyncio.AbstractEventLoop | None = None, **options: Any
    ) -> None:
        if isinstance(source_func, dict):
            source_func = {
                name: asyncio_source_function(f, loop) for name, f in source_func.items()
            }
        else:
            source_func = asyncio_source_function(source_func, loop)
        super().__init__(source_func, **options)
