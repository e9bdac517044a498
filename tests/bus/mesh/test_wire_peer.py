"""A node against a peer written by hand from the spec (RFC 6455 + the Grav handshake).

The raw peer runs in a thread (it uses a blocking socket); the node runs in the test's
reactor. Nothing in the peer uses txloom's codec, so these tests pin the wire itself.
"""

from __future__ import annotations

import json
import os
import re
import struct

import pytest_twisted
from twisted.internet.threads import deferToThread

from support.bus import Inbox, until, within
from support.bus_peer import BINARY, TEXT, PeerClosed, RawGravPeer, message_json
from txloom.bus import WEBSOCKET_MSG_TYPE, Bus, Message
from txloom.bus.mesh import WebSocketMesh

GO_UUID = "dc472fad-0b42-4f97-b67f-a95d4287a76a"
GO_TIME = "2026-11-22T01:39:07.952081882Z"


async def start_node(**options: object) -> tuple[Bus, WebSocketMesh, Inbox]:
    bus = Bus()
    mesh = WebSocketMesh(
        bus,
        listen="tcp:0:interface=127.0.0.1",
        handshake_timeout=options.pop("handshake_timeout", 0.5),  # type: ignore[arg-type]
        close_timeout=0.3,
        withdraw_timeout=0.3,
        **options,  # type: ignore[arg-type]
    )
    await mesh.start()
    return bus, mesh, Inbox(bus.connect())


@pytest_twisted.ensureDeferred
async def test_handshake_and_messages_both_ways_by_hand() -> None:
    bus, mesh, inbox = await start_node()
    port = mesh.listening_port
    peer_uuid = "11111111-2222-4333-8444-555555555555"

    def talk() -> tuple[bytes, RawGravPeer]:
        peer = RawGravPeer(port)
        ack = peer.handshake(peer_uuid)
        peer.send_frame(message_json(GO_UUID, "go.tick", b'{"n":0}', GO_TIME))
        return ack, peer

    try:
        ack, peer = await deferToThread(talk)
        assert ack == (
            b'{"accept":true,"uuid":"'
            + mesh.node_uuid.encode()
            + b'","belongsTo":"*","interests":[]}'
        )
        await within(inbox.has(GO_UUID))
        got = inbox.messages[0]
        assert (got.msg_type, got.data, got.timestamp_text) == ("go.tick", b'{"n":0}', GO_TIME)
        assert [p.node_uuid for p in mesh.peers] == [peer_uuid]
        # a local message reaches the peer as one binary frame of Grav JSON, fields in order
        sent = bus.connect().send(Message.new_with_parent_id("py.tock", "p-1", b"hi")).uuid
        opcode, raw = await deferToThread(peer.recv_frame)
        assert opcode == BINARY
        assert re.fullmatch(
            rb'\{"meta":\{"uuid":"'
            + sent.encode()
            + rb'","parent_id":"p-1","response_to":"","msg_type":"py\.tock",'
            rb'"timestamp":"[0-9T:.-]+Z"\},"payload":\{"data":"aGk="\}\}',
            raw,
        ), raw
        # the message the peer sent is not echoed back to it
        assert json.loads(raw)["meta"]["uuid"] != GO_UUID
        peer.close()
    finally:
        await bus.stop()


@pytest_twisted.ensureDeferred
async def test_group_mismatch_refusal_bytes() -> None:
    bus, mesh, _ = await start_node()

    def refused() -> tuple[bytes, int | None]:
        with RawGravPeer(mesh.listening_port) as peer:
            answer = peer.handshake("22222222-2222-4333-8444-555555555555", "teamB")
            return answer, peer.wait_closed()

    try:
        answer, code = await deferToThread(refused)
        assert answer == (
            b'{"accept":false,"uuid":"'
            + mesh.node_uuid.encode()
            + b'","belongsTo":"","interests":null}'
        )
        assert code == 1000
        assert mesh.peers == []
    finally:
        await bus.stop()


@pytest_twisted.ensureDeferred
async def test_second_connection_from_the_same_node_is_refused() -> None:
    bus, mesh, _ = await start_node()
    same = "33333333-2222-4333-8444-555555555555"

    def twice() -> tuple[bytes, bytes, int | None]:
        first = RawGravPeer(mesh.listening_port)
        one = first.handshake(same)
        with RawGravPeer(mesh.listening_port) as second:
            two = second.handshake(same)
            code = second.wait_closed()
        first.close()
        return one, two, code

    try:
        one, two, code = await deferToThread(twice)
        assert json.loads(one)["accept"] is True
        assert json.loads(two)["accept"] is False
        assert code == 1000
    finally:
        await bus.stop()


@pytest_twisted.ensureDeferred
async def test_frames_that_are_not_messages_become_websocket_messages() -> None:
    bus, mesh, inbox = await start_node()

    def garbage() -> RawGravPeer:
        peer = RawGravPeer(mesh.listening_port)
        peer.handshake("44444444-2222-4333-8444-555555555555")
        peer.send_frame(b"hello", TEXT)
        peer.send_frame(b"\x00\xffnot json", BINARY)
        peer.send_frame(b'{"meta":{"uuid":"x","timestamp":"yesterday"}}', BINARY)
        peer.send_frame(message_json(GO_UUID, "go.tick", b"ok", GO_TIME))
        return peer

    try:
        peer = await deferToThread(garbage)
        await within(inbox.has(GO_UUID))
        kinds = [(m.msg_type, m.data) for m in inbox.messages]
        assert kinds == [
            (WEBSOCKET_MSG_TYPE, b"hello"),
            (WEBSOCKET_MSG_TYPE, b"\x00\xffnot json"),
            (WEBSOCKET_MSG_TYPE, b'{"meta":{"uuid":"x","timestamp":"yesterday"}}'),
            ("go.tick", b"ok"),
        ]
        assert mesh.stats.foreign == 3
        assert len(mesh.peers) == 1  # the connection stays up
        peer.close()
    finally:
        await bus.stop()


@pytest_twisted.ensureDeferred
async def test_broken_websocket_framing_closes_only_that_connection() -> None:
    bus, mesh, inbox = await start_node()

    def broken_then_good() -> tuple[int | None, bytes]:
        with RawGravPeer(mesh.listening_port) as bad:
            bad.handshake("55555555-2222-4333-8444-555555555555")
            # an unmasked client frame with a reserved opcode: a protocol violation
            bad.send_raw(bytes([0x83, 0x03]) + b"abc")
            code = bad.wait_closed()
        with RawGravPeer(mesh.listening_port) as good:
            ack = good.handshake("66666666-2222-4333-8444-555555555555")
            good.send_frame(message_json(GO_UUID, "go.tick", b"still fine", GO_TIME))
        return code, ack

    try:
        code, ack = await deferToThread(broken_then_good)
        assert code != 1000
        assert json.loads(ack)["accept"] is True
        await within(inbox.has(GO_UUID))
    finally:
        await bus.stop()


@pytest_twisted.ensureDeferred
async def test_a_peer_that_never_handshakes_is_timed_out() -> None:
    bus, mesh, _ = await start_node(handshake_timeout=0.3)

    def silent() -> tuple[int | None, int | None]:
        with RawGravPeer(mesh.listening_port) as upgraded_but_silent:
            grav_silence = upgraded_but_silent.wait_closed()
        with RawGravPeer(mesh.listening_port, upgrade=False) as tcp_only:
            tcp_silence = tcp_only.wait_closed()
        return grav_silence, tcp_silence

    try:
        grav_silence, tcp_silence = await within(deferToThread(silent), 10)
        assert grav_silence == 4002  # closed by the node with a reason
        assert tcp_silence is None  # no WebSocket yet: the TCP connection is dropped
        assert mesh.peers == []
        await until(lambda: not mesh._connections, 5, "the node to forget both connections")
    finally:
        await bus.stop()


@pytest_twisted.ensureDeferred
async def test_a_bad_handshake_closes_the_connection() -> None:
    bus, mesh, _ = await start_node()

    def bad() -> list[int | None]:
        codes = []
        for first in (b"hello", b'{"uuid":""}', b"[1,2]", os.urandom(40)):
            with RawGravPeer(mesh.listening_port) as peer:
                peer.send_frame(first)
                codes.append(peer.wait_closed())
        return codes

    try:
        assert await within(deferToThread(bad), 10) == [4002] * 4
        assert mesh.peers == []
    finally:
        await bus.stop()


@pytest_twisted.ensureDeferred
async def test_withdraw_by_hand() -> None:
    bus, mesh, _ = await start_node()

    def withdraw() -> tuple[int, bytes, RawGravPeer]:
        peer = RawGravPeer(mesh.listening_port)
        peer.handshake("77777777-2222-4333-8444-555555555555")
        peer.send_frame(b"WITHDRAW", TEXT)
        opcode, payload = peer.recv_frame()
        return opcode, payload, peer

    try:
        opcode, payload, peer = await deferToThread(withdraw)
        assert (opcode, payload) == (TEXT, b"WITHDRAW ACK")
        assert mesh.peers[0].withdrawn
        # nothing more is sent to the withdrawn peer; the node's close is the next frame
        bus.connect().send(Message.new("not.for.you"))
        await until(lambda: mesh.stats.sent == 0 and not bus._pending_msgs, 5)
        await bus.stop()
        assert await deferToThread(peer.wait_closed) == 4001  # "node stopping": redial me
    finally:
        await bus.stop()


@pytest_twisted.ensureDeferred
async def test_wrong_path_and_missing_token_are_refused_at_upgrade() -> None:
    bus, mesh, _ = await start_node(token="t0k3n")

    def attempts() -> list[int | None]:
        statuses = []
        for path, headers in (
            ("/elsewhere", {"Authorization": "Bearer t0k3n"}),
            ("/meta/message", {}),
            ("/meta/message", {"Authorization": "Bearer nope"}),
        ):
            try:
                RawGravPeer(mesh.listening_port, path=path, headers=headers).close()
                statuses.append(101)
            except PeerClosed as e:
                statuses.append(int(e.reason.split()[1]))
        with RawGravPeer(mesh.listening_port, headers={"Authorization": "Bearer t0k3n"}) as ok:
            statuses.append(
                json.loads(ok.handshake("88888888-2222-4333-8444-555555555555"))["accept"]
            )
        return statuses

    try:
        assert await deferToThread(attempts) == [404, 401, 401, True]
    finally:
        await bus.stop()


@pytest_twisted.ensureDeferred
async def test_oversized_frames_fail_the_connection() -> None:
    bus, mesh, inbox = await start_node(max_message_size=1024)

    def big() -> int | None:
        with RawGravPeer(mesh.listening_port) as peer:
            peer.handshake("99999999-2222-4333-8444-555555555555")
            peer.send_raw(bytes([0x82, 0xFF]) + struct.pack(">Q", 2**40) + b"\0\0\0\0")
            return peer.wait_closed()

    try:
        code = await within(deferToThread(big), 10)
        assert code in (1009, None)
        assert inbox.messages == []
    finally:
        await bus.stop()


@pytest_twisted.ensureDeferred
async def test_foreign_frames_are_decided_as_a_grav_node_decides_them() -> None:
    """The hand-made frames of the Grav comparison, over a real connection: Go reads the
    first ones as messages (with zero values), the last ones fail and become
    websocket.message."""
    bus, mesh, inbox = await start_node()
    frames = [
        b"{}",
        b"null",
        b'{"payload":{"data":"aGk="}}',
        b'{"meta":{"uuid":"","msg_type":"empty.uuid"}}',
        b'{"META":{"UUID":"caps","Msg_Type":"caps.keys"}}',
        b'{"meta":{"uuid":"utf8","msg_type":"bad\xffutf8"}}',
        b'{"meta":{"uuid":"hops","msg_type":"hops","hops":1000}}',
        b'{"meta":{"uuid":"b64","msg_type":"b64"},"payload":{"data":"aG\\nk="}}',
        b'{"meta":{"uuid":"comma","timestamp":"2026-11-22T01:39:07,5Z"}}',
        b'{"meta":{"uuid":"lower-t","timestamp":"2026-11-22t01:39:07Z"}}',
        b'{"meta":{"uuid":"lower-z","timestamp":"2026-11-22T01:39:07z"}}',
    ]

    def send() -> RawGravPeer:
        peer = RawGravPeer(mesh.listening_port)
        peer.handshake("55555555-2222-4333-8444-555555555555")
        for frame in frames:
            peer.send_frame(frame)
        peer.send_frame(message_json(GO_UUID, "fence", b"", GO_TIME))
        return peer

    try:
        peer = await deferToThread(send)
        await within(inbox.has(GO_UUID))
        got = [(m.uuid, m.msg_type, m.data) for m in inbox.messages[:-1]]
        assert got[:9] == [
            ("", "", b""),
            ("", "", b""),
            ("", "", b"hi"),
            ("", "empty.uuid", b""),
            ("caps", "caps.keys", b""),
            ("utf8", "bad\ufffdutf8", b""),
            ("hops", "hops", b""),
            ("b64", "b64", b"hi"),
            ("comma", "", b""),
        ]
        assert [(t, d) for _, t, d in got[9:]] == [(WEBSOCKET_MSG_TYPE, f) for f in frames[9:]]
        assert mesh.stats.foreign == 2
        peer.close()
    finally:
        await bus.stop()


@pytest_twisted.ensureDeferred
async def test_messages_go_out_as_a_go_node_writes_them() -> None:
    bus, mesh, _ = await start_node()

    def receive() -> bytes:
        peer = RawGravPeer(mesh.listening_port)
        peer.handshake("66666666-2222-4333-8444-555555555555")
        _, payload = peer.recv_frame()
        peer.close()
        return payload

    try:
        got = deferToThread(receive)
        await within(mesh.wait_for_peers(1))
        msg = Message("a\b\fb\ud800", b"", uuid=GO_UUID, timestamp_ns=0)
        bus.connect().send(msg)
        assert await within(got) == (
            b'{"meta":{"uuid":"' + GO_UUID.encode() + b'","parent_id":"","response_to":"",'
            b'"msg_type":"a\\u0008\\u000cb\\ufffd","timestamp":"1970-01-01T00:00:00Z"},'
            b'"payload":{"data":""}}'
        )  # no "hops": this node does not relay it, it is its own
    finally:
        await bus.stop()
