"""The asyncio API: asyncio source functions and asyncio readers, on one loop."""

from __future__ import annotations

import asyncio

import pytest_twisted
from twisted.internet.defer import Deferred

from support.streams import SERVICE
from txloom.streams import Source, StaticResolver
from txloom.streams.aio import AsyncioStreamClient, AsyncioStreamServer


@pytest_twisted.ensureDeferred
async def test_asyncio_server_and_client() -> None:
    async def frames(n: int):
        for i in range(n):
            await asyncio.sleep(0)
            yield b"%d" % i

    async def sources(body, tags):
        for n in range(3):
            await asyncio.sleep(0)
            yield Source(b"%s-%d" % (body, n), frames(n))

    server = AsyncioStreamServer(sources)
    await server.listen()
    try:
        host, port = server.address
        client = AsyncioStreamClient(StaticResolver({SERVICE: [f"tcp:{host}:{port}"]}))

        async def read():
            out = []
            async for source in client.post(SERVICE, b"q"):
                assert source.meta.remote.port == port
                out.append((source.header, [f async for f in source]))
            return out

        answer = await Deferred.fromFuture(asyncio.ensure_future(read()))
        assert answer == [(b"q-0", []), (b"q-1", [b"0"]), (b"q-2", [b"0", b"1"])]
    finally:
        await server.stopService()
