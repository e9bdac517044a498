"""The agent side without a network: handler kinds, errors, cancellation, deadlines."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from txloom.interfaces import IRPCDispatcher
from txloom.rpc import Dispatcher, HandlerRegistry, NotFound, rpc_type
from txloom.rpc.codecs import encode_value
from txloom.rpc.session import AgentSession
from txloom.wire.rpc import Cancel, ErrorResponse, Hello, InvalidMessage, Request, Response


@rpc_type("t.Job")
@dataclass
class Job:
    n: int


def request(kind: str = "t.Job", payload: bytes | None = None, timeout_ms: int = 0, rid=1):
    return Request(rid, kind, timeout_ms, encode_value(Job(3)) if payload is None else payload)


def answer(d: Deferred):
    out: list[object] = []
    d.addBoth(out.append)
    assert out, "no answer"
    return out[0]


def test_handler_kinds_and_errors() -> None:
    registry = HandlerRegistry()
    registry.register(Job, lambda job: Job(job.n * 2))
    registry.register("raw.Echo", lambda data: succeed(data + b"!"))
    registry.register("raw.Missing", lambda _: (_ for _ in ()).throw(NotFound("gone")))
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Job, lambda job: None)
    dispatcher = Dispatcher(registry, clock=Clock())
    assert verifyObject(IRPCDispatcher, dispatcher)
    assert answer(dispatcher.dispatch(request())) == Response(1, encode_value(Job(6)))
    assert answer(dispatcher.dispatch(request("raw.Echo", b"hi"))) == Response(1, b"hi!")
    assert answer(dispatcher.dispatch(request("raw.Missing", b""))).code == "not_found"
    assert answer(dispatcher.dispatch(request("nope"))).code == "unavailable"
    bad = answer(dispatcher.dispatch(request(payload=b"\xff\xff")))
    assert bad.code == "invalid_argument"


def test_coroutine_handler_is_really_cancelled() -> None:
    seen: list[str] = []
    gate: Deferred[None] = Deferred()

    async def slow(job: Job) -> Job:
        try:
            await gate
        except CancelledError:
            seen.append("cancelled")
            raise
        return job

    registry = HandlerRegistry()
    registry.register(Job, slow)
    d = Dispatcher(registry, clock=Clock()).dispatch(request())
    assert not d.called
    d.cancel()
    assert seen == ["cancelled"]
    assert answer(d).code == "cancelled"


def test_deadline_on_the_agent_clock() -> None:
    clock = Clock()
    registry = HandlerRegistry()
    registry.register(Job, lambda job: Deferred())
    dispatcher = Dispatcher(registry, clock=clock, deadline_grace=0.5)
    d = dispatcher.dispatch(request(timeout_ms=1000))
    clock.advance(1.4)
    assert not d.called
    clock.advance(0.2)
    assert answer(d).code == "deadline_exceeded"
    assert dispatcher.running == 0


def test_handler_raising_reports_internal_without_traceback() -> None:
    def broken(job: Job) -> None:
        raise KeyError("disk")

    registry = HandlerRegistry()
    registry.register(Job, broken)
    out = answer(Dispatcher(registry, clock=Clock()).dispatch(request()))
    assert isinstance(out, ErrorResponse)
    assert (out.code, out.message) == ("internal", "'disk'")


@pytest_twisted.ensureDeferred
async def test_asyncio_future_handler() -> None:
    async def on_loop(job: Job) -> Job:
        await asyncio.sleep(0)
        return Job(job.n + 1)

    registry = HandlerRegistry()
    registry.register(Job, lambda job: asyncio.ensure_future(on_loop(job)))
    out = await Dispatcher(registry).dispatch(request())
    assert out == Response(1, encode_value(Job(4)))


def test_session_drops_late_answers_and_refuses_odd_messages() -> None:
    registry = HandlerRegistry()
    gates: dict[int, Deferred] = {}
    registry.register(Job, lambda job: gates.setdefault(job.n, Deferred()))
    sent: list[object] = []
    session = AgentSession(Dispatcher(registry, clock=Clock()), sent.append)
    session.received(request(rid=1))
    session.received(Cancel(1))
    assert [getattr(m, "code", None) for m in sent] == []  # cancelled: nothing sent
    with pytest.raises(InvalidMessage):
        session.received(Hello("x", 1))
    session.received(Request(2, "t.Job", 0, encode_value(Job(9))))
    with pytest.raises(InvalidMessage):
        session.received(Request(2, "t.Job", 0, encode_value(Job(9))))
    gates[9].callback(Job(1))
    assert sent == [Response(2, encode_value(Job(1)))]
    session.received(Request(3, "t.Job", 0, encode_value(Job(10))))
    session.close()
    assert sent == [Response(2, encode_value(Job(1)))]
