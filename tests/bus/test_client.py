"""Bus clients in one process: real loopback sockets, a node, its clients and a mesh peer."""

from __future__ import annotations

import asyncio

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from support.bus import Inbox, until, within
from support.bus_peer import BINARY, PeerClosed, RawGravListener, RawGravPeer
from txloom.bus import Bus, ConnectionClosed, Message, NodeUnreachable, NoReceipt, connect
from txloom.bus.aio import connect as aio_connect
from txloom.bus.mesh import WebSocketMesh
from txloom.bus.mesh.clients import CLIENT_PROTOCOL

FAST = {
    "handshake_timeout": 2.0,
    "reconnect_initial": 0.05,
    "reconnect_max": 0.5,
    "withdraw_timeout": 1.0,
    "close_timeout": 0.5,
}


class Node:
    def __init__(self, **options: object) -> None:
        self.bus = Bus()
        opts = {**FAST, **options}
        self.mesh = WebSocketMesh(self.bus, listen="tcp:0:interface=127.0.0.1", **opts)  # type: ignore[arg-type]

    async def start(self) -> Node:
        await self.mesh.start()
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.mesh.listening_port}/meta/message"

    @property
    def clients(self) -> int:
        assert self.mesh.clients is not None
        return self.mesh.clients.clients


@pytest_twisted.ensureDeferred
async def test_clients_see_each_other_the_node_and_its_mesh_peer_without_relay() -> None:
    node, peer = await Node().start(), await Node().start()
    try:
        assert not node.mesh.relay
        await within(peer.mesh.dial(node.url))
        a = await within(connect(node.url, timeout=5))
        b = await within(connect(node.url, timeout=5))
        assert a.node_uuid == b.node_uuid == node.mesh.node_uuid
        # clients are not mesh peers, on either side
        assert [p.node_uuid for p in node.mesh.peers] == [peer.mesh.node_uuid]
        assert node.clients == 2
        assert node.mesh.clients.describe()["attached"] == 2  # type: ignore[union-attr]
        a_in, b_in = Inbox(a.pod), Inbox(b.pod)
        node_in, peer_in = Inbox(node.bus.connect()), Inbox(peer.bus.connect())

        from_a = a.send(Message.new("from.a", b"1"))
        await within(b_in.has(from_a.uuid))
        await within(node_in.has(from_a.uuid))
        await within(peer_in.has(from_a.uuid))  # relayed to the mesh as the node's own

        from_peer = peer.bus.connect().send(Message.new("from.peer", b"2"))
        from_node = node.bus.connect().send(Message.new("from.node", b"3"))
        for inbox in (a_in, b_in):
            await within(inbox.has(from_peer.uuid))
            await within(inbox.has(from_node.uuid))
        assert from_a.uuid not in a_in.uuids()  # a client never gets its own message back

        # receipts and replies across clients
        b.on_type("ask", lambda msg: b.reply_to(msg, Message.new("answer", msg.data + b"!")))
        reply = await within(a.send(Message.new("ask", b"q")).wait_until(5.0))
        assert reply.data == b"q!"
        assert reply.msg_type == "answer"

        await a.close()
        await until(lambda: node.clients == 1, what="the node to see the client leave")
        with pytest.raises(NoReceipt):
            a.send(Message.new("late"))
        assert peer.mesh.peers[0].node_uuid == node.mesh.node_uuid
    finally:
        await b.close()
        await peer.bus.stop()
        await node.bus.stop()


@pytest_twisted.ensureDeferred
async def test_token() -> None:
    node = await Node(token="s3cret").start()
    try:
        with pytest.raises(NodeUnreachable):
            await connect(node.url, token="wrong", timeout=0.5)
        with pytest.raises(NodeUnreachable):
            await connect(node.url, timeout=0.5)
        client = await within(connect(node.url, token="s3cret", timeout=5))
        assert node.clients == 1
        await client.close()
    finally:
        await node.bus.stop()


@pytest_twisted.ensureDeferred
async def test_a_grav_node_is_not_taken_for_a_client_server() -> None:
    """Against a node that does not select the client subprotocol (Grav), the client
    closes before it says anything a Grav node would take for a peer's handshake."""
    listener = RawGravListener()

    def grav_side() -> tuple[int | None, list[int]]:
        peer = listener.accept()
        assert CLIENT_PROTOCOL in peer.request_headers.get("sec-websocket-protocol", "")
        opcodes = []
        try:
            while True:
                opcode, _ = peer.recv_frame()
                opcodes.append(opcode)
        except PeerClosed as e:
            return e.code, opcodes

    seen = threads.deferToThread(grav_side)
    try:
        with pytest.raises(NodeUnreachable):
            await connect(listener.url, timeout=1.0)
        code, opcodes = await within(seen)
        assert code == 1000
        assert BINARY not in opcodes
    finally:
        listener.close()


@pytest_twisted.ensureDeferred
async def test_a_slow_client_loses_its_copies_and_stalls_no_one() -> None:
    node = await Node().start()
    assert node.mesh.clients is not None
    node.mesh.clients.backlog_limit = 1024 * 1024
    fast = await within(connect(node.url, timeout=5))

    def stalled_client() -> RawGravPeer:
        port = node.mesh.listening_port
        raw = RawGravPeer(port, headers={"Sec-WebSocket-Protocol": CLIENT_PROTOCOL})
        raw.handshake("00000000-0000-4000-8000-000000000001")
        return raw  # and never reads again

    raw = await within(threads.deferToThread(stalled_client))
    try:
        await until(lambda: node.clients == 2, what="both clients attached")
        inbox = Inbox(fast.pod)
        sender = node.bus.connect()
        payload = b"x" * 8192
        # 3000 messages of 8 KiB (more than the stalled socket's kernel buffers and its
        # backlog take), in bursts of 50 that the fast client reads as they come
        for burst in range(60):
            last = ""
            for i in range(50):
                last = sender.send(Message.new("load", payload + b"%d.%d" % (burst, i))).uuid
            await within(inbox.has(last, 20), 20)
        assert len(inbox.messages) == 3000
        assert node.mesh.clients.dropped > 0
        assert not node.bus.paused
    finally:
        raw.close()
        await fast.close()
        await node.bus.stop()


@pytest_twisted.ensureDeferred
async def test_the_disconnect_policy_closes_a_slow_client() -> None:
    node = await Node(client_backlog_limit=64 * 1024, slow_client_policy="disconnect").start()
    port = node.mesh.listening_port

    def stalled_client() -> RawGravPeer:
        raw = RawGravPeer(port, headers={"Sec-WebSocket-Protocol": CLIENT_PROTOCOL})
        raw.handshake("00000000-0000-4000-8000-000000000002")
        return raw

    raw = await within(threads.deferToThread(stalled_client))
    try:
        await until(lambda: node.clients == 1, what="the client attached")
        sender = node.bus.connect()
        payload = b"x" * 8192
        while node.clients and node.mesh.clients.dropped == 0:  # type: ignore[union-attr]
            for _ in range(50):
                sender.send(Message.new("load", payload))
            node.bus.flush()
            await deferLater(reactor, 0, lambda: None)  # one reactor turn: the node writes
        await until(lambda: node.clients == 0, what="the slow client closed")
        assert await within(threads.deferToThread(raw.wait_closed)) == 4008
    finally:
        raw.close()
        await node.bus.stop()


@pytest_twisted.ensureDeferred
async def test_without_reconnect_a_lost_node_disconnects_the_client() -> None:
    node = await Node().start()
    client = await within(connect(node.url, timeout=5))
    waiting = client.wait_on(lambda msg: msg.msg_type == "never")
    await node.bus.stop()
    reason = await within(client.when_disconnected())
    assert "closed" in reason
    with pytest.raises(ConnectionClosed):
        await waiting


@pytest_twisted.ensureDeferred
async def test_with_reconnect_the_client_comes_back_after_a_restart() -> None:
    node = await Node().start()
    port = node.mesh.listening_port
    client = await within(
        connect(node.url, timeout=5, reconnect=True, reconnect_initial=0.05, reconnect_max=0.2)
    )
    try:
        await node.bus.stop()
        await until(lambda: not client.linked, what="the link to drop")
        again = Bus()
        mesh = WebSocketMesh(again, listen=f"tcp:{port}:interface=127.0.0.1", **FAST)  # type: ignore[arg-type]
        await mesh.start()
        await until(lambda: client.node_uuid == mesh.node_uuid and client.linked, what="redial")
        inbox = Inbox(again.connect())
        sent = client.send(Message.new("after", b"restart"))
        await within(inbox.has(sent.uuid))
        await again.stop()
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_asyncio_client() -> None:
    node = await Node().start()
    service = node.bus.connect()
    service.on_type("ping", lambda m: service.reply_to(m, Message.new("pong", m.data)))

    async def main() -> bytes:
        client = await aio_connect(node.url, timeout=5)
        assert client.node_uuid == node.mesh.node_uuid
        reply = await client.send(Message.new("ping", b"aio")).wait_until(5.0)
        await client.close()
        return reply.data

    try:
        assert await within(Deferred.fromFuture(asyncio.ensure_future(main()))) == b"aio"
        await until(lambda: node.clients == 0, what="the asyncio client to leave")
    finally:
        await node.bus.stop()
