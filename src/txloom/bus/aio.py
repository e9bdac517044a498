"""The bus from asyncio code: pods whose waits are asyncio futures and whose ``async def``
handlers run as asyncio tasks.

The bus itself speaks Deferreds, which Twisted-style coroutines (``Deferred.fromCoroutine``)
await directly. Coroutines driven by asyncio cannot await a Deferred, and a handler that
awaits ``asyncio.sleep`` cannot run under Twisted's coroutine driver; this module bridges
the two with txaio's asyncio API, so that asyncio code and Twisted code share one bus.
Twisted must run on its asyncio reactor (``twisted.internet.asyncioreactor``) on the same
event loop.

    apod = AsyncioPod(bus.connect())
    apod.on_type("job", handle_job)            # async def handle_job(msg): await asyncio.sleep(...)
    reply = await apod.send(Message.new("q")).wait_until(2.0)

``connect`` attaches to a running node as a client (``txloom.bus.client``) the same way:

    client = await connect("ws://127.0.0.1:8080/meta/message")
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import txaio.aio
from twisted.internet.defer import Deferred

from txloom.bus.client import BusClient
from txloom.bus.client import connect as connect_client
from txloom.bus.message import Message
from txloom.bus.pod import Pod
from txloom.bus.receipt import MsgReceipt, WaitFunction

__all__ = ["AsyncioClient", "AsyncioPod", "AsyncioReceipt", "connect"]

AsyncHandler = Callable[[Message], Awaitable[Any] | Any]


class AsyncioReceipt:
    """``MsgReceipt`` with waits that return asyncio futures."""

    __slots__ = ("_owner", "receipt")

    def __init__(self, owner: AsyncioPod, receipt: MsgReceipt) -> None:
        self._owner = owner
        self.receipt = receipt

    @property
    def uuid(self) -> str:
        return self.receipt.uuid

    def wait_on(self, fn: WaitFunction | None = None) -> asyncio.Future[Message]:
        return self._owner._future(self.receipt.wait_on(fn))

    def wait_until(
        self, timeout: float | None, fn: WaitFunction | None = None
    ) -> asyncio.Future[Message]:
        return self._owner._future(self.receipt.wait_until(timeout, fn))

    def on_reply(self, fn: WaitFunction) -> asyncio.Future[Message]:
        return self._owner._future(self.receipt.on_reply(fn))


class AsyncioPod:
    """A pod seen from asyncio: same semantics, asyncio futures and tasks."""

    def __init__(self, pod: Pod | BusClient, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.pod = pod
        self._loop = loop if loop is not None else asyncio.get_event_loop()
        self._aio = txaio.aio.with_config(loop=self._loop)

    def _future(self, d: Deferred[Any]) -> asyncio.Future[Any]:
        return d.asFuture(self._loop)

    def _wrap(self, fn: AsyncHandler) -> Callable[[Message], Deferred[Any] | None]:
        as_future = self._aio.as_future

        def handler(msg: Message) -> Deferred[Any] | None:
            future = as_future(fn, msg)
            if future.done():  # a plain function: no task, no extra loop turn
                error = future.exception()
                if error is not None:
                    raise error
                return None
            return Deferred.fromFuture(future)

        return handler

    def on(self, fn: AsyncHandler | None) -> None:
        self.pod.on(None if fn is None else self._wrap(fn))

    def on_type(self, msg_type: str | Iterable[str], fn: AsyncHandler) -> None:
        self.pod.on_type(msg_type, self._wrap(fn))

    def send(self, msg: Message) -> AsyncioReceipt:
        return AsyncioReceipt(self, self.pod.send(msg))

    def reply_to(self, msg: Message, reply: Message) -> AsyncioReceipt:
        return AsyncioReceipt(self, self.pod.reply_to(msg, reply))

    def wait_on(self, fn: WaitFunction | None = None) -> asyncio.Future[Message]:
        return self._future(self.pod.wait_on(fn))

    def wait_until(
        self, timeout: float | None, fn: WaitFunction | None = None
    ) -> asyncio.Future[Message]:
        return self._future(self.pod.wait_until(timeout, fn))

    def writable(self) -> asyncio.Future[None]:
        return self._future(self.pod.writable())

    def disconnect(self) -> None:
        self.pod.disconnect()


class AsyncioClient(AsyncioPod):
    """A ``BusClient`` seen from asyncio (made by ``connect``)."""

    client: BusClient

    def __init__(self, client: BusClient, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(client, loop)
        self.client = client

    @property
    def node_uuid(self) -> str:
        return self.client.node_uuid

    def close(self) -> asyncio.Future[None]:
        """Detach from the node (see ``BusClient.close``)."""
        return self._future(self.client.close())

    def disconnect(self) -> None:
        self.client.close()


async def connect(
    url: str, *, loop: asyncio.AbstractEventLoop | None = None, **options: Any
) -> AsyncioClient:
    """``txloom.bus.client.connect`` for asyncio code (same options); Twisted must run on
    its asyncio reactor on this loop."""
    loop = loop if loop is not None else asyncio.get_running_loop()
    client = await connect_client(url, **options).asFuture(loop)
    return AsyncioClient(client, loop)
