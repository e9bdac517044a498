"""The asyncio face: calls as asyncio futures, asyncio handlers cancelled for real."""

from __future__ import annotations

import asyncio

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from support.rpc import StreamHarness
from support.waiting import until
from txloom.rpc import Clients, DeadlineExceeded
from txloom.rpc.aio import AsyncioClients, AsyncioHandlerRegistry
from txloom.rpc.examples.echo import Echo, Sleep


@pytest_twisted.ensureDeferred
async def test_asyncio_calls_and_handlers(tmp_path) -> None:
    harness = StreamHarness(tmp_path)
    clients = Clients()
    await harness.start(clients)
    cancelled: list[str] = []
    registry = AsyncioHandlerRegistry()

    async def echo(request: Echo) -> Echo:
        await asyncio.sleep(0.01)  # only an asyncio coroutine may await this
        return Echo(request.text.upper())

    async def slow(request: Sleep) -> None:
        try:
            await asyncio.sleep(request.seconds)
        except asyncio.CancelledError:
            cancelled.append("slow")
            raise

    registry.register(Echo, echo)
    registry.register(Sleep, slow)
    try:
        await harness.agent("aio", registry)
        await until(lambda: "aio" in clients)
        aclients = AsyncioClients(clients)

        async def from_asyncio() -> object:
            return await aclients.call("aio", Echo("hi"), timeout=5)

        assert await Deferred.fromFuture(asyncio.ensure_future(from_asyncio())) == Echo("HI")
        with pytest.raises(DeadlineExceeded):
            await Deferred.fromFuture(aclients.call("aio", Sleep(30), timeout=0.2))
        await until(lambda: cancelled == ["slow"], what="the asyncio handler cancelled")
        results = await Deferred.fromFuture(aclients.call_all(Echo("x")))
        assert results == {"aio": Echo("X")}
    finally:
        await harness.stop()
