"""What a call does, the same on every transport (the ``harness`` fixture's params).

Real sockets on loopback; each test runs once per transport in ``support.rpc.HARNESSES``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred

from support.rpc import Harness, sleep
from support.waiting import until
from txloom.rpc import (
    AgentJoined,
    AgentLeft,
    Cancelled,
    Clients,
    DeadlineExceeded,
    HandlerRegistry,
    Internal,
    NotFound,
    RPCError,
    Unavailable,
    rpc_type,
)


@rpc_type("test.Echo")
@dataclass
class Echo:
    text: str


Echo.__rpc_response__ = Echo  # type: ignore[attr-defined]


@rpc_type("test.Fail")
@dataclass
class Fail:
    code: str
    message: str


@rpc_type("test.Hang")
@dataclass
class Hang:
    tag: str


@rpc_type("test.Missing")
@dataclass
class Missing:
    pass


@dataclass
class Agent:
    """An agent's handlers, and what they observed."""

    name: str
    started: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)

    def handlers(self) -> HandlerRegistry:
        registry = HandlerRegistry()

        @registry.handler(Echo)
        async def echo(request: Echo) -> Echo:
            return Echo(f"{self.name}:{request.text}")

        @registry.handler(Fail)
        def fail(request: Fail) -> None:
            if request.code == "python":
                raise ValueError(request.message)
            raise RPCError.from_code(request.code, request.message, {"why": "asked"})

        @registry.handler(Hang)
        async def hang(request: Hang) -> None:
            self.started.append(request.tag)
            try:
                await Deferred()
            except CancelledError:
                self.cancelled.append(request.tag)
                raise

        return registry


async def connect(harness: Harness, clients: Clients, name: str, token: str | None = None):
    agent = Agent(name)
    transport = await harness.agent(name, agent.handlers(), token)
    await until(lambda: name in clients, what=f"{name} to join")
    return agent, transport


@pytest_twisted.ensureDeferred
async def test_call_returns_the_typed_response(harness: Harness) -> None:
    clients = Clients()
    await harness.start(clients)
    await connect(harness, clients, "a1")
    assert await clients.call("a1", Echo("hi"), timeout=5) == Echo("a1:hi")
    [info] = clients.list()
    assert (info.name, info.transport, info.in_flight) == ("a1", harness.server.name, 0)


@pytest_twisted.ensureDeferred
async def test_call_all_over_fifty_agents(harness: Harness) -> None:
    clients = Clients()
    await harness.start(clients)
    names = [f"agent-{i}" for i in range(50)]
    for name in names:
        await harness.agent(name, Agent(name).handlers())
    await until(lambda: len(clients) == 50, what="50 agents joined")
    results = await clients.call_all(Echo("x"), timeout=10)
    assert results == {name: Echo(f"{name}:x") for name in names}


@pytest_twisted.ensureDeferred
async def test_remote_errors_arrive_with_their_code(harness: Harness) -> None:
    clients = Clients()
    await harness.start(clients)
    await connect(harness, clients, "a1")
    with pytest.raises(NotFound) as e:
        await clients.call("a1", Fail("not_found", "no such disk"))
    assert (e.value.code, e.value.message, e.value.details) == (
        "not_found",
        "no such disk",
        {"why": "asked"},
    )
    with pytest.raises(Internal, match="boom"):
        await clients.call("a1", Fail("python", "boom"))
    with pytest.raises(Unavailable, match=r"test\.Missing"):
        await clients.call("a1", Missing())
    with pytest.raises(NotFound, match="nobody"):
        await clients.call("nobody", Echo("x"))
    assert await clients.call("a1", Echo("still")) == Echo("a1:still")


@pytest_twisted.ensureDeferred
async def test_timeout_cancels_the_handler_on_the_agent(harness: Harness) -> None:
    clients = Clients()
    await harness.start(clients)
    agent, _ = await connect(harness, clients, "a1")
    with pytest.raises(DeadlineExceeded):
        await clients.call("a1", Hang("t1"), timeout=0.3)
    await until(lambda: agent.cancelled == ["t1"], what="the handler to see its cancel")
    assert clients.list()[0].in_flight == 0


@pytest_twisted.ensureDeferred
async def test_agent_killed_mid_call_fails_the_call_at_once(harness: Harness) -> None:
    clients = Clients()
    await harness.start(clients)
    agent, transport = await connect(harness, clients, "a1")
    _other, _ = await connect(harness, clients, "a2")
    call = clients.call("a1", Hang("k"), timeout=60)
    await until(lambda: agent.started == ["k"], what="the handler to start")
    started = time.monotonic()
    harness.kill(transport)
    with pytest.raises(Cancelled):
        await call
    assert time.monotonic() - started < 10  # not the call's 60 s timeout
    assert "a1" not in clients
    assert await clients.call("a2", Echo("ok")) == Echo("a2:ok")


@pytest_twisted.ensureDeferred
async def test_same_name_replaces_the_stale_connection(harness: Harness) -> None:
    clients = Clients()
    events: list[object] = []
    clients.subscribe(events.append)
    await harness.start(clients)
    first, first_transport = await connect(harness, clients, "dup")
    call = clients.call("dup", Hang("old"), timeout=60)
    await until(lambda: first.started == ["old"], what="the first agent's handler to start")
    second = Agent("dup")
    await harness.agent("dup", second.handlers())
    with pytest.raises(Cancelled, match="replaced"):
        await call
    await until(lambda: len(events) >= 3, what="the leave and join events")
    assert [type(e) for e in events[:3]] == [AgentJoined, AgentLeft, AgentJoined]
    assert "replaced" in events[1].reason  # type: ignore[attr-defined]
    # The stale session is gone for good: its handler was cancelled.
    await until(lambda: first.cancelled == ["old"], what="the stale handler cancelled")
    # (A replaced agent that is still alive reconnects and takes its name back: two live
    # agents must not share a name. Stop the first one; the second holds the name.)
    await first_transport.stop()
    for _ in range(100):  # the first agent's last hello may still be on its way
        await until(lambda: "dup" in clients, what="the name to be held again")
        try:
            assert (await clients.call("dup", Echo("x"))).text == "dup:x"
            break
        except Cancelled:
            await sleep(0.02)
    assert len(clients) == 1


@pytest_twisted.ensureDeferred
async def test_auth_failure_keeps_the_agent_out(harness: Harness) -> None:
    clients = Clients(token="s3cret")
    await harness.start(clients)
    await harness.agent("intruder", Agent("intruder").handlers(), token="wrong")
    _good, _ = await connect(harness, clients, "good", token="s3cret")
    assert [a.name for a in clients.list()] == ["good"]
    assert await clients.call("good", Echo("x")) == Echo("good:x")
    with pytest.raises(NotFound):
        await clients.call("intruder", Echo("x"))


@pytest_twisted.ensureDeferred
async def test_malformed_input_drops_only_that_connection(harness: Harness) -> None:
    clients = Clients()
    await harness.start(clients)
    await connect(harness, clients, "a1")
    await harness.send_garbage()
    assert await clients.call("a1", Echo("after")) == Echo("a1:after")
    assert [a.name for a in clients.list()] == ["a1"]
