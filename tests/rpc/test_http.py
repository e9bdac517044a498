"""The HTTP transports' own concerns: a controller restart, bodies that do not decode."""

from __future__ import annotations

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.web.test.requesthelper import DummyRequest

from support.processes import free_port
from support.waiting import until
from txloom.rpc import Cancelled, Clients, Dispatcher, HandlerRegistry
from txloom.rpc.codecs import encode_value
from txloom.rpc.examples.echo import Echo
from txloom.rpc.transports.http_client import HttpClientTransport
from txloom.rpc.transports.http_server import HttpServerTransport
from txloom.wire.rpc import Response, encode_batch


@pytest.mark.parametrize("mode", ["heartbeat", "longpoll"])
@pytest_twisted.ensureDeferred
async def test_agent_survives_a_controller_restart_with_its_computed_response(mode) -> None:
    port = free_port()
    listen = f"tcp:{port}:interface=127.0.0.1"
    gates: list[Deferred] = []
    handlers = HandlerRegistry()
    handlers.register(Echo, lambda request: gates.append(Deferred()) or gates[-1])
    first = Clients()
    server = HttpServerTransport(first, mode, listen, interval=0.3, hold=2.0)
    await server.start()
    agent = HttpClientTransport(
        f"{mode}+http://127.0.0.1:{port}/rpc",
        "a1",
        Dispatcher(handlers),
        reconnect_initial=0.05,
        reconnect_max=0.2,
    )
    await agent.start()
    second = Clients()
    try:
        # The controller counts the agent in before the agent has read its session token.
        await until(lambda: "a1" in first and agent.session_token is not None)
        old_token = agent.session_token
        call = first.call("a1", Echo("late"), timeout=30)
        await until(lambda: gates, what="the handler to start")
        request_id = next(iter(agent.session.running))
        # The answer is computed, and the controller goes away before it got it.
        gates[0].callback(Echo("late"))
        await server.stop()
        with pytest.raises(Cancelled):
            await call
        delivered: list[object] = []
        received = second.received
        second.received = lambda peer, r: (delivered.append(r), received(peer, r))  # type: ignore[method-assign]
        server = HttpServerTransport(second, mode, listen, interval=0.3, hold=2.0)
        await server.start()
        await until(
            lambda: "a1" in second and agent.session_token not in (None, old_token),
            what="the agent to say hello again and read its new session token",
        )
        await until(lambda: delivered, what="the computed response to arrive")
        assert delivered[0] == Response(request_id, encode_value(Echo("late")))
        later = second.call("a1", Echo("again"), timeout=10)
        await until(lambda: len(gates) == 2)
        gates[1].callback(Echo("again"))
        assert await later == Echo("again")
    finally:
        await agent.stop()
        await server.stop()


def post(server: HttpServerTransport, body: bytes, token: bytes | None = None) -> DummyRequest:
    request = DummyRequest([b"heartbeat"])
    request.method = b"POST"
    request.content = __import__("io").BytesIO(body)
    if token is not None:
        request.requestHeaders.addRawHeader(b"x-rpc-session", token)
    out = server.resource.render(request)
    if isinstance(out, bytes):
        request.write(out)
        request.finish()
    return request


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_any_body_gets_an_answer_never_a_crash(body: bytes) -> None:
    clients = Clients()
    server = HttpServerTransport(clients, "heartbeat")
    hello = post(server, encode_batch([]))  # no session yet: 410
    assert hello.responseCode == 410
    request = post(server, body)
    assert request.finished
    assert request.responseCode in (None, 200, 400, 401, 410)
    server.stop()


def test_garbage_ends_the_session_it_claims() -> None:
    from txloom.wire.rpc import Hello

    clients = Clients()
    server = HttpServerTransport(clients, "heartbeat")
    joined = post(server, encode_batch([Hello("a1", 1)]))
    token = joined.responseHeaders.getRawHeaders(b"x-rpc-session")[0]
    assert "a1" in clients
    bad = post(server, b"\xff\x00", token)
    assert bad.responseCode == 400 and "a1" not in clients
    assert post(server, encode_batch([]), token).responseCode == 410
    server.stop()
