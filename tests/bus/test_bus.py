"""Bus semantics: delivery counts, self filter, type filter, replay, ordering, stop."""

from __future__ import annotations

import random

import pytest
from twisted.internet.defer import Deferred

from support.bus import clocked_bus, settle
from txloom.bus import Bus, Message, NoReceipt, TransportNotConfigured
from txloom.bus.buffer import MsgBuffer


def test_ten_pods_ten_messages_exactly_one_hundred_deliveries() -> None:
    bus, clock = clocked_bus()
    received: list[tuple[int, str]] = []
    for n in range(10):
        bus.connect().on(lambda msg, n=n: received.append((n, msg.uuid)))
    sender = bus.connect()
    sent = [sender.send(Message.new("t", str(i))).uuid for i in range(10)]
    settle(clock)
    assert len(received) == 100
    assert len(set(received)) == 100
    for n in range(10):
        assert [u for p, u in received if p == n] == sent
    assert bus.deliveries == 100
    assert bus.stats.messages == 10


def test_a_pod_never_receives_what_it_sent() -> None:
    bus, clock = clocked_bus()
    a, b = bus.connect(), bus.connect()
    got_a: list[Message] = []
    got_b: list[Message] = []
    a.on(got_a.append)
    b.on(got_b.append)
    for i in range(5):
        a.send(Message.new("from.a", str(i)))
        b.send(Message.new("from.b", str(i)))
    settle(clock)
    assert [m.msg_type for m in got_a] == ["from.b"] * 5
    assert [m.msg_type for m in got_b] == ["from.a"] * 5


def test_self_filter_holds_on_the_general_path_too() -> None:
    bus, clock = clocked_bus()
    a = bus.connect()
    got: list[Message] = []
    a.on_type(["t", "u"], got.append)  # a filter puts the pod on the general path
    a.send(Message.new("t"))
    bus.connect().send(Message.new("u"))
    settle(clock)
    assert [m.msg_type for m in got] == ["u"]


def test_self_filter_memory_does_not_grow() -> None:
    bus, clock = clocked_bus()
    a = bus.connect()
    a.on(lambda m: None)
    for _ in range(10_000):
        a.send(Message.new("t"))
    settle(clock)
    assert a._filter is None  # nothing is remembered per sent message
    assert len(bus.buffer) == bus.buffer.size


def test_type_filter() -> None:
    bus, clock = clocked_bus()
    pings: list[str] = []
    both: list[str] = []
    bus.connect().on_type("ping", lambda m: pings.append(m.msg_type))
    bus.connect().on_type(("ping", "pong"), lambda m: both.append(m.msg_type))
    sender = bus.connect()
    for t in ("ping", "pong", "other", "ping"):
        sender.send(Message.new(t))
    settle(clock)
    assert pings == ["ping", "ping"]
    assert both == ["ping", "pong", "ping"]


def test_filter_type_and_uuid_adjust_the_filter() -> None:
    bus, clock = clocked_bus()
    got: list[str] = []
    pod = bus.connect()
    pod.on(lambda m: got.append(m.msg_type))
    pod.filter_type("noise", False)
    sender = bus.connect()
    blocked = Message.new("keep")
    pod.filter_uuid(blocked.uuid, False)
    for m in (Message.new("keep"), Message.new("noise"), blocked, Message.new("keep")):
        sender.send(m)
    settle(clock)
    assert got == ["keep", "keep"]
    pod.on(lambda m: got.append("reset:" + m.msg_type))  # a new handler resets the filter
    sender.send(Message.new("noise"))
    settle(clock)
    assert got[-1] == "reset:noise"


def test_replay_delivers_the_last_128_of_1000_in_order() -> None:
    bus, clock = clocked_bus()
    sender = bus.connect()
    sent = []
    for i in range(1000):
        sent.append(sender.send(Message.new("t", str(i))).uuid)
        if i % 100 == 99:
            settle(clock)
    settle(clock)
    late = bus.connect_with_replay()
    live = bus.connect()
    got: list[str] = []
    live_got: list[str] = []
    late.on(lambda m: got.append(m.uuid))
    live.on(lambda m: live_got.append(m.uuid))
    assert got == sent[-128:]
    assert live_got == []  # a plain pod gets no replay
    last = sender.send(Message.new("t", "live")).uuid
    settle(clock)
    assert got == [*sent[-128:], last]
    assert live_got == [last]


def test_replay_excludes_what_the_pod_sent_and_honours_its_filter() -> None:
    bus, clock = clocked_bus()
    pod = bus.connect_with_replay()
    own = pod.send(Message.new("t")).uuid
    other = bus.connect()
    wanted = other.send(Message.new("t")).uuid
    other.send(Message.new("skip"))
    settle(clock)
    got: list[str] = []
    pod.on_type("t", lambda m: got.append(m.uuid))
    assert own != wanted
    assert got == [wanted]


def test_msg_buffer_ring() -> None:
    buf = MsgBuffer(3)
    msgs = [Message.new("t", str(i)) for i in range(5)]
    for m in msgs:
        buf.push(m, "me" if m is msgs[3] else None)
    assert list(buf) == msgs[2:]
    assert buf.messages(exclude="me") == [msgs[2], msgs[4]]
    assert buf.find(msgs[3].uuid) is msgs[3]
    assert buf.find(msgs[0].uuid) is None
    assert buf.since(msgs[2].uuid) == msgs[3:]
    assert buf.since("gone") == msgs[2:]
    with pytest.raises(ValueError):
        MsgBuffer(-1)


def test_ordering_from_each_sender_under_load() -> None:
    """Several senders interleave; fast, filtered and asynchronous (slow) pods each see
    every sender's messages in send order."""
    bus, clock = clocked_bus(pod_queue_limit=100_000)
    rng = random.Random(7)
    senders = [bus.connect() for _ in range(4)]
    seen: dict[str, list[tuple[int, int]]] = {"fast": [], "filtered": [], "slow": []}

    def record(name: str, msg: Message) -> None:
        s, i = map(int, msg.data.split(b":"))
        seen[name].append((s, i))

    bus.connect().on(lambda m: record("fast", m))
    bus.connect().on_type("load", lambda m: record("filtered", m))
    pending: list[Deferred[None]] = []

    def slow(m: Message) -> Deferred[None]:
        record("slow", m)
        d: Deferred[None] = Deferred()
        pending.append(d)
        return d

    bus.connect().on(slow)
    counts = [0] * len(senders)
    for _ in range(20_000):
        s = rng.randrange(len(senders))
        senders[s].send(Message.new("load", f"{s}:{counts[s]}"))
        counts[s] += 1
        if rng.random() < 0.01:
            settle(clock)
        while pending and rng.random() < 0.5:
            pending.pop(0).callback(None)
    settle(clock)
    while pending:
        pending.pop(0).callback(None)
    settle(clock)
    for name, got in seen.items():
        assert len(got) == 20_000, name
        for s in range(len(senders)):
            assert [i for who, i in got if who == s] == list(range(counts[s])), name


def test_send_on_a_disconnected_pod_raises_no_receipt() -> None:
    bus, _clock = clocked_bus()
    pod = bus.connect()
    pod.disconnect()
    assert not pod.connected
    assert pod not in bus.pods
    with pytest.raises(NoReceipt):
        pod.send(Message.new())
    with pytest.raises(TypeError):
        bus.connect().send("not a message")  # type: ignore[arg-type]


def test_disconnected_pod_receives_nothing_more() -> None:
    bus, clock = clocked_bus()
    got: list[Message] = []
    pod = bus.connect()
    pod.on(got.append)
    sender = bus.connect()
    sender.send(Message.new())
    settle(clock)
    pod.disconnect()
    sender.send(Message.new())
    settle(clock)
    assert len(got) == 1
    reasons: list[str] = []
    pod.when_disconnected().addCallback(reasons.append)
    assert reasons == ["disconnected by its owner"]


def test_a_handler_may_disconnect_pods_and_send_during_delivery() -> None:
    bus, clock = clocked_bus()
    got: list[str] = []
    victim_got: list[Message] = []

    def first(m: Message) -> None:
        got.append(m.msg_type)
        if m.msg_type == "kill":
            victim.disconnect()
            replier.send(Message.new("after"))

    replier = bus.connect()  # delivered to before the victim
    replier.on(first)
    victim = bus.connect()
    victim.on(victim_got.append)
    observer: list[str] = []
    bus.connect().on(lambda m: observer.append(m.msg_type))
    sender = bus.connect()
    sender.send(Message.new("kill"))
    sender.send(Message.new("second"))
    settle(clock)
    assert got == ["kill", "second"]
    assert victim_got == []
    assert observer == ["kill", "second", "after"]


def test_stop_delivers_pending_and_disconnects_every_pod() -> None:
    bus, _clock = clocked_bus()
    got: list[Message] = []
    pod = bus.connect()
    pod.on(got.append)
    bus.connect().send(Message.new())
    done: list[object] = []
    bus.stop().addCallback(done.append)
    assert done == [None]
    assert len(got) == 1
    assert bus.pods == ()
    assert not pod.connected
    with pytest.raises(RuntimeError):
        bus.connect()
    bus.stop().addCallback(done.append)  # stopping twice is fine
    assert done == [None, None]


def test_mesh_operations_without_a_mesh() -> None:
    bus, _ = clocked_bus()
    failures: list[object] = []
    bus.withdraw().addErrback(lambda f: failures.append(f.value))
    bus.connect_endpoint("ws://127.0.0.1:1/meta/message").addErrback(
        lambda f: failures.append(f.value)
    )
    assert [type(e) for e in failures] == [TransportNotConfigured] * 2


def test_bus_rejects_bad_limits() -> None:
    with pytest.raises(ValueError):
        Bus(pod_queue_limit=0)
    with pytest.raises(ValueError):
        Bus(max_failures=0)
    with pytest.raises(ValueError):
        Bus(slow_pod_policy="sometimes")
