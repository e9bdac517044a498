"""Receipts and waits: replies, MsgNotWanted, timeouts, back-to-back request/reply."""

from __future__ import annotations

import time

import pytest
import pytest_twisted
import txaio
from twisted.internet.defer import Deferred

from support.bus import clocked_bus, settle
from txloom.bus import Bus, ConnectionClosed, Message, MsgNotWanted, WaitTimeout


def responder(bus: Bus, msg_type: str = "q") -> None:
    pod = bus.connect()
    pod.on_type(msg_type, lambda m: pod.reply_to(m, Message.new("a", m.data)))


def outcome(d: Deferred) -> list[object]:
    out: list[object] = []
    d.addCallbacks(out.append, lambda f: out.append(f.value))
    return out


def test_wait_until_gets_the_reply_despite_a_type_filter() -> None:
    bus, clock = clocked_bus()
    responder(bus)
    asker = bus.connect()
    handled: list[Message] = []
    asker.on_type("unrelated", handled.append)
    receipt = asker.send(Message.new("q", b"42"))
    got = outcome(receipt.wait_until(1.0))
    settle(clock)
    assert len(got) == 1
    reply = got[0]
    assert isinstance(reply, Message)
    assert reply.response_to == receipt.uuid
    assert reply.data == b"42"
    assert handled == []
    assert clock.getDelayedCalls() == []  # the timeout was cancelled


def test_wait_until_times_out_with_wait_timeout() -> None:
    bus, clock = clocked_bus()
    asker = bus.connect()
    receipt = asker.send(Message.new("nobody.answers"))
    got = outcome(receipt.wait_until(2.5))
    settle(clock)
    clock.advance(2.4)
    assert got == []
    clock.advance(0.2)
    assert len(got) == 1
    assert isinstance(got[0], WaitTimeout)
    assert isinstance(got[0], TimeoutError)
    assert receipt.uuid in str(got[0])
    assert asker._reply_waiters == {}


def test_not_wanted_replies_keep_the_wait_going_and_reach_the_handler() -> None:
    bus, clock = clocked_bus()
    asker = bus.connect()
    handled: list[bytes] = []
    asker.on(lambda m: handled.append(m.data))
    receipt = asker.send(Message.new("q"))
    other = bus.connect()

    def only_final(m: Message) -> object:
        if m.data == b"progress":
            raise MsgNotWanted()
        if m.data == b"progress2":
            return MsgNotWanted
        return "accepted"

    got = outcome(receipt.wait_on(only_final))
    for data in (b"progress", b"progress2", b"final"):
        other.send(Message.new_reply_to("a", receipt.uuid, data))
    settle(clock)
    assert [m.data for m in got] == [b"final"]  # type: ignore[attr-defined]
    assert handled == [b"progress", b"progress2"]


def test_a_failing_wait_function_ends_the_wait_with_its_error() -> None:
    bus, clock = clocked_bus()
    asker = bus.connect()
    receipt = asker.send(Message.new("q"))
    got = outcome(receipt.wait_on(lambda m: 1 / 0))
    bus.connect().send(Message.new_reply_to("a", receipt.uuid))
    settle(clock)
    assert isinstance(got[0], ZeroDivisionError)


def test_on_reply_calls_back_in_the_background() -> None:
    bus, clock = clocked_bus()
    responder(bus)
    asker = bus.connect()
    replies: list[bytes] = []
    asker.send(Message.new("q", b"1")).on_reply(lambda m: replies.append(m.data))
    settle(clock)
    assert replies == [b"1"]


def test_pod_wait_on_sees_any_message() -> None:
    bus, clock = clocked_bus()
    pod = bus.connect()
    handled: list[str] = []
    pod.on(lambda m: handled.append(m.msg_type))
    got = outcome(pod.wait_until(1.0, lambda m: None if m.msg_type == "b" else MsgNotWanted))
    sender = bus.connect()
    for t in ("a", "b", "c"):
        sender.send(Message.new(t))
    settle(clock)
    assert [m.msg_type for m in got] == ["b"]  # type: ignore[attr-defined]
    assert handled == ["a", "c"]
    timed = outcome(pod.wait_until(1.0))
    clock.advance(1.0)
    assert isinstance(timed[0], WaitTimeout)


def test_waits_fail_with_connection_closed_on_disconnect() -> None:
    bus, clock = clocked_bus()
    pod = bus.connect()
    receipt = pod.send(Message.new("q"))
    reply_wait = outcome(receipt.wait_until(5.0))
    pod_wait = outcome(pod.wait_on())
    pod.disconnect()
    assert isinstance(reply_wait[0], ConnectionClosed)
    assert isinstance(pod_wait[0], ConnectionClosed)
    assert [c for c in clock.getDelayedCalls() if c.getTime() > 0] == []  # timers cancelled
    late = outcome(receipt.wait_on())
    assert isinstance(late[0], ConnectionClosed)


@pytest_twisted.ensureDeferred
async def test_a_thousand_back_to_back_request_replies() -> None:
    bus = Bus()
    responder(bus)
    asker = bus.connect()
    started = time.perf_counter()
    for i in range(1000):
        data = str(i).encode()
        reply = await asker.send(Message.new("q", data)).wait_until(2.0)
        assert reply.data == data
    elapsed = time.perf_counter() - started
    assert elapsed < 10, f"1000 round trips took {elapsed:.2f}s"
    await bus.stop()


@pytest_twisted.ensureDeferred
async def test_wait_until_timeout_on_the_real_reactor() -> None:
    bus = Bus()
    asker = bus.connect()
    with pytest.raises(WaitTimeout):
        await asker.send(Message.new("nobody")).wait_until(0.05)
    await bus.stop()


@pytest_twisted.ensureDeferred
async def test_deferreds_are_txaio_futures() -> None:
    """Library code written against txaio (in its Twisted flavour) can use the waits."""
    txaio.use_twisted()
    bus = Bus()
    responder(bus)
    asker = bus.connect()
    wait = asker.send(Message.new("q", b"tx")).wait_until(2.0)
    assert txaio.is_future(wait)
    seen: list[bytes] = []
    txaio.add_callbacks(wait, lambda m: seen.append(m.data), None)
    await wait
    assert seen == [b"tx"]
    await bus.stop()
