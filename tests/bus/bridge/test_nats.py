"""The NATS bridge against a real nats-server started by the test."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nats
import pytest
import pytest_twisted
from twisted.logger import formatEvent, globalLogPublisher
from zope.interface.verify import verifyObject

from support.bus import Inbox, until, within
from support.nats import NatsGate, NatsListener, NatsServer, nats_server, on_loop  # noqa: F401
from support.processes import free_port, twistd
from txloom.bus import Bus, Message
from txloom.bus.bridge.fence import fence
from txloom.bus.bridge.nats import NatsBridge
from txloom.interfaces import IBridgeTransport

TYPES = ["orders.created", "orders.paid"]


@pytest_twisted.ensureDeferred
async def test_two_unmeshed_nodes_exchange_bridged_types_both_ways_exactly_once(
    nats_server: NatsServer,  # noqa: F811
) -> None:
    a_bus, b_bus = Bus(), Bus()
    # one bridge shares the reactor's asyncio loop, the other runs nats-py in its own thread
    a = NatsBridge(a_bus, nats_server.url, TYPES, runner="same")
    b = NatsBridge(b_bus, nats_server.url, TYPES, runner="thread")
    assert verifyObject(IBridgeTransport, a)
    assert (a.runner.mode, b.runner.mode) == ("same loop", "own thread")
    await within(a.start())
    await within(b.start())
    try:
        a_in, b_in = Inbox(a_bus.connect()), Inbox(b_bus.connect())
        a_sender, b_sender = a_bus.connect(), b_bus.connect()
        created = [a_sender.send(Message.new("orders.created", str(i))).uuid for i in range(50)]
        a_sender.send(Message.new("local.only", b"stays on a"))
        paid = [b_sender.send(Message.new("orders.paid", str(i))).uuid for i in range(50)]
        await within(b_in.until(lambda ms: sum(m.msg_type == "orders.created" for m in ms) >= 50))
        await within(a_in.until(lambda ms: sum(m.msg_type == "orders.paid" for m in ms) >= 50))
        # fences on the same subjects: whatever was going to arrive twice would be here by now
        fence_a = a_sender.send(Message.new("orders.created", b"fence")).uuid
        fence_b = b_sender.send(Message.new("orders.paid", b"fence")).uuid
        await within(b_in.has(fence_a))
        await within(a_in.has(fence_b))
        b_created = [m.uuid for m in b_in.messages if m.msg_type == "orders.created"]
        a_paid = [m.uuid for m in a_in.messages if m.msg_type == "orders.paid"]
        assert b_created == [*created, fence_a]  # exactly once, in order
        assert a_paid == [*paid, fence_b]
        # nothing came back to the side it left, and the unbridged type stayed home
        assert [m.uuid for m in a_in.messages if m.msg_type == "orders.created"] == [
            *created,
            fence_a,
        ]
        assert not any(m.msg_type == "local.only" for m in b_in.messages)
        assert a.duplicates == b.duplicates == 0
        # published counts what the server confirmed; its PONG may trail the delivery
        await until(lambda: a.published == b.published == 51, 5, "both to be confirmed")
        assert a.received == b.received == 51
        # the message crosses intact, byte for byte
        original = next(m for m in a_in.messages if m.uuid == created[7])
        copy = next(m for m in b_in.messages if m.uuid == created[7])
        assert copy.to_json() == original.to_json()
    finally:
        await a_bus.stop()
        await b_bus.stop()


@pytest_twisted.ensureDeferred
async def test_what_is_not_a_bridged_message_is_dropped(nats_server: NatsServer) -> None:  # noqa: F811
    bus = Bus()
    bridge = NatsBridge(bus, nats_server.url, TYPES)
    await within(bridge.start())
    inbox = Inbox(bus.connect())
    try:

        async def publish() -> None:
            nc = await nats.connect(nats_server.url)
            await nc.publish("orders.created", b"not json")
            wrong = Message.new("orders.shipped").to_json()
            await nc.publish("orders.created", wrong)
            good = Message.new("orders.created", b"ok")
            await nc.publish("orders.created", good.to_json())
            await nc.publish("orders.created", good.to_json())  # the same uuid again
            await nc.flush()
            await nc.drain()

        await on_loop(publish())
        await within(inbox.count(1))
        await until(lambda: bridge.duplicates == 1, 5, "the duplicate to be dropped")
        assert bridge.rejected == 2
        assert [m.data for m in inbox.messages] == [b"ok"]
    finally:
        await bus.stop()


@pytest_twisted.ensureDeferred
async def test_fence_puts_its_ping_behind_what_nats_py_buffered(tmp_path: Path) -> None:
    """nats-py's ``flush()`` writes its PING ahead of the SUB/PUB still in its buffer;
    ``fence`` makes the server see them first, so its PONG really confirms them."""
    server = NatsServer(tmp_path, "-DV")
    await server.started()

    async def probe() -> None:
        nc = await nats.connect(server.url, name="fence-probe")
        try:
            await nc.subscribe("fence.sub")
            await nc.publish("fence.pub", b"x")
            await fence(nc, 5)
        finally:
            await nc.close()

    try:
        await on_loop(probe())
        await server.proc.when(r"fence-probe.*Client connection closed", 5)
        lines = server.proc.lines
        cid = next(re.search(r" - (cid:\d+) - ", ln)[1] for ln in lines if "fence-probe" in ln)
        ops = [
            m[1] for ln in lines if f" - {cid} - " in ln and (m := re.search(r"<<- \[(\w+)", ln))
        ]
        # CONNECT and the PING nats-py sends with it, then what the fence had to follow
        assert ops == ["CONNECT", "PING", "SUB", "PUB", "PING"]
    finally:
        server.stop()


@pytest_twisted.ensureDeferred
async def test_bridge_keeps_trying_until_nats_is_there(tmp_path: Path) -> None:
    """What was sent before NATS could be reached is delivered to a subscriber that was
    there first, as is what is sent afterwards."""
    server = NatsServer(tmp_path)
    gate = NatsGate(server)  # closed: the bridge cannot reach NATS until the listener is in
    bus = Bus()
    bridge = NatsBridge(bus, gate.url, TYPES, reconnect_wait=0.05)
    listener = NatsListener()
    started = bridge.start()
    sender = bus.connect()
    early = sender.send(Message.new("orders.created", b"early")).uuid
    try:
        await until(lambda: bridge.describe()["waiting"] == 1, 5, "the early message to wait")
        assert not started.called
        assert bridge.published == 0
        await within(server.started(), 20)
        await within(listener.connect(server.url, "orders.created"))
        gate.open()
        await within(started, 10)
        assert bridge.describe()["connected"] is True
        await until(lambda: listener.received, 5, "the early message to be delivered")
        late = sender.send(Message.new("orders.created", b"late")).uuid
        await until(lambda: len(listener.received) == 2, 5, "the late message")
        assert listener.uuids() == [early, late]
        assert json.loads(listener.received[0].data)["payload"]["data"] == "ZWFybHk="
        # published counts what the server confirmed; its PONG may trail the delivery
        await until(lambda: bridge.published == 2, 5, "both to be confirmed")
        assert bridge.resent == 0
        assert bridge.describe()["waiting"] == bridge.describe()["unconfirmed"] == 0
    finally:
        await bus.stop()
        await listener.close()
        await gate.close()
        server.stop()


@pytest.mark.parametrize("runner", ["same", "thread"])
@pytest_twisted.ensureDeferred
async def test_a_nats_restart_loses_nothing_the_bridge_was_given(
    tmp_path: Path, runner: str
) -> None:
    """NATS dies and comes back on the same port while the bridge runs: what was on its way
    when it died and what the bus sent while it was away reach a subscriber on the new
    server once each, in order, and the bridge's subscriptions are back too."""
    server = NatsServer(tmp_path)
    await within(server.started(), 20)
    gate = NatsGate(server)
    gate.open()
    bus = Bus()
    bridge = NatsBridge(bus, gate.url, TYPES, runner=runner, reconnect_wait=0.05)
    listener = NatsListener()
    inbox = Inbox(bus.connect(), "orders.paid")
    try:
        await within(bridge.start())
        await within(listener.connect(server.url, "orders.created"))
        sender = bus.connect()
        before = [sender.send(Message.new("orders.created", str(i))).uuid for i in range(10)]
        await until(lambda: bridge.published == 10, 5, "the server to confirm the first ten")
        await until(lambda: len(listener.received) == 10, 5, "the first ten")

        # NATS crashes with five publications on their way to it: they never arrive
        gate.swallow()
        lost = [sender.send(Message.new("orders.created", f"lost {i}")).uuid for i in range(5)]
        await until(lambda: bridge.describe()["unconfirmed"] > 0, 5, "some to be in flight")
        in_flight = bridge.describe()["unconfirmed"]
        await gate.close()  # the bridge may reach the new server only once the listener has
        server.stop()
        await until(lambda: not bridge.describe()["connected"], 5, "the bridge to notice")
        down = [sender.send(Message.new("orders.created", f"down {i}")).uuid for i in range(20)]
        await until(lambda: bridge.describe()["waiting"] == 25 - in_flight, 5, "the rest to wait")
        assert bridge.published == 10
        assert len(listener.received) == 10

        await within(server.started(), 20)
        await until(lambda: listener.reconnects == 1, 10, "the listener to reconnect")
        await within(listener.confirmed())
        gate.open()
        await until(lambda: len(listener.received) >= 35, 10, "what waited for NATS")
        last = sender.send(Message.new("orders.created", b"last")).uuid
        await until(lambda: bridge.published == 36, 5, "the server to confirm all")
        await until(lambda: len(listener.received) >= 36, 5, "the last one")
        assert listener.uuids() == [*before, *lost, *down, last]  # exactly once, in order
        assert bridge.resent == in_flight
        assert bridge.describe()["waiting"] == bridge.describe()["unconfirmed"] == 0
        assert bridge.describe()["connected"] is True

        # and NATS -> bus works again: the bridge subscribed on the new server
        paid = Message.new("orders.paid", b"after the restart")
        await within(listener.publish("orders.paid", paid.to_json()))
        await within(inbox.has(paid.uuid))
    finally:
        await bus.stop()
        await listener.close()
        await gate.close()
        server.stop()


@pytest_twisted.ensureDeferred
async def test_a_publication_nats_would_refuse_is_dropped_not_retried(tmp_path: Path) -> None:
    config = tmp_path / "nats.conf"
    config.write_text("max_payload: 1024\n")
    server = NatsServer(tmp_path, "-c", str(config))
    await within(server.started(), 20)
    bus = Bus()
    bridge = NatsBridge(bus, server.url, TYPES)
    listener = NatsListener()
    try:
        await within(bridge.start())
        await within(listener.connect(server.url, "orders.created"))
        sender = bus.connect()
        sender.send(Message.new("orders.created", b"x" * 4096))
        small = sender.send(Message.new("orders.created", b"small")).uuid
        await until(lambda: listener.received, 5, "the small message")
        await until(lambda: bridge.published == 1, 5, "the server to confirm it")
        assert listener.uuids() == [small]
        assert bridge.oversize == 1
    finally:
        await bus.stop()
        await listener.close()
        server.stop()


@pytest_twisted.ensureDeferred
async def test_stopping_while_nats_is_unreachable_says_what_was_never_delivered() -> None:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    bus = Bus()
    bridge = NatsBridge(bus, f"nats://127.0.0.1:{free_port()}", TYPES, reconnect_wait=0.05)
    started = bridge.start()
    try:
        bus.connect().send(Message.new("orders.created"))
        await until(lambda: bridge.describe()["waiting"] == 1, 5, "the message to wait")
        await within(bus.stop(), 30)  # ends (its drain deadline), load or not
        assert started.called  # start() does not wait for ever once the bridge stopped
        said = [
            formatEvent(e)
            for e in events
            if e.get("log_namespace", "").startswith("txloom.bus.bridge")
        ]
        assert any("publications NATS never confirmed: 1" in line for line in said), said
    finally:
        globalLogPublisher.removeObserver(events.append)


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_twistd_node_bridged_through_nats(nats_server: NatsServer, tmp_path: Path) -> None:  # noqa: F811
    """A ``twistd busnode`` (default reactor: nats-py in its own thread) answers a status
    request that reaches it only through NATS, and its answer comes back the same way."""
    port = free_port()
    types = ("txloom.node.status", "txloom.node.status.reply")
    node = twistd(
        "busnode",
        f"--listen=tcp:{port}:interface=127.0.0.1",
        f"--nats={nats_server.url}",
        *(f"--bridge-type={t}" for t in types),
        "--log-messages",
        cwd=tmp_path,
    ).start()
    bus = Bus()
    try:
        await node.when(r"NATS bridge connected")
        assert "asyncio own thread" in node.output
        bridge = NatsBridge(bus, nats_server.url, types)
        await within(bridge.start())
        asker = bus.connect()
        request = asker.send(Message.new("txloom.node.status"))
        reply = await within(request.wait_until(10))
        status = json.loads(reply.data)
        assert status["bridge"]["types"] == list(types)
        match = await node.when(rf"bus message txloom\.node\.status {request.uuid} ")
        assert match
        fence = asker.send(Message.new("txloom.node.status"))
        await within(fence.wait_until(10))
        await node.when(rf"bus message txloom\.node\.status {fence.uuid} ")
        assert len(re.findall(rf" {request.uuid} ", node.output)) == 1
        assert node.terminate() == 0
    finally:
        node.kill()
        await bus.stop()


@pytest_twisted.ensureDeferred
async def test_a_bridge_carries_a_whole_mesh(nats_server: NatsServer) -> None:  # noqa: F811
    """b is meshed with a; only a is bridged. c is bridged and meshed with no one. Messages
    from b reach c through a's bridge, and c's reach b through a's mesh, once each."""
    from txloom.bus.mesh import WebSocketMesh

    buses = {name: Bus() for name in "abc"}
    meshes = {
        name: WebSocketMesh(buses[name], listen="tcp:0:interface=127.0.0.1", withdraw_timeout=0.5)
        for name in "ab"
    }
    for mesh in meshes.values():
        await mesh.start()
    bridges = [NatsBridge(buses[name], nats_server.url, TYPES) for name in "ac"]
    for bridge in bridges:
        await within(bridge.start())
    try:
        await within(meshes["b"].dial(f"ws://127.0.0.1:{meshes['a'].listening_port}/meta/message"))
        b_in, c_in = Inbox(buses["b"].connect()), Inbox(buses["c"].connect())
        from_b = [buses["b"].connect().send(Message.new("orders.created")).uuid for _ in range(10)]
        from_c = [buses["c"].connect().send(Message.new("orders.paid")).uuid for _ in range(10)]
        try:
            await c_in.until(lambda ms: sum(m.msg_type == "orders.created" for m in ms) == 10)
            await b_in.until(lambda ms: sum(m.msg_type == "orders.paid" for m in ms) == 10)
        except Exception as e:
            state = [b.describe() for b in bridges], [m.stats.as_dict() for m in meshes.values()]
            raise AssertionError(f"{e!r}: {len(b_in.messages)} {len(c_in.messages)} {state}") from e
        fence = buses["c"].connect().send(Message.new("orders.paid")).uuid
        await within(b_in.has(fence))
        assert [m.uuid for m in c_in.messages if m.msg_type == "orders.created"] == from_b
        assert [m.uuid for m in b_in.messages if m.msg_type == "orders.paid"] == [*from_c, fence]
        assert [m.uuid for m in b_in.messages if m.msg_type == "orders.created"] == from_b
    finally:
        for bus in buses.values():
            await bus.stop()
