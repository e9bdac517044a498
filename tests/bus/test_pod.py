"""Pods: failures and re-delivery, disconnect at 64, async handlers, slow-pod policies."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred, fail, succeed

from support.bus import clocked_bus, settle
from txloom.bus import MAX_FAILURES, Message, SlowPodPolicy


class Flaky(Exception):
    pass


def test_failed_messages_are_redelivered_after_the_next_success() -> None:
    bus, clock = clocked_bus()
    attempts: list[str] = []
    failing = {"a", "b"}

    def handler(m: Message) -> None:
        name = m.data.decode()
        attempts.append(name)
        if name in failing:
            failing.discard(name)  # fail once, succeed on re-delivery
            raise Flaky(name)

    pod = bus.connect()
    pod.on(handler)
    sender = bus.connect()
    for name in ("a", "b", "c", "d"):
        sender.send(Message.new("t", name))
    settle(clock)
    # a and b fail, c succeeds and brings them back before d
    assert attempts == ["a", "b", "c", "a", "b", "d"]
    assert pod.stats.failed == 2
    assert pod.stats.redelivered == 2
    assert pod.stats.delivered == 4
    assert pod.connected


def test_failed_deferreds_and_coroutines_count_as_failures() -> None:
    bus, clock = clocked_bus()
    calls: list[str] = []
    state = {"n": 0}

    async def handler(m: Message) -> None:
        calls.append(m.data.decode())
        state["n"] += 1
        if state["n"] == 1:
            raise Flaky("coroutine")
        if state["n"] == 2:
            await fail(Flaky("deferred"))

    pod = bus.connect()
    pod.on(handler)
    sender = bus.connect()
    for name in ("x", "y", "z"):
        sender.send(Message.new("t", name))
    settle(clock)
    assert calls == ["x", "y", "z", "x", "y"]
    assert pod.stats.failed == 2
    assert pod.stats.delivered == 3


def test_sixty_four_failures_in_a_row_disconnect_the_pod() -> None:
    bus, clock = clocked_bus()
    calls = [0]

    def always_fails(m: Message) -> None:
        calls[0] += 1
        raise Flaky("no")

    pod = bus.connect()
    pod.on(always_fails)
    reasons: list[str] = []
    pod.when_disconnected().addCallback(reasons.append)
    sender = bus.connect()
    for i in range(MAX_FAILURES - 1):
        sender.send(Message.new("t", str(i)))
    settle(clock)
    assert pod.connected
    assert calls[0] == MAX_FAILURES - 1
    sender.send(Message.new("t", "last straw"))
    sender.send(Message.new("t", "never seen"))
    settle(clock)
    assert not pod.connected
    assert calls[0] == MAX_FAILURES
    assert reasons == [f"{MAX_FAILURES} failures in a row"]
    assert pod not in bus.pods


def test_a_success_resets_the_failure_count() -> None:
    bus, clock = clocked_bus()
    tried: set[str] = set()
    done: list[str] = []

    def fails_first_time(m: Message) -> None:
        if m.msg_type == "bad" and m.uuid not in tried:
            tried.add(m.uuid)
            raise Flaky("first attempt")
        done.append(m.uuid)

    pod = bus.connect()
    pod.on(fails_first_time)
    sender = bus.connect()
    for _ in range(3):  # 3 x 63 failures, but never 64 in a row
        for _ in range(MAX_FAILURES - 1):
            sender.send(Message.new("bad"))
        sender.send(Message.new("good"))
        settle(clock)
    assert pod.connected
    assert len(done) == 3 * MAX_FAILURES
    assert pod.stats.failed == 3 * (MAX_FAILURES - 1)


def test_async_handler_runs_one_message_at_a_time_in_order() -> None:
    bus, clock = clocked_bus()
    running: list[Deferred[None]] = []
    order: list[str] = []

    def handler(m: Message) -> Deferred[None]:
        assert not running, "two handler calls at once"
        order.append(m.data.decode())
        d: Deferred[None] = Deferred()
        running.append(d)
        return d

    pod = bus.connect()
    pod.on(handler)
    sender = bus.connect()
    for i in range(5):
        sender.send(Message.new("t", str(i)))
    settle(clock)
    assert order == ["0"]
    assert pod.queued == 4
    while running:
        running.pop().callback(None)
        settle(clock)
    assert order == ["0", "1", "2", "3", "4"]
    assert pod.queued == 0


def test_handlers_returning_fired_deferreds_or_values_stay_on_the_fast_path() -> None:
    bus, clock = clocked_bus()
    got: list[str] = []
    a, b = bus.connect(), bus.connect()
    a.on(lambda m: (got.append("a"), succeed(None))[1])
    b.on(lambda m: got.append("b") or 42)
    sender = bus.connect()
    for _ in range(3):
        sender.send(Message.new())
    settle(clock)
    assert got.count("a") == got.count("b") == 3
    assert a.stats.delivered == b.stats.delivered == 3


def slow_setup(policy: SlowPodPolicy, limit: int = 4):
    bus, clock = clocked_bus(pod_queue_limit=limit, slow_pod_policy=policy)
    gate: list[Deferred[None]] = []
    slow = bus.connect()

    def handler(m: Message) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        gate.append(d)
        return d

    slow.on(handler)
    fast_got: list[Message] = []
    bus.connect().on(fast_got.append)
    return bus, clock, slow, gate, fast_got


def release(clock, gate) -> None:
    while gate:
        gate.pop(0).callback(None)
        settle(clock)


def test_drop_policy_drops_and_counts_only_for_the_slow_pod() -> None:
    bus, clock, slow, gate, fast_got = slow_setup(SlowPodPolicy.DROP)
    sender = bus.connect()
    for i in range(10):
        sender.send(Message.new("t", str(i)))
    settle(clock)
    # one in the handler, four queued, five dropped
    assert slow.queued == 4
    assert slow.stats.dropped == 5
    assert bus.stats.dropped == 5
    assert len(fast_got) == 10  # the fast pod is not held back
    assert not bus.paused
    release(clock, gate)
    assert slow.stats.delivered == 5


class Producer:
    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


def test_pause_policy_pauses_producers_and_loses_nothing() -> None:
    bus, clock, slow, gate, fast_got = slow_setup(SlowPodPolicy.PAUSE)
    producer = Producer()
    bus.register_producer(producer)
    sender = bus.connect()
    writable: list[object] = []
    for i in range(10):
        sender.send(Message.new("t", str(i)))
    settle(clock)
    assert bus.paused
    assert producer.events == ["pause"]
    sender.writable().addCallback(writable.append)
    assert writable == []
    assert slow.queued == 9
    assert slow.stats.dropped == 0
    assert len(fast_got) == 10
    # draining to half the limit resumes
    gate.pop(0).callback(None)
    settle(clock)
    assert bus.paused
    release(clock, gate)
    assert producer.events == ["pause", "resume"]
    assert writable == [None]
    assert slow.stats.delivered == 10
    assert bus.stats.pauses == 1
    late = Producer()
    bus.register_producer(late)
    assert late.events == []


def test_pause_policy_has_a_hard_limit() -> None:
    bus, clock, slow, _gate, _ = slow_setup(SlowPodPolicy.PAUSE, limit=2)
    sender = bus.connect()
    for i in range(20):
        sender.send(Message.new("t", str(i)))
    settle(clock)
    assert slow.queued == bus.overflow_limit == 8
    assert slow.stats.dropped == 20 - 1 - 8


def test_disconnecting_a_slow_pod_resumes_the_bus() -> None:
    bus, clock, slow, _gate, _ = slow_setup(SlowPodPolicy.PAUSE)
    sender = bus.connect()
    for i in range(10):
        sender.send(Message.new("t", str(i)))
    settle(clock)
    assert bus.paused
    slow.disconnect()
    assert not bus.paused


def test_handler_none_ignores_messages() -> None:
    bus, clock = clocked_bus()
    pod = bus.connect()
    got: list[Message] = []
    pod.on(got.append)
    pod.on(None)
    bus.connect().send(Message.new())
    settle(clock)
    assert got == []


@pytest.mark.parametrize("policy", ["pause", "drop"])
def test_policy_names(policy: str) -> None:
    bus, _ = clocked_bus(slow_pod_policy=policy)
    assert bus.slow_pod_policy.value == policy


def test_a_handler_that_replaces_itself_mid_batch() -> None:
    bus, clock = clocked_bus()
    pod = bus.connect()
    seen: list[str] = []

    def second(m: Message) -> None:
        seen.append("second:" + m.msg_type)

    def first(m: Message) -> None:
        seen.append("first:" + m.msg_type)
        pod.on(second)

    pod.on(first)
    sender = bus.connect()
    for t in ("a", "b", "c"):
        sender.send(Message.new(t))
    settle(clock)
    assert seen == ["first:a", "second:b", "second:c"]
    assert pod._fast  # back on the fast path afterwards
