"""Reverse RPC from asyncio code: calls that return asyncio futures, and ``async def``
handlers that run as asyncio tasks.

``Clients`` and ``Dispatcher`` speak Deferreds, which Twisted-style coroutines await
directly. Coroutines driven by asyncio cannot await a Deferred, and a handler that awaits
``asyncio.sleep`` cannot run under Twisted's coroutine driver; this module bridges the two
with txaio's asyncio API, as ``txloom.bus.aio`` does for the bus. Twisted must run on its
asyncio reactor, on the same event loop.

    clients = AsyncioClients(Clients())
    pong = await clients.call("agent-7", Ping(1), timeout=5)       # asyncio code

    registry = AsyncioHandlerRegistry()
    registry.register(Ping, handle_ping)   # async def handle_ping(ping): await asyncio.sleep(...)

Cancelling a call's future cancels the call (the agent is sent ``cancel``); a cancelled
request cancels the handler's task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import txaio.aio
from twisted.internet.defer import Deferred

from txloom.rpc.clients import AgentInfo, Clients
from txloom.rpc.handlers import HandlerRegistry, Registration

__all__ = ["AsyncioClients", "AsyncioHandlerRegistry"]


class AsyncioClients:
    """``Clients`` seen from asyncio: same semantics, asyncio futures."""

    def __init__(self, clients: Clients, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.clients = clients
        self._loop = loop if loop is not None else asyncio.get_event_loop()

    def call(
        self,
        name: str,
        request: Any,
        timeout: float | None = None,
        response_type: type | None = None,
    ) -> asyncio.Future[Any]:
        return self.clients.call(name, request, timeout, response_type).asFuture(self._loop)

    def call_all(
        self,
        request: Any,
        timeout: float | None = None,
        response_type: type | None = None,
        names: Iterable[str] | None = None,
    ) -> asyncio.Future[dict[str, Any]]:
        d = self.clients.call_all(request, timeout, response_type, names)
        return d.asFuture(self._loop)

    def list(self) -> list[AgentInfo]:
        return self.clients.list()

    def when_joined(self, name: str) -> asyncio.Future[AgentInfo]:
        return self.clients.when_joined(name).asFuture(self._loop)


class AsyncioHandlerRegistry(HandlerRegistry):
    """A ``HandlerRegistry`` whose handlers may be asyncio coroutines (run as tasks)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__()
        self._loop = loop if loop is not None else asyncio.get_event_loop()
        self._aio = txaio.aio.with_config(loop=self._loop)

    def register(
        self, request_type: type | str, handler: Callable[[Any], Awaitable[Any] | Any]
    ) -> Registration:
        as_future = self._aio.as_future

        def run(request: Any) -> Any:
            future = as_future(handler, request)
            if future.done():  # a plain function: no task, no extra loop turn
                error = future.exception()
                if error is not None:
                    raise error
                return future.result()
            return Deferred.fromFuture(future)

        return super().register(request_type, run)
