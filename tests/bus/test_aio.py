"""The bus from asyncio code (Twisted on its asyncio reactor, one event loop)."""

from __future__ import annotations

import asyncio

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from txloom.bus import Bus, Message, WaitTimeout
from txloom.bus.aio import AsyncioPod


def run_asyncio(coro) -> Deferred:
    """Run ``coro`` as an asyncio task and let the (Twisted) test await it."""
    return Deferred.fromFuture(asyncio.ensure_future(coro))


@pytest_twisted.ensureDeferred
async def test_asyncio_handlers_and_waits() -> None:
    bus = Bus()

    async def main() -> list[bytes]:
        worker = AsyncioPod(bus.connect())

        async def handle(msg: Message) -> None:
            await asyncio.sleep(0.001)  # asyncio, not Twisted, drives this
            worker.reply_to(msg, Message.new("job.done", msg.data.upper()))

        worker.on_type("job", handle)
        client = AsyncioPod(bus.connect())
        replies = []
        for word in (b"a", b"b", b"c"):
            reply = await client.send(Message.new("job", word)).wait_until(2.0)
            replies.append(reply.data)
        with pytest.raises(WaitTimeout):
            await client.send(Message.new("nobody")).wait_until(0.05)
        return replies

    assert await run_asyncio(main()) == [b"A", b"B", b"C"]
    await bus.stop()


@pytest_twisted.ensureDeferred
async def test_asyncio_handler_failures_count() -> None:
    bus = Bus()

    async def main() -> int:
        pod = AsyncioPod(bus.connect())
        calls = []

        async def flaky(msg: Message) -> None:
            calls.append(msg.data)
            await asyncio.sleep(0)
            if len(calls) == 1:
                raise RuntimeError("first try fails")

        def sync_flaky(msg: Message) -> None:
            raise RuntimeError("sync")

        pod.on(flaky)
        other = AsyncioPod(bus.connect())
        other.on(sync_flaky)
        sender = bus.connect()
        sender.send(Message.new("t", b"1"))
        sender.send(Message.new("t", b"2"))
        while pod.pod.stats.delivered < 2:
            await asyncio.sleep(0.001)
        assert other.pod.stats.failed == 2
        return len(calls)

    assert await run_asyncio(main()) == 3  # 1 fails, 2 succeeds, 1 is re-delivered
    await bus.stop()
