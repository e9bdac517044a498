"""The NATS bridge against a real nats-server started by the test."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import nats
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from zope.interface.verify import verifyObject

from support.bus import Inbox, until, within
from support.nats import NatsServer, nats_server  # noqa: F401 (fixture)
from support.processes import free_port, twistd
from txloom.bus import Bus, Message
from txloom.bus.bridge.nats import NatsBridge
from txloom.interfaces import IBridgeTransport

TYPES = ["orders.created", "orders.paid"]


def on_loop(coro) -> Deferred:
    return Deferred.fromFuture(asyncio.ensure_future(coro))


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
        assert (a.published, a.received) == (51, 51)
        assert (b.published, b.received) == (51, 51)
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
async def test_bridge_keeps_trying_until_nats_is_there(tmp_path: Path) -> None:
    server = NatsServer(tmp_path)
    bus = Bus()
    bridge = NatsBridge(bus, server.url, TYPES, reconnect_wait=0.1)
    started = bridge.start()
    bus.connect().send(Message.new("orders.created", b"early"))
    try:
        await until(lambda: bridge._outbox, 5, "the early message to wait for NATS")
        assert not started.called
        assert bridge.published == 0
        server.start()
        await within(started, 15)
        # what waited is handed to NATS as soon as the connection is up (delivery through
        # a server that was up first is what the other tests check)
        await until(lambda: bridge.published == 1, 5, "the early message to go out")
        assert bridge.describe()["connected"] is True
        assert not bridge._outbox
    finally:
        await bus.stop()
        server.stop()


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
        *(f"--bridge={t}" for t in types),
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
