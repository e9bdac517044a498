"""The txloom controller's gRPC transport against agents written with grpcio alone.

The agents use the generated ``CoordinatorStub`` and nothing of txloom's, so what passes
here is the aperture wire itself. Each test runs with grpc.aio on the reactor's loop and
in a thread of its own (the two ways ``txloom.aioloop`` runs it).
"""

from __future__ import annotations

import pytest
import pytest_twisted
from google.protobuf import duration_pb2, struct_pb2
from google.rpc import status_pb2
from zope.interface.verify import verifyObject

from support.rpc_grpc import (
    RecordingRegistry,
    grpc,
    hello,
    on_loop,
    raw_bytes_connect,
    raw_connect,
)
from support.waiting import until
from txloom.interfaces import IRPCPeer, IRPCServerTransport
from txloom.rpc.grpc import GrpcServerTransport
from txloom.rpc.grpc.proto.aperture.rpc.v1 import rpc_pb2
from txloom.wire.rpc import ErrorResponse, Request, Response

RUNNERS = ["same", "thread"]


async def serving(registry: RecordingRegistry, runner: str, **kw) -> GrpcServerTransport:
    transport = GrpcServerTransport(registry, runner=runner, **kw)
    await transport.start()
    return transport


async def status_of(call) -> grpc.StatusCode:
    return await on_loop(call.code())


@pytest.mark.parametrize("runner", RUNNERS)
@pytest_twisted.ensureDeferred
async def test_hello_request_response_error_cancel_on_the_aperture_wire(runner: str) -> None:
    registry = RecordingRegistry(token="s3cret")
    transport = await serving(registry, runner)
    assert verifyObject(IRPCServerTransport, transport)
    channel, call = raw_connect(transport.port, token="s3cret")
    try:
        await on_loop(call.write(hello("agent-1", next_id=7)))
        await until(lambda: "agent-1" in registry.peers, what="the hello")
        peer = registry.peers["agent-1"]
        assert verifyObject(IRPCPeer, peer)
        assert (peer.name, peer.transport) == ("agent-1", "grpc")
        assert registry.hellos[0].next_id == 7 and registry.hellos[0].token == "s3cret"

        peer.send_request(Request(7, "agents.Ping", 1500, b"\x08\x01"))
        down = await on_loop(call.read())
        assert down.WhichOneof("command") == "request"
        assert down.request.id == 7
        assert down.request.timeout == duration_pb2.Duration(seconds=1, nanos=500_000_000)
        assert down.request.payload.type_url == "type.googleapis.com/agents.Ping"
        assert down.request.payload.value == b"\x08\x01"

        await on_loop(
            call.write(rpc_pb2.ClientToServer(response=rpc_pb2.Response(id=7, payload=b"pong")))
        )
        await until(lambda: registry.responses_of("agent-1"), what="the response")
        assert registry.responses_of("agent-1") == [Response(7, b"pong")]

        peer.send_cancel(8)
        down = await on_loop(call.read())
        assert down.WhichOneof("command") == "cancel_id" and down.cancel_id == 8

        detail = struct_pb2.Value(string_value="why")
        error = status_pb2.Status(code=5, message="no such thing")
        error.details.add().Pack(detail)
        await on_loop(
            call.write(rpc_pb2.ClientToServer(response=rpc_pb2.Response(id=9, error=error)))
        )
        await until(lambda: len(registry.responses_of("agent-1")) == 2, what="the error")
        assert registry.responses_of("agent-1")[1] == ErrorResponse(
            9, "not_found", "no such thing", "why"
        )

        # an agent that ends its stream has left
        await on_loop(call.done_writing())
        await until(lambda: registry.departures, what="the departure")
        assert registry.departures[0][0] == "agent-1"
        assert await status_of(call) == grpc.StatusCode.OK
    finally:
        await on_loop(channel.close())
        await transport.stop()


@pytest.mark.parametrize("runner", RUNNERS)
@pytest_twisted.ensureDeferred
async def test_refused_malformed_and_out_of_order_streams_end_alone(runner: str) -> None:
    registry = RecordingRegistry(token="s3cret")
    transport = await serving(registry, runner)
    good_channel, good = raw_connect(transport.port, token="s3cret")
    channels = [good_channel]
    try:
        await on_loop(good.write(hello("good")))
        await until(lambda: "good" in registry.peers)

        # bad token: the registry's refusal is the stream's status
        channel, call = raw_connect(transport.port, token="wrong")
        channels.append(channel)
        await on_loop(call.write(hello("intruder")))
        assert await status_of(call) == grpc.StatusCode.UNAUTHENTICATED
        assert "bad token" in await on_loop(call.details())

        # bytes that are not a ClientToServer
        channel, call = raw_bytes_connect(transport.port)
        channels.append(channel)
        await on_loop(call.write(b"\x0a\xff\xff\xff\xff\x0f"))  # a length past the end
        assert await status_of(call) == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed" in await on_loop(call.details())

        # a response before any hello
        channel, call = raw_connect(transport.port, token="s3cret")
        channels.append(channel)
        await on_loop(call.write(rpc_pb2.ClientToServer(response=rpc_pb2.Response(id=1))))
        assert await status_of(call) == grpc.StatusCode.INVALID_ARGUMENT

        # the first agent is served throughout
        registry.peers["good"].send_request(Request(0, "agents.Ping", 100, b""))
        down = await on_loop(good.read())
        assert down.request.id == 0
        assert [name for name, _ in registry.departures] == []
    finally:
        for channel in channels:
            await on_loop(channel.close())
        await transport.stop()


@pytest.mark.parametrize("runner", RUNNERS)
@pytest_twisted.ensureDeferred
async def test_joined_stream_misbehaving_is_dropped_and_reported(runner: str) -> None:
    registry = RecordingRegistry()
    transport = await serving(registry, runner)
    channels = []
    try:
        for name, second in [("twice", hello("twice").SerializeToString()), ("junk", b"\xff")]:
            channel, call = raw_bytes_connect(transport.port)
            channels.append(channel)
            await on_loop(call.write(hello(name).SerializeToString()))
            await until(lambda name=name: name in registry.peers, what=f"{name} joined")
            await on_loop(call.write(second))
            assert await status_of(call) == grpc.StatusCode.INVALID_ARGUMENT
            await until(lambda name=name: name in dict(registry.departures), what=f"{name} left")
        reasons = dict(registry.departures)
        assert "second hello" in reasons["twice"]
        assert "malformed" in reasons["junk"]
    finally:
        for channel in channels:
            await on_loop(channel.close())
        await transport.stop()


@pytest.mark.parametrize("runner", RUNNERS)
@pytest_twisted.ensureDeferred
async def test_replaced_vanished_and_overflowing_agents(runner: str) -> None:
    registry = RecordingRegistry()
    transport = await serving(registry, runner, send_queue_limit=64 * 1024)
    channels = []
    try:
        # same name twice: the older stream is ended with CANCELLED, and not reported as left
        first_channel, first = raw_connect(transport.port)
        second_channel, second = raw_connect(transport.port)
        channels += [first_channel, second_channel]
        await on_loop(first.write(hello("twin")))
        await until(lambda: "twin" in registry.peers)
        old = registry.peers["twin"]
        await on_loop(second.write(hello("twin")))
        await until(lambda: registry.peers.get("twin") not in (None, old))
        assert await status_of(first) == grpc.StatusCode.CANCELLED
        assert registry.departures == []

        # an agent whose connection goes away is reported at once
        gone_channel, gone = raw_connect(transport.port)
        await on_loop(gone.write(hello("gone")))
        await until(lambda: "gone" in registry.peers)
        await on_loop(gone_channel.close())
        await until(lambda: "gone" in dict(registry.departures), what="the departure")

        # an agent that never reads: past the queue limit it is dropped
        slow_channel, slow = raw_connect(transport.port)
        channels.append(slow_channel)
        await on_loop(slow.write(hello("slow")))
        await until(lambda: "slow" in registry.peers)
        peer = registry.peers["slow"]
        for i in range(400):
            peer.send_request(Request(i, "agents.Big", 1000, b"x" * 16384))
        await until(lambda: "slow" in dict(registry.departures), what="the overflow")
        assert "bytes waiting" in dict(registry.departures)["slow"]
    finally:
        for channel in channels:
            await on_loop(channel.close())
        await transport.stop()


@pytest_twisted.ensureDeferred
async def test_a_stream_without_hello_is_ended_in_time() -> None:
    registry = RecordingRegistry()
    transport = await serving(registry, "same", hello_timeout=0.2)
    channel, call = raw_connect(transport.port)
    try:
        assert await status_of(call) == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        await on_loop(channel.close())
        await transport.stop()


def test_listen_addresses() -> None:
    from pathlib import Path

    from txloom.rpc.grpc.address import parse_connect_url, parse_listen

    assert parse_listen("tcp:7000").address == "[::]:7000"
    assert parse_listen("tcp:7000:interface=127.0.0.1").address == "127.0.0.1:7000"
    assert parse_listen(r"tcp:port=7000:interface=\:\:1").address == "[::1]:7000"
    assert parse_listen("unix:/tmp/rpc.sock").address == "unix:/tmp/rpc.sock"
    assert parse_listen("localhost:7000").address == "localhost:7000"
    tls = parse_listen("ssl:7000:privateKey=k.pem:certKey=c.pem:caCerts=ca.pem").tls
    assert tls is not None and (tls.key, tls.cert, tls.client_ca) == (
        Path("k.pem"),
        Path("c.pem"),
        Path("ca.pem"),
    )
    for bad in ["tcp:", "tcp:x", "ssl:7000", "tcp:7000:bogus=1", "nonsense", "unix:"]:
        with pytest.raises(ValueError):
            parse_listen(bad)
    assert parse_connect_url("grpc://127.0.0.1:7000") == ("127.0.0.1:7000", None)
    target, client_tls = parse_connect_url("grpcs://[::1]:7000?ca=ca.pem&server_name=ctl")
    assert target == "[::1]:7000" and client_tls is not None
    assert (client_tls.ca, client_tls.server_name) == (Path("ca.pem"), "ctl")
    for bad in ["tcp://h:1", "grpc://h", "grpc://h:1?ca=x", "grpcs://h:1?bogus=1"]:
        with pytest.raises(ValueError):
            parse_connect_url(bad)
