"""The WebSocket mesh in one process: real sockets on loopback, several nodes."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from zope.interface.verify import verifyObject

from support.bus import Inbox, until, within
from support.certs import self_signed_certificate
from txloom.bus import Bus, Message, SlowPodPolicy, TransportNotConfigured
from txloom.bus.mesh import WebSocketMesh
from txloom.interfaces import IMeshTransport

FAST = {
    "handshake_timeout": 2.0,
    "reconnect_initial": 0.05,
    "reconnect_max": 0.5,
    "withdraw_timeout": 1.0,
    "close_timeout": 0.5,
}


class Node:
    def __init__(self, port: int = 0, listen: str | None = None, **options: object) -> None:
        self.bus = Bus()
        opts = {**FAST, **options}
        listen = listen or f"tcp:{port}:interface=127.0.0.1"
        self.mesh = WebSocketMesh(self.bus, listen=listen, **opts)  # type: ignore[arg-type]

    async def start(self) -> Node:
        await self.mesh.start()
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.mesh.listening_port}/meta/message"

    @property
    def uuid(self) -> str:
        return self.mesh.node_uuid

    def inbox(self, msg_type: str | None = None) -> Inbox:
        return Inbox(self.bus.connect(), msg_type)

    async def stop(self) -> None:
        await self.bus.stop()


async def nodes(count: int, **options: object) -> list[Node]:
    return [await Node(**options).start() for _ in range(count)]


async def settle_turns(n: int = 20) -> None:
    """Let a few reactor turns pass (used only to prove something does NOT happen after a
    fence message that travels the same path has arrived)."""
    for _ in range(n):
        await deferLater(reactor, 0, lambda: None)


@pytest_twisted.ensureDeferred
async def test_two_nodes_exchange_messages_exactly_once() -> None:
    a, b = await nodes(2)
    try:
        assert verifyObject(IMeshTransport, a.mesh)
        a_in, b_in = a.inbox(), b.inbox()
        assert await within(a.mesh.dial(b.url)) == b.uuid
        await within(b.mesh.wait_for_peers(1))
        sender_a, sender_b = a.bus.connect(), b.bus.connect()
        sent_a = [sender_a.send(Message.new("from.a", str(i))).uuid for i in range(50)]
        sent_b = [sender_b.send(Message.new("from.b", str(i))).uuid for i in range(50)]
        await within(b_in.count(100))
        await within(a_in.count(100))
        await settle_turns()
        assert [m.uuid for m in b_in.messages if m.msg_type == "from.a"] == sent_a
        assert [m.uuid for m in a_in.messages if m.msg_type == "from.b"] == sent_b
        assert len(b_in.messages) == len(a_in.messages) == 100
        assert [p.node_uuid for p in a.mesh.peers] == [b.uuid]
        assert a.mesh.peers[0].direction == "outbound"
        assert b.mesh.peers[0].direction == "inbound"
    finally:
        await a.stop()
        await b.stop()


@pytest.mark.parametrize("first_dialler_is_larger", [True, False])
@pytest_twisted.ensureDeferred
async def test_mutual_dials_keep_the_established_connection(first_dialler_is_larger: bool) -> None:
    """Whichever uuid is smaller, the second dial is refused and the first link stays."""
    high, low = "ffffffff-0000-4000-8000-000000000000", "00000000-0000-4000-8000-000000000000"
    a = await Node(node_uuid=high if first_dialler_is_larger else low).start()
    b = await Node(node_uuid=low if first_dialler_is_larger else high).start()
    try:
        await within(a.mesh.dial(b.url))
        await within(b.mesh.wait_for_peers(1))
        link = a.mesh.connection_to(b.uuid)
        assert await within(b.mesh.dial(a.url)) == a.uuid  # parked on the existing link
        assert a.mesh.connection_to(b.uuid) is link
        assert [p.direction for p in a.mesh.peers] == ["outbound"]
        assert [p.direction for p in b.mesh.peers] == ["inbound"]
        b_in = b.inbox()
        fence = a.bus.connect()
        uuids = [fence.send(Message.new("t")).uuid for _ in range(20)]
        await within(b_in.count(20))
        await settle_turns()
        assert b_in.uuids() == uuids
        assert a.mesh.connection_to(b.uuid) is link
    finally:
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_both_dial_at_once_and_converge() -> None:
    for _ in range(3):
        a, b = await nodes(2)
        try:
            da, db = a.mesh.dial(b.url), b.mesh.dial(a.url)
            await within(da)
            await within(db)
            await within(a.mesh.wait_for_peers(1))
            await within(b.mesh.wait_for_peers(1))
            b_in = b.inbox()
            uuid = a.bus.connect().send(Message.new("t")).uuid
            await within(b_in.has(uuid))
            await settle_turns()
            assert b_in.uuids() == [uuid]
            assert len(a.mesh.peers) == len(b.mesh.peers) == 1
        finally:
            await a.stop()
            await b.stop()


@pytest_twisted.ensureDeferred
async def test_group_mismatch_is_refused() -> None:
    star = await Node(belongs_to="*").start()
    team_a = await Node(belongs_to="teamA").start()
    team_b = await Node(belongs_to="teamB").start()
    try:
        # a node of group teamB dialling a '*' node is refused (the peer's group must match)
        team_b.mesh.dial(star.url)
        # a '*' node is welcome everywhere
        await within(star.mesh.dial(team_a.url))
        # teamB -> teamA is refused as well
        team_b.mesh.dial(team_a.url)
        fence_seen = team_a.inbox()
        uuid = star.bus.connect().send(Message.new("t")).uuid
        await within(fence_seen.has(uuid))
        for _ in range(3):  # a few redials happen, all refused
            await deferLater(reactor, 0.1, lambda: None)
        assert team_b.mesh.peers == []
        assert [p.node_uuid for p in star.mesh.peers] == [team_a.uuid]
        dialers = list(team_b.mesh._dialers.values())
        assert all(d.failures >= 1 for d in dialers)
    finally:
        for n in (star, team_a, team_b):
            await n.stop()


@pytest_twisted.ensureDeferred
async def test_token_is_required_when_configured() -> None:
    guarded = await Node(token="s3cret").start()
    good = await Node(token="s3cret").start()
    bad = await Node(token="wrong").start()
    none = await Node().start()
    try:
        await within(good.mesh.dial(guarded.url))
        bad.mesh.dial(guarded.url)
        none.mesh.dial(guarded.url)
        await deferLater(reactor, 0.3, lambda: None)
        assert [p.node_uuid for p in guarded.mesh.peers] == [good.uuid]
        assert bad.mesh.peers == none.mesh.peers == []
    finally:
        for n in (guarded, good, bad, none):
            await n.stop()


@pytest_twisted.ensureDeferred
async def test_withdraw_stops_peers_sending_to_the_node() -> None:
    a, b = await nodes(2)
    try:
        await within(a.mesh.dial(b.url))
        a_in = a.inbox()
        b_in = b.inbox()
        await within(a.bus.withdraw())  # returns once b acknowledged
        assert a.mesh.withdrawn
        assert b.mesh.peers[0].withdrawn
        # b no longer sends to a; a still sends to b
        b.bus.connect().send(Message.new("to.a"))
        uuid = a.bus.connect().send(Message.new("to.b")).uuid
        await within(b_in.has(uuid))
        b.bus.connect().send(Message.new("to.a"))
        await settle_turns()
        assert [m.msg_type for m in a_in.messages] == ["to.b"]  # only a's own local message
    finally:
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_peer_restart_reconnects_and_delivery_resumes() -> None:
    a = await Node().start()
    b = await Node().start()
    port = b.mesh.listening_port
    try:
        await within(a.mesh.dial(b.url))
        await b.stop()
        await until(lambda: not a.mesh.peers, 5, "a to notice b left")
        b2 = await Node(port=port).start()
        try:
            await within(a.mesh.wait_for_peers(1), 10)
            assert [p.node_uuid for p in a.mesh.peers] == [b2.uuid]
            b_in = b2.inbox()
            uuid = a.bus.connect().send(Message.new("again")).uuid
            await within(b_in.has(uuid))
        finally:
            await b2.stop()
    finally:
        await a.stop()


@pytest_twisted.ensureDeferred
async def test_relay_reaches_a_partial_mesh_exactly_once() -> None:
    # a - hub - c (a and c are not connected); only the hub relays
    a = await Node().start()
    hub = await Node(relay=True).start()
    c = await Node().start()
    try:
        await within(a.mesh.dial(hub.url))
        await within(c.mesh.dial(hub.url))
        c_in, a_in, hub_in = c.inbox(), a.inbox(), hub.inbox()
        uuids = [a.bus.connect().send(Message.new("t", str(i))).uuid for i in range(20)]
        await within(c_in.count(20))
        await within(hub_in.count(20))
        back = c.bus.connect().send(Message.new("back")).uuid
        await within(a_in.has(back))
        await settle_turns()
        assert [m.uuid for m in c_in.messages if m.msg_type == "t"] == uuids
        assert [m.uuid for m in hub_in.messages if m.msg_type == "t"] == uuids
        assert [m.uuid for m in a_in.messages if m.msg_type == "back"] == [back]
        assert hub.mesh.stats.relayed == 21
    finally:
        for n in (a, hub, c):
            await n.stop()


@pytest_twisted.ensureDeferred
async def test_without_relay_a_partial_mesh_does_not_forward() -> None:
    a, hub, c = await nodes(3)
    try:
        await within(a.mesh.dial(hub.url))
        await within(c.mesh.dial(hub.url))
        c_in, hub_in = c.inbox(), hub.inbox()
        a.bus.connect().send(Message.new("t"))
        await within(hub_in.count(1))
        fence = hub.bus.connect().send(Message.new("fence")).uuid
        await within(c_in.has(fence))
        assert [m.msg_type for m in c_in.messages] == ["fence"]
    finally:
        for n in (a, hub, c):
            await n.stop()


@pytest_twisted.ensureDeferred
async def test_full_mesh_with_relay_everywhere_is_still_exactly_once() -> None:
    ns = await nodes(4, relay=True)
    try:
        for i, n in enumerate(ns):
            for other in ns[i + 1 :]:
                await within(n.mesh.dial(other.url))
        inboxes = [n.inbox() for n in ns]
        uuids = [ns[0].bus.connect().send(Message.new("t", str(i))).uuid for i in range(30)]
        for inbox in inboxes[1:]:
            await within(inbox.count(30))
        await settle_turns(50)
        for inbox in inboxes:  # the origin's own pods too: no echo comes back round
            assert sorted(inbox.uuids()) == sorted(uuids)
        assert sum(n.mesh.stats.duplicates for n in ns) > 0  # copies arrived and were dropped
    finally:
        for n in ns:
            await n.stop()


@pytest_twisted.ensureDeferred
async def test_hop_limit_bounds_relaying() -> None:
    # a line of four nodes, every one relaying, hop limit 2: a's message reaches b and c only
    ns = await nodes(4, relay=True, hop_limit=2)
    try:
        for left, right in itertools.pairwise(ns):
            await within(left.mesh.dial(right.url))
        inboxes = [n.inbox() for n in ns]
        uuid = ns[0].bus.connect().send(Message.new("t")).uuid
        await within(inboxes[2].has(uuid))
        fence = ns[2].bus.connect().send(Message.new("fence")).uuid
        await within(inboxes[3].has(fence))
        assert uuid not in inboxes[3].uuids()
        assert inboxes[1].uuids()[0] == uuid
    finally:
        for n in ns:
            await n.stop()


@pytest_twisted.ensureDeferred
async def test_bus_backpressure_pauses_reading_from_peers_without_loss() -> None:
    """A slow local pod pauses the bus; the mesh stops reading from peers until it drains.

    What was already read when the pause began still arrives (a read holds up to 64 KiB of
    frames), which is why the hard limit sits well above the pause limit.
    """
    a = await Node().start()
    b = Node.__new__(Node)
    b.bus = Bus(pod_queue_limit=8, overflow_limit=100_000, slow_pod_policy=SlowPodPolicy.PAUSE)
    b.mesh = WebSocketMesh(b.bus, listen="tcp:0:interface=127.0.0.1", **FAST)  # type: ignore[arg-type]
    await b.start()
    try:
        await within(a.mesh.dial(b.url))
        got: list[str] = []
        gate: list[Deferred[None]] = []

        def slow(m: Message) -> Deferred[None]:
            got.append(m.uuid)
            d: Deferred[None] = Deferred()
            gate.append(d)
            return d

        b.bus.connect().on(slow)
        sender = a.bus.connect()
        uuids = [sender.send(Message.new("t", "x" * 1000)).uuid for _ in range(2000)]
        await until(lambda: b.bus.paused, 10, "the bus to pause")
        assert b.mesh._reading_paused
        paused_at = len(got)

        def release() -> bool:
            while gate:
                gate.pop(0).callback(None)
            return len(got) == len(uuids)

        await until(release, 20, "every message to arrive")
        assert paused_at < len(uuids)
        assert got == uuids
        assert b.bus.stats.dropped == 0
        assert not b.bus.paused
        assert not b.mesh._reading_paused
        assert b.bus.stats.pauses >= 1
    finally:
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_dial_without_a_mesh_and_bad_urls() -> None:
    bus = Bus()
    with pytest.raises(TransportNotConfigured):
        await bus.connect_endpoint("ws://127.0.0.1:1/meta/message")
    node = await Node().start()
    try:
        from txloom.bus.mesh import BadPeerURL

        with pytest.raises(BadPeerURL):
            node.mesh.dial("http://example.com/")
    finally:
        await node.stop()


@pytest.mark.filterwarnings("ignore::DeprecationWarning:OpenSSL")  # Twisted's TLS internals
@pytest_twisted.ensureDeferred
async def test_wss_between_nodes_with_a_trusted_certificate(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path / "trust")
    secure = await Node(listen=f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}").start()
    trusting = await Node(tls_trust_roots=str(tmp_path / "trust")).start()
    distrusting = await Node().start()
    try:
        url = f"wss://localhost:{secure.mesh.listening_port}/meta/message"
        assert await within(trusting.mesh.dial(url)) == secure.uuid
        inbox = secure.inbox()
        uuid = trusting.bus.connect().send(Message.new("over.tls")).uuid
        await within(inbox.has(uuid))
        distrusting.mesh.dial(url)  # the system trust store does not know this certificate
        await until(
            lambda: any(d.failures for d in distrusting.mesh._dialers.values()), 5, "a failure"
        )
        assert distrusting.mesh.peers == []
    finally:
        for n in (secure, trusting, distrusting):
            await n.stop()


@pytest_twisted.ensureDeferred
async def test_connections_disable_nagle() -> None:
    """Small frames must not wait for Nagle's algorithm (tens of ms per message)."""
    import socket

    a, b = await nodes(2)
    try:
        await within(a.mesh.dial(b.url))
        await within(b.mesh.wait_for_peers(1))
        for node in (a, b):
            for conn in node.mesh._peers.values():
                sock = conn.transport.getHandle()
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_a_peer_that_stops_reading_costs_bounded_memory_and_stalls_no_one() -> None:
    from twisted.internet.threads import deferToThread

    from support.bus_peer import RawGravPeer

    limit = 1024 * 1024
    hub = await Node(peer_backlog_limit=limit).start()
    reader = await Node().start()
    stuck = await deferToThread(RawGravPeer, hub.mesh.listening_port)
    try:
        await deferToThread(stuck.handshake, "99999999-2222-4333-8444-555555555555")
        await within(reader.mesh.dial(hub.url))
        await within(hub.mesh.wait_for_peers(2))
        to_reader = hub.mesh._peers[reader.uuid]
        to_stuck = next(c for c in hub.mesh._peers.values() if c is not to_reader)
        inbox = reader.inbox()
        sender = hub.bus.connect()
        blob = b"x" * 16_384
        total = 2_000  # 32 MiB: far more than the kernel buffers for the stuck peer
        for i in range(total):
            sender.send(Message.new("big", blob))
            if i % 32 == 31:  # a sender paced by the reading peer only
                await until(
                    lambda: not hub.bus._pending_msgs and not to_reader.window.queue,
                    10,
                    "the reader to keep up",
                )
        await inbox.count(total, 30)
        assert len(inbox.messages) == total  # the reading peer got everything
        assert to_stuck.dropped > 0
        assert to_stuck.window.queued_bytes <= limit
        assert to_reader.dropped == 0
        assert hub.mesh.stats.dropped == to_stuck.dropped
    finally:
        stuck.close()
        await hub.stop()
        await reader.stop()


@pytest_twisted.ensureDeferred
async def test_discovered_peers_that_vanish_are_forgotten_but_configured_ones_are_not() -> None:
    from txloom.bus.mesh.dialer import DISCOVERED_GIVE_UP, DialerState

    node = await Node(reconnect_initial=0.001, reconnect_max=0.002).start()
    try:
        from support.processes import free_port

        gone = f"ws://127.0.0.1:{free_port()}/meta/message"
        also_gone = f"ws://127.0.0.1:{free_port()}/meta/message"
        node.mesh.found(gone, "11111111-0000-4000-8000-000000000000")
        node.mesh.dial(also_gone)
        discovered = node.mesh.dialers[gone]
        configured = node.mesh.dialers[also_gone]
        stopped = DialerState.STOPPED
        await until(lambda: discovered.state is stopped, 10, "the discovered dialer to stop")
        assert discovered.failures == DISCOVERED_GIVE_UP
        await until(lambda: configured.failures > DISCOVERED_GIVE_UP, 10, "more attempts")
        assert configured.state is not DialerState.STOPPED
        node.mesh.found(gone, "11111111-0000-4000-8000-000000000000")  # announced again
        assert node.mesh.dialers[gone] is not discovered
    finally:
        await node.stop()
