"""Nested-streams test helpers: a listening server and a client pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol

from txloom.streams import StaticResolver, StreamClient, StreamServer
from txloom.wire.streams import (
    Attach,
    Hello,
    Request,
    ServerConnectionDecoder,
    encode_control,
    encode_frame,
)

SERVICE = "svc"


@asynccontextmanager
async def serving(source_func: Any, **options: Any) -> AsyncIterator[StreamServer]:
    """A ``StreamServer`` listening on an ephemeral loopback port for the block."""
    server = StreamServer(source_func, **options)
    await server.listen()
    try:
        yield server
    finally:
        await server.stopService()


def client_for(server: StreamServer, **options: Any) -> StreamClient:
    host, port = server.address  # type: ignore[misc]
    resolver = StaticResolver({SERVICE: [f"tcp:{host}:{port}"]})
    return StreamClient(resolver, **options)


class RawPeer(Protocol):
    """A hand-driven peer: records what arrives, writes what a test tells it to."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.lost: Deferred[None] = Deferred()
        self.connected = False

    def connectionMade(self) -> None:
        self.connected = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)


async def raw_connect(server: StreamServer) -> RawPeer:
    host, port = server.address  # type: ignore[misc]
    endpoint = TCP4ClientEndpoint(reactor, host, port)
    return await connectProtocol(endpoint, RawPeer())


def control_frame(msg: Any) -> bytes:
    return encode_frame(encode_control(msg))


class RawServer(Factory):
    """A hand-written stream server: ``on_master(peer, hello, body)`` and
    ``on_channel(peer, token)`` decide what each connection gets."""

    def __init__(self, on_master: Any, on_channel: Any) -> None:
        self.on_master = on_master
        self.on_channel = on_channel

    def buildProtocol(self, addr: Any) -> Protocol:
        return _RawServerConnection(self)


class _RawServerConnection(Protocol):
    def __init__(self, factory: RawServer) -> None:
        self.factory = factory
        self.decoder = ServerConnectionDecoder()
        self.hello: Any = None

    def dataReceived(self, data: bytes) -> None:
        self.decoder.receive_data(data)
        for event in self.decoder:
            if isinstance(event, Hello):
                self.hello = event
            elif isinstance(event, Request):
                self.factory.on_master(self.transport, self.hello, event.body)
            elif isinstance(event, Attach):
                self.factory.on_channel(self.transport, event.channel)


async def raw_server(on_master: Any, on_channel: Any) -> tuple[Any, str]:
    """Listen with a ``RawServer``; (port, endpoint string for a resolver)."""
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        RawServer(on_master, on_channel)
    )
    return port, f"tcp:127.0.0.1:{port.getHost().port}"
