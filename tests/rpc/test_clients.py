"""Clients on a Clock: ids, timeouts, cancels, replacement, bounds, auth, events."""

from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass

import pytest
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txloom.interfaces import IRPCPeer, IRPCPeerRegistry
from txloom.rpc import (
    AgentJoined,
    AgentLeft,
    Cancelled,
    Clients,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    Raw,
    Unauthenticated,
    Unavailable,
    rpc_type,
)
from txloom.wire.rpc import Cancel, ErrorResponse, Hello, Request, Response


@rpc_type("t.Pong")
@dataclass
class Pong:
    n: int


@rpc_type("t.Ping", response=Pong)
@dataclass
class Ping:
    n: int


@implementer(IRPCPeer)
class MemoryPeer:
    transport = "memory"

    def __init__(self, name: str) -> None:
        self.name = name
        self.address = "here"
        self.sent: list[object] = []
        self.closed: tuple[str, str] | None = None

    def send_request(self, request: Request) -> None:
        self.sent.append(request)

    def send_cancel(self, request_id: int) -> None:
        self.sent.append(Cancel(request_id))

    def close(self, code: str, reason: str) -> None:
        self.closed = (code, reason)


def joined(clients: Clients, name: str = "a", next_id: int = 7) -> MemoryPeer:
    peer = MemoryPeer(name)
    clients.join(peer, Hello(name, next_id))
    return peer


def result_of(d):
    out: list[object] = []
    d.addBoth(out.append)
    assert out, "not fired"
    return out[0].value if hasattr(out[0], "value") else out[0]


def test_interfaces() -> None:
    assert verifyObject(IRPCPeerRegistry, Clients(clock=Clock()))
    assert verifyObject(IRPCPeer, MemoryPeer("x"))


def test_ids_start_at_next_id_and_responses_are_typed() -> None:
    clients = Clients(clock=Clock())
    peer = joined(clients)
    d1, d2 = clients.call("a", Ping(1)), clients.call("a", Ping(2))
    assert [r.id for r in peer.sent] == [7, 8]
    assert peer.sent[0] == Request(7, "t.Ping", 5000, b"\xa1an\x01")
    clients.received(peer, Response(8, b"\xa1an\x02"))
    assert result_of(d2) == Pong(2)
    clients.received(peer, ErrorResponse(7, "internal", "boom"))
    assert str(result_of(d1)) == "internal: boom"
    clients.received(peer, Response(99, b""))  # unknown id: ignored


def test_timeout_sends_cancel_and_fails_with_deadline_exceeded() -> None:
    clock = Clock()
    clients = Clients(clock=clock)
    peer = joined(clients)
    d = clients.call("a", Ping(1), timeout=2)
    clock.advance(1.9)
    assert not d.called
    clock.advance(0.2)
    assert isinstance(result_of(d), DeadlineExceeded)
    assert peer.sent[-1] == Cancel(7)
    clients.received(peer, Response(7, b"\xa1an\x01"))  # late: dropped
    assert clients.list()[0].in_flight == 0


def test_caller_cancel_reaches_the_agent() -> None:
    clients = Clients(clock=Clock())
    peer = joined(clients)
    d = clients.call("a", Ping(1))
    d.cancel()
    assert isinstance(result_of(d), CancelledError)
    assert peer.sent[-1] == Cancel(7)


def test_leave_fails_in_flight_calls_and_emits_events() -> None:
    clients = Clients(clock=Clock())
    events: list[object] = []
    clients.subscribe(events.append)
    peer = joined(clients)
    d = clients.call("a", Ping(1))
    clients.left(peer, "connection lost")
    assert isinstance(result_of(d), Cancelled)
    assert [type(e) for e in events] == [AgentJoined, AgentLeft]
    assert isinstance(result_of(clients.call("a", Ping(1))), NotFound)
    clients.left(peer, "again")  # a peer that already left: ignored


def test_same_name_replaces_and_closes_the_stale_peer() -> None:
    clients = Clients(clock=Clock())
    old = joined(clients)
    d = clients.call("a", Ping(1))
    new = joined(clients, next_id=1)
    assert old.closed == ("cancelled", "replaced by a newer connection")
    assert "replaced" in str(result_of(d))
    clients.left(old, "closed")  # the old transport reporting late changes nothing
    assert clients.list()[0].name == "a"
    clients.call("a", Ping(5))
    assert new.sent[-1].id == 1


def test_token_and_name_checks() -> None:
    clients = Clients(token="t0k", clock=Clock())
    with pytest.raises(Unauthenticated):
        clients.join(MemoryPeer("a"), Hello("a", 1))
    with pytest.raises(Unauthenticated):
        clients.join(MemoryPeer("a"), Hello("a", 1, "nope"))
    with pytest.raises(InvalidArgument):
        clients.join(MemoryPeer(""), Hello("", 1, "t0k"))
    with pytest.raises(InvalidArgument):
        clients.join(MemoryPeer("x"), Hello("x" * 300, 1, "t0k"))
    clients.join(MemoryPeer("a"), Hello("a", 1, "t0k"))
    assert "a" in clients


def test_per_agent_bound_fails_fast_and_spares_others() -> None:
    clients = Clients(clock=Clock(), max_pending=2)
    joined(clients, "slow")
    fast = joined(clients, "fast")
    clients.call("slow", Ping(1))
    clients.call("slow", Ping(2))
    assert isinstance(result_of(clients.call("slow", Ping(3))), Unavailable)
    d = clients.call("fast", Ping(1))
    clients.received(fast, Response(7, b"\xa1an\x01"))
    assert result_of(d) == Pong(1)


def test_call_all_maps_names_to_results_or_errors() -> None:
    clock = Clock()
    clients = Clients(clock=clock)
    a, b = joined(clients, "a"), joined(clients, "b")
    joined(clients, "c")
    d = clients.call_all(Ping(1), timeout=1)
    clients.received(a, Response(7, b"\xa1an\x01"))
    clients.received(b, ErrorResponse(7, "unavailable", "no"))
    assert not d.called
    clock.advance(1)
    out = result_of(d)
    assert out["a"] == Pong(1)
    assert isinstance(out["b"], Unavailable)
    assert isinstance(out["c"], DeadlineExceeded)


def test_raw_requests_and_explicit_response_types() -> None:
    clients = Clients(clock=Clock())
    peer = joined(clients)
    d = clients.call("a", Raw("blob.Put", b"\x00\x01"))
    assert peer.sent[-1] == Request(7, "blob.Put", 5000, b"\x00\x01")
    clients.received(peer, Response(7, b"ok"))
    assert result_of(d) == b"ok"
    d = clients.call("a", Raw("blob.Put", b""), response_type=Pong)
    clients.received(peer, Response(8, b"\xff"))
    assert isinstance(result_of(d), InvalidArgument)
    assert isinstance(result_of(clients.call("a", object())), InvalidArgument)


def test_when_joined_and_close_all() -> None:
    clients = Clients(clock=Clock())
    d = clients.when_joined("a")
    assert not d.called
    peer = joined(clients)
    assert result_of(d).name == "a"
    clients.close_all()
    assert peer.closed is not None and not clients.list()


def test_deadlines_share_one_timer_and_keep_their_order() -> None:
    clock = Clock()
    clients = Clients(clock=clock)
    peer = joined(clients)
    slow = clients.call("a", Ping(1), timeout=5)
    fast = clients.call("a", Ping(2), timeout=1)
    answered = clients.call("a", Ping(3), timeout=2)
    clients.received(peer, Response(9, b"\xa1an\x03"))
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(1)
    assert isinstance(result_of(fast), DeadlineExceeded) and not slow.called
    clock.advance(1)
    assert result_of(answered) == Pong(3)
    assert [m for m in peer.sent if isinstance(m, Cancel)] == [Cancel(8)]
    clock.advance(3)
    assert isinstance(result_of(slow), DeadlineExceeded)
    assert not clock.getDelayedCalls()


def test_a_fan_out_has_one_deadline_and_answered_calls_are_not_kept() -> None:
    clock = Clock()
    clients = Clients(clock=clock)
    peers = [joined(clients, f"a{i}") for i in range(50)]
    d = clients.call_all(Ping(1), timeout=1)
    assert len(clients._deadlines) == 1  # one for the whole fan-out, not one per agent
    single = clients.call("a0", Ping(2), timeout=1)
    for peer in peers:
        clients.received(peer, Response(7, b"\xa1an\x01"))
    clients.received(peers[0], Response(8, b"\xa1an\x02"))
    assert all(v == Pong(1) for v in result_of(d).values())
    answered = weakref.ref(single)
    del d, single
    gc.collect()
    assert answered() is None  # its deadline, still pending, does not hold the call
    clock.advance(1)
    assert not [m for p in peers for m in p.sent if isinstance(m, Cancel)]
