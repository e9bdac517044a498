"""Push subscriptions over real sockets: filters, catch-up, slow subscribers."""

from __future__ import annotations

import queue
import socket
import threading
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.internet.threads import deferToThread

from support.store import (
    RawClient,
    serve,
    tcp_address,
)
from txloom.store import Fact, NetworkBackend
from txloom.store.config import FsyncPolicy, SlowSubscriberPolicy


def make_server(tmp_path: Path, **overrides):
    return serve(tmp_path / "data", **overrides)


@pytest.fixture
def server(tmp_path: Path):
    yield from make_server(tmp_path, fsync=FsyncPolicy("never"))


@pytest.fixture(params=SlowSubscriberPolicy.ALL)
def slow_server(request, tmp_path: Path):
    yield from make_server(
        tmp_path,
        backend="memory",
        subscriber_max_events=50,
        subscriber_max_bytes=1 << 20,
        slow_subscriber=request.param,
    )


def drain(q: queue.Queue, count: int, timeout: float = 10.0) -> list:
    deadline = time.monotonic() + timeout
    out = []
    while len(out) < count:
        out.append(q.get(timeout=max(0.01, deadline - time.monotonic())))
    return out


def filters_and_fan_out(address: str) -> dict[str, list[Fact]]:
    with NetworkBackend(address=address) as nb:
        seen = {name: queue.Queue() for name in ("tasks", "other", "both", "all", "all2")}
        subs = [
            nb.subscribe(["tasks"], seen["tasks"].put),
            nb.subscribe(["other"], seen["other"].put),
            nb.subscribe(["tasks", "other"], seen["both"].put),
            nb.subscribe([], seen["all"].put),
            nb.subscribe((), seen["all2"].put),
        ]
        written = []
        for i in range(30):
            store = ("tasks", "other", "third")[i % 3]
            fact = Fact.build(store=store, key=i, value=i)
            nb.write_fact(fact)  # acknowledged after the subscriptions: must be pushed
            written.append(fact)
        out = {
            "tasks": drain(seen["tasks"], 10),
            "other": drain(seen["other"], 10),
            "both": drain(seen["both"], 20),
            "all": drain(seen["all"], 30),
            "all2": drain(seen["all2"], 30),
            "written": written,
        }
        # nothing more arrives for the filtered ones: one more write to "tasks" comes next
        marker = Fact.build(store="tasks", key="marker", value=None)
        nb.write_fact(marker)
        out["next_tasks"] = [seen["tasks"].get(timeout=10)]
        out["next_other_empty"] = seen["other"].empty()
        for sub in subs:
            sub.close()
    return out


@pytest_twisted.ensureDeferred
async def test_store_filters_all_stores_and_several_subscribers(server) -> None:
    out = await deferToThread(filters_and_fan_out, tcp_address(server))
    written = out["written"]
    assert out["tasks"] == [f for f in written if f.store == "tasks"]
    assert out["other"] == [f for f in written if f.store == "other"]
    assert out["both"] == [f for f in written if f.store != "third"]
    assert out["all"] == written and out["all2"] == written
    assert [f.seq for f in out["all"]] == list(range(1, 31))
    assert out["next_tasks"][0].key == "marker"
    assert out["next_other_empty"]
    assert len(server.factory.hub) == 0  # closed subscriptions are gone


def catch_up_across_the_boundary(address: str) -> tuple[list[int], list[int]]:
    total = 1200
    with NetworkBackend(address=address) as nb:
        for i in range(400):
            nb.write_fact(Fact.build(store="even" if i % 2 == 0 else "odd", key=i, value=i))
        stop = threading.Event()

        def writer() -> None:
            with NetworkBackend(address=address) as w:
                for i in range(400, total):
                    w.write_fact(Fact.build(store="even" if i % 2 == 0 else "odd", key=i, value=i))
            stop.set()

        thread = threading.Thread(target=writer)
        thread.start()
        got_all: queue.Queue[Fact] = queue.Queue()
        got_even: queue.Queue[Fact] = queue.Queue()
        # subscribe while the writer is running: catch-up and live overlap
        sub_all = nb.subscribe([], got_all.put, since=150)
        sub_even = nb.subscribe(["even"], got_even.put, since=0)
        thread.join()
        all_seqs = [f.seq for f in drain(got_all, total - 150, timeout=30)]
        even_keys = [f.key for f in drain(got_even, total // 2, timeout=30)]
        assert got_all.empty() and got_even.empty()
        sub_all.close()
        sub_even.close()
    return all_seqs, even_keys


@pytest_twisted.ensureDeferred
async def test_catch_up_has_no_gap_and_no_duplicate(server) -> None:
    all_seqs, even_keys = await deferToThread(catch_up_across_the_boundary, tcp_address(server))
    assert all_seqs == list(range(151, 1201))
    assert even_keys == list(range(0, 1200, 2))


def stalled_subscriber(address: str, policy: str, writes: int) -> dict:
    """One subscriber stops reading; one writer goes on. Returns what each side saw."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # stop autotuning
    host, _, port = address.rpartition(":")
    raw.connect((host, int(port)))
    client = RawClient.__new__(RawClient)
    client.sock = raw
    client._buffer = bytearray()
    client.decoder = None
    assert client.rpc({"op": "subscribe", "stores": ["big"]}) == {"ok": True}
    latencies = []
    value = "v" * 4000
    with NetworkBackend(address=address) as nb:
        started = time.monotonic()
        for i in range(writes):
            t = time.monotonic()
            nb.write_fact(Fact.build(store="big", key=i, value=value))
            latencies.append(time.monotonic() - t)
        elapsed = time.monotonic() - started
    # now the subscriber reads what it was sent
    events = []
    accounted = 0  # events delivered or reported dropped
    raw.settimeout(10)
    while True:
        event = client.read()
        if event is None:
            break
        events.append(event)
        accounted += event.get("dropped", 1)
        # skipping ahead keeps the connection open: stop once every write is accounted
        # for (the last write itself may have been dropped by an overflow)
        if policy == SlowSubscriberPolicy.SKIP and accounted == writes:
            break
    raw.close()
    latencies.sort()
    return {"events": events, "elapsed": elapsed, "latencies": latencies}


@pytest_twisted.ensureDeferred
async def test_a_stalled_subscriber_never_slows_writers(slow_server) -> None:
    policy = slow_server.config.slow_subscriber
    high_water = []

    def watch() -> None:
        for sub in slow_server.factory.hub._subscribers:
            high_water.append(len(sub.queue.events))

    watcher = task.LoopingCall(watch)
    watcher.start(0.005)
    writes = 1500
    try:
        out = await deferToThread(stalled_subscriber, tcp_address(slow_server), policy, writes)
    finally:
        watcher.stop()
    # the writer never waited for the subscriber: every write was acknowledged while the
    # subscriber read nothing at all (had writes waited on it, they would have timed out)
    assert len(out["latencies"]) == writes
    # the server never held more than the configured queue for it
    assert high_water and max(high_water) <= 50
    events = out["events"]
    kinds = [e["event"] for e in events]
    assert "overflow" in kinds
    delivered = [e["seq"] for e in events if e["event"] == "fact_written"]
    dropped = sum(e["dropped"] for e in events if e["event"] == "overflow")
    assert delivered == sorted(delivered) and len(set(delivered)) == len(delivered)
    if policy == SlowSubscriberPolicy.DISCONNECT:
        assert kinds[-1] == "overflow"  # then the server closed the connection
        assert delivered + list(range(len(delivered) + 1, len(delivered) + dropped + 1)) == list(
            range(1, len(delivered) + dropped + 1)
        )
    else:
        # skipped ahead: everything is either delivered or counted as dropped
        assert len(delivered) + dropped == writes


@pytest_twisted.ensureDeferred
async def test_a_write_in_flight_when_subscribing_is_still_delivered(tmp_path: Path) -> None:
    """A subscriber registered while a group commit is being fsynced gets that batch:
    its writes are acknowledged after the subscribe ack."""
    from twisted.internet import reactor
    from twisted.internet.testing import StringTransport

    from txloom.store.backend import file_backend
    from txloom.store.fact import encode_fact, meta_of, normalize_fact
    from txloom.store.subscriptions import Subscriber, SubscriberQueue, SubscriptionHub

    backend = file_backend(reactor, str(tmp_path / "data"))
    await backend.open()
    hub = SubscriptionHub(backend, reactor)
    fact = normalize_fact({"id": "in-flight", "store": "tasks"})
    written = backend.append(encode_fact(fact), meta_of(fact))
    backend._pump()  # the batch is formed and handed to the writer thread now
    assert backend._busy and not written.called
    transport = StringTransport()
    queue_ = SubscriberQueue(
        transport,
        max_events=10,
        max_bytes=1 << 20,
        policy=SlowSubscriberPolicy.DISCONNECT,
        clock=reactor,
        close_timeout=1.0,
        close=transport.loseConnection,
    )
    hub.add(Subscriber(hub, queue_, ["tasks"], None))
    assert await written == 1
    assert b'"id":"in-flight"' in transport.value()
    await backend.close()
