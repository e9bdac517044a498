"""Mutual dials and withdraws against a peer that behaves as a Grav v0.5 node does.

The Grav side is written by hand (``support.bus_peer``) and runs in threads: it keeps the
connection it established first and refuses or closes newcomers, and after ``Withdraw()``
it stays up and still accepts connections.
"""

from __future__ import annotations

import json

import pytest_twisted
from twisted.internet.threads import deferToThread

from support.bus import Inbox, until, within
from support.bus_peer import BINARY, TEXT, RawGravListener, RawGravPeer
from txloom.bus import Bus, Message
from txloom.bus.mesh import WebSocketMesh
from txloom.bus.mesh.dialer import DialerState

GRAV = "00000000-1111-4222-8333-444444444444"  # smaller than any uuid the node gets
NODE = "ffffffff-1111-4222-8333-444444444444"


async def start_node(**options: object) -> WebSocketMesh:
    mesh = WebSocketMesh(
        Bus(),
        listen="tcp:0:interface=127.0.0.1",
        handshake_timeout=2.0,
        close_timeout=0.3,
        withdraw_timeout=0.3,
        reconnect_initial=0.05,
        reconnect_max=0.2,
        **options,  # type: ignore[arg-type]
    )
    await mesh.start()
    return mesh


def next_message(peer: RawGravPeer) -> dict:
    while True:
        opcode, payload = peer.recv_frame()
        if opcode == BINARY:
            return json.loads(payload)


@pytest_twisted.ensureDeferred
async def test_grav_dialling_an_established_link_is_refused_and_the_link_kept() -> None:
    mesh = await start_node(node_uuid=NODE)
    listener = RawGravListener()
    try:
        dialled = mesh.dial(listener.url)
        grav_side = await deferToThread(listener.accept)
        hello = await deferToThread(grav_side.accept_handshake, GRAV)
        assert hello["uuid"] == NODE
        await within(dialled)
        link = mesh.connection_to(GRAV)

        def dial_back() -> tuple[bytes, int | None]:
            with RawGravPeer(mesh.listening_port) as newcomer:
                answer = newcomer.handshake(GRAV)
                return answer, newcomer.wait_closed()

        answer, code = await deferToThread(dial_back)
        assert json.loads(answer)["accept"] is False
        assert code == 1000
        assert mesh.connection_to(GRAV) is link
        sent = mesh.bus.connect().send(Message.new("after.refusal", b"x"))
        got = await deferToThread(next_message, grav_side)
        assert got["meta"]["uuid"] == sent.uuid
        grav_side.close()
    finally:
        listener.close()
        await mesh.bus.stop()


@pytest_twisted.ensureDeferred
async def test_both_accept_at_once_the_node_keeps_its_dial_as_grav_keeps_it() -> None:
    """Grav accepted our dial while we accepted its: Grav closes its own dial and keeps
    ours, so the node must keep its dial too (whatever the uuids say)."""
    mesh = await start_node(node_uuid=NODE)
    listener = RawGravListener()
    inbox = Inbox(mesh.bus.connect())
    try:
        inbound = await deferToThread(RawGravPeer, mesh.listening_port)
        assert json.loads(await deferToThread(inbound.handshake, GRAV))["accept"] is True
        await within(mesh.wait_for_peers(1))
        dialled = mesh.dial(listener.url)
        grav_side = await deferToThread(listener.accept)
        await deferToThread(grav_side.accept_handshake, GRAV)
        await within(dialled)
        assert await deferToThread(inbound.wait_closed) == 1000  # the node dropped it
        link = mesh.connection_to(GRAV)
        assert link is not None and link.direction == "outbound"
        sent = mesh.bus.connect().send(Message.new("after.race", b"x"))
        assert (await deferToThread(next_message, grav_side))["meta"]["uuid"] == sent.uuid
        frame = b'{"meta":{"uuid":"5a1e0000-0000-4000-8000-000000000001"},"payload":{}}'
        await deferToThread(grav_side.send_frame, frame)
        await within(inbox.has("5a1e0000-0000-4000-8000-000000000001"))
        grav_side.close()
    finally:
        listener.close()
        await mesh.bus.stop()


@pytest_twisted.ensureDeferred
async def test_a_peer_that_withdrew_is_not_redialled_until_announced_or_dialling_in() -> None:
    mesh = await start_node()
    listener = RawGravListener()
    try:
        mesh.found(listener.url)
        grav_side = await deferToThread(listener.accept)
        await deferToThread(grav_side.accept_handshake, GRAV)
        await within(mesh.wait_for_peers(1))

        def withdraw_and_close() -> tuple[int, bytes]:
            grav_side.send_frame(b"WITHDRAW", TEXT)
            answer = grav_side.recv_frame()
            grav_side.send_frame(b"\x03\xe8", 8)  # close 1000, as Grav's Withdraw does
            grav_side.wait_closed()
            grav_side.close()
            return answer

        assert await deferToThread(withdraw_and_close) == (TEXT, b"WITHDRAW ACK")
        dialer = mesh.dialers[listener.url]
        await until(lambda: not mesh.is_connected(GRAV), what="the link to close")
        assert dialer.state is DialerState.WITHDRAWN  # before the fix: WAITING, redialling
        assert dialer.node_uuid == GRAV

        # it dials in: accepted, and the dialer waits behind that link
        back = await deferToThread(RawGravPeer, mesh.listening_port)
        assert json.loads(await deferToThread(back.handshake, GRAV))["accept"] is True
        await until(lambda: dialer.state is DialerState.PARKED, what="the dialer to park")
        back.close()
        await until(lambda: not mesh.is_connected(GRAV), what="the inbound link to close")

        # an announcement brings it back too
        dialer.peer_withdrew()
        mesh.found(listener.url, GRAV)
        again = await deferToThread(listener.accept)
        await deferToThread(again.accept_handshake, GRAV)
        await within(mesh.wait_for_peers(1))
        again.close()
    finally:
        listener.close()
        await mesh.bus.stop()


@pytest_twisted.ensureDeferred
async def test_stopping_with_a_peer_refused_by_the_group_rule_leaves_no_unhandled_error() -> None:
    import gc

    from twisted.logger import globalLogPublisher

    critical: list[dict] = []

    def observe(event: dict) -> None:
        if event.get("log_level") is not None and event["log_level"].name == "critical":
            critical.append(event)

    other = await start_node(belongs_to="teamB")
    mesh = await start_node(belongs_to="teamA")
    globalLogPublisher.addObserver(observe)
    try:
        mesh.found(f"ws://127.0.0.1:{other.listening_port}/meta/message")
        dialer = next(iter(mesh.dialers.values()))
        await until(lambda: dialer.failures >= 1, what="the group refusal")
        await mesh.bus.stop()
        gc.collect()
        assert critical == []  # before the fix: "Unhandled error in Deferred: CancelledError"
    finally:
        globalLogPublisher.removeObserver(observe)
        await mesh.bus.stop()
        await other.bus.stop()
