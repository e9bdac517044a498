"""Both sides of the aperture wire written with grpcio alone, for the gRPC interop tests.

``RecordingRegistry`` and ``RecordingDispatcher`` stand where ``Clients`` and ``Dispatcher``
would; they only record, so what the tests check is what crossed the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import grpc
from grpc import aio
from twisted.internet.defer import Deferred, succeed

from txloom.rpc.grpc.proto.aperture.rpc.v1 import rpc_pb2, rpc_pb2_grpc
from txloom.wire.rpc import ErrorResponse, Hello, Request, Response


def on_loop(coro: Coroutine[Any, Any, Any]) -> Deferred:
    """Run asyncio code (grpc.aio) on the asyncio reactor's loop, as a Deferred."""
    return Deferred.fromFuture(asyncio.ensure_future(coro))


class Refused(Exception):
    """What a registry raises to refuse a hello (shaped like ``txloom.rpc.RPCError``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RecordingRegistry:
    """An ``IRPCPeerRegistry`` that records; refuses hellos whose token is not ``token``."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.peers: dict[str, Any] = {}
        self.hellos: list[Hello] = []
        self.responses: list[tuple[str, Any]] = []
        self.departures: list[tuple[str, str]] = []

    def join(self, peer: Any, hello: Hello) -> None:
        if self.token is not None and hello.token != self.token:
            raise Refused("unauthenticated", "bad token")
        self.hellos.append(hello)
        old = self.peers.get(hello.name)
        if old is not None:
            old.close("cancelled", "replaced by a newer session")
        self.peers[hello.name] = peer

    def received(self, peer: Any, response: Any) -> None:
        self.responses.append((peer.name, response))

    def left(self, peer: Any, reason: str) -> None:
        self.departures.append((peer.name, reason))
        if self.peers.get(peer.name) is peer:
            del self.peers[peer.name]

    def responses_of(self, name: str) -> list[Any]:
        return [r for n, r in self.responses if n == name]


class RecordingDispatcher:
    """An ``IRPCDispatcher``: ``test.Echo`` answers at once, ``test.Hang`` never does (and
    records its cancellation), ``test.Fail`` is an error, anything else ``unavailable``."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.cancelled: list[int] = []

    def dispatch(self, request: Request) -> Deferred:
        self.requests.append(request)
        if request.type == "test.Echo":
            return succeed(Response(request.id, request.payload))
        if request.type == "test.Fail":
            return succeed(ErrorResponse(request.id, "not_found", "no such thing", {"n": 3}))
        if request.type == "test.Hang":

            def cancel(d: Deferred) -> None:
                self.cancelled.append(request.id)

            d: Deferred = Deferred(cancel)
            d.addErrback(lambda f: ErrorResponse(request.id, "cancelled", "cancelled"))
            return d
        return succeed(ErrorResponse(request.id, "unavailable", f"no handler for {request.type}"))


def raw_connect(port: int, token: str | None = None) -> tuple[aio.Channel, Any]:
    """An aperture-style agent's stream, opened with the generated stub."""
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    stub = rpc_pb2_grpc.CoordinatorStub(channel)
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    return channel, stub.Connect(metadata=metadata)


def raw_bytes_connect(port: int) -> tuple[aio.Channel, Any]:
    """A stream on the same method that sends whatever bytes it is given."""
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    return channel, channel.stream_stream("/aperture.rpc.v1.Coordinator/Connect")()


def hello(name: str, next_id: int = 0) -> rpc_pb2.ClientToServer:
    return rpc_pb2.ClientToServer(hello=rpc_pb2.ClientToServer.Hello(name=name, next_id=next_id))


class RawController(rpc_pb2_grpc.CoordinatorServicer):
    """A controller written with grpcio and the generated servicer, nothing of txloom's.

    Each stream's hello, metadata and incoming responses are recorded per agent name; the
    test drives a stream through ``send`` and may end it with ``end``.
    """

    def __init__(self) -> None:
        self.hellos: list[tuple[str, int, str | None]] = []
        self.responses: dict[str, asyncio.Queue[rpc_pb2.Response]] = {}
        self.outgoing: dict[str, asyncio.Queue[rpc_pb2.ServerToClient | None]] = {}
        self.server: aio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> int:
        self.server = aio.server(options=[("grpc.so_reuseport", 0)])
        rpc_pb2_grpc.add_CoordinatorServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        await self.server.start()
        return self.port

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)

    async def Connect(self, request_iterator: Any, context: Any) -> Any:
        first = await context.read()
        assert first.WhichOneof("msg") == "hello"
        token = dict(context.invocation_metadata()).get("authorization")
        name = first.hello.name
        self.hellos.append((name, first.hello.next_id, token))
        responses = self.responses.setdefault(name, asyncio.Queue())
        outgoing: asyncio.Queue = asyncio.Queue()
        self.outgoing[name] = outgoing

        async def read() -> None:
            while True:
                msg = await context.read()
                if msg is aio.EOF:
                    return
                await responses.put(msg.response)

        reader = asyncio.ensure_future(read())
        try:
            while True:
                out = await outgoing.get()
                if out is None:
                    return
                await context.write(out)
        finally:
            reader.cancel()

    def send(self, name: str, msg: rpc_pb2.ServerToClient | None) -> None:
        self.outgoing[name].put_nowait(msg)

    async def response(self, name: str, timeout: float = 10.0) -> rpc_pb2.Response:
        return await asyncio.wait_for(
            self.responses.setdefault(name, asyncio.Queue()).get(), timeout
        )


__all__ = [
    "RawController",
    "RecordingDispatcher",
    "RecordingRegistry",
    "Refused",
    "grpc",
    "hello",
    "on_loop",
    "raw_bytes_connect",
    "raw_connect",
]
