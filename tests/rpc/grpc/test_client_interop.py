"""The txloom agent's gRPC transport against a controller written with grpcio alone.

The controller is the generated ``CoordinatorServicer`` and nothing of txloom's, so what
passes here is the aperture wire itself, in both of ``txloom.aioloop``'s modes.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from google.protobuf import any_pb2, duration_pb2
from zope.interface.verify import verifyObject

from support.processes import free_port
from support.rpc_grpc import RawController, RecordingDispatcher, on_loop
from support.waiting import until
from txloom.interfaces import IRPCClientTransport
from txloom.rpc.grpc import GrpcClientTransport
from txloom.rpc.grpc.proto.aperture.rpc.v1 import rpc_pb2

RUNNERS = ["same", "thread"]


def request(rid: int, type_name: str, payload: bytes = b"", timeout_s: int = 5):
    return rpc_pb2.ServerToClient(
        request=rpc_pb2.Request(
            id=rid,
            timeout=duration_pb2.Duration(seconds=timeout_s),
            payload=any_pb2.Any(type_url=f"type.googleapis.com/{type_name}", value=payload),
        )
    )


@pytest.mark.parametrize("runner", RUNNERS)
@pytest_twisted.ensureDeferred
async def test_agent_answers_and_cancels_for_a_raw_grpcio_controller(runner: str) -> None:
    controller = RawController()
    port = await on_loop(controller.start())
    dispatcher = RecordingDispatcher()
    agent = GrpcClientTransport(
        f"127.0.0.1:{port}",
        "agent-7",
        dispatcher,
        token="tok",
        runner=runner,
        reconnect_initial=0.05,
    )
    assert verifyObject(IRPCClientTransport, agent)
    await agent.start()
    try:
        await until(lambda: controller.hellos and agent.connected, what="the hello")
        assert controller.hellos == [("agent-7", 0, "Bearer tok")]

        controller.send("agent-7", request(0, "test.Echo", b"ping"))
        response = await on_loop(controller.response("agent-7"))
        assert (response.id, response.WhichOneof("result"), response.payload) == (
            0,
            "payload",
            b"ping",
        )
        assert dispatcher.requests[0].timeout_ms == 5000

        controller.send("agent-7", request(1, "test.Fail"))
        response = await on_loop(controller.response("agent-7"))
        assert response.WhichOneof("result") == "error"
        assert (response.error.code, response.error.message) == (5, "no such thing")

        controller.send("agent-7", request(2, "no.Such"))
        response = await on_loop(controller.response("agent-7"))
        assert response.error.code == 14  # unavailable

        # cancel reaches the handler, and its late result is not sent
        controller.send("agent-7", request(3, "test.Hang"))
        await until(lambda: len(dispatcher.requests) == 4, what="the hanging request")
        controller.send("agent-7", rpc_pb2.ServerToClient(cancel_id=3))
        await until(lambda: dispatcher.cancelled == [3], what="the handler's cancellation")
        controller.send("agent-7", request(4, "test.Echo", b"after"))
        response = await on_loop(controller.response("agent-7"))
        assert (response.id, response.payload) == (4, b"after")

        # the controller ends the stream while a request hangs: it is cancelled, the agent
        # comes back with a new hello whose ids follow the old ones
        controller.send("agent-7", request(5, "test.Hang"))
        await until(lambda: len(dispatcher.requests) == 6)
        controller.send("agent-7", None)
        await until(lambda: dispatcher.cancelled == [3, 5], what="cancelled on disconnect")
        await until(lambda: len(controller.hellos) == 2, what="the second hello")
        assert controller.hellos[1] == ("agent-7", 6, "Bearer tok")
        await until(lambda: agent.connected)
        controller.send("agent-7", request(6, "test.Echo", b"again"))
        response = await on_loop(controller.response("agent-7"))
        assert (response.id, response.payload) == (6, b"again")
    finally:
        await agent.stop()
        await on_loop(controller.stop())
    assert not agent.connected


@pytest.mark.parametrize("runner", RUNNERS)
@pytest_twisted.ensureDeferred
async def test_agent_waits_for_a_controller_that_starts_late_and_stops_cleanly(
    runner: str,
) -> None:
    port = free_port()
    dispatcher = RecordingDispatcher()
    agent = GrpcClientTransport(
        f"127.0.0.1:{port}",
        "late",
        dispatcher,
        runner=runner,
        reconnect_initial=0.05,
        reconnect_max=0.2,
    )
    await agent.start()
    controller = RawController()
    try:
        await until(lambda: agent.sessions >= 2, what="failed attempts")
        assert not agent.connected
        await on_loop(controller.start(port))
        await until(lambda: agent.connected and controller.hellos, what="the late hello")
    finally:
        await agent.stop()
        await on_loop(controller.stop())
