"""A peer that floods pings and never reads the pongs costs the node bounded memory."""

from __future__ import annotations

import socket

import pytest_twisted
from twisted.internet.threads import deferToThread

from support.bus import Inbox, within
from support.bus_peer import PING, RawGravPeer, message_json
from txloom.bus import Bus
from txloom.bus.mesh import WebSocketMesh

FLOODER = "f100d000-0000-4000-8000-000000000000"
FENCE = "f100d000-0000-4000-8000-00000000fe1c"
PINGS = 20_000  # 2.5 MB of pongs if every one were answered and buffered


def buffered(transport: object) -> int:
    """Bytes the node's TCP transport holds, not yet taken by the kernel."""
    t: object = transport
    return len(t.dataBuffer) - t.offset + t._tempDataLen  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_a_ping_flood_from_a_peer_that_never_reads_is_bounded() -> None:
    bus = Bus()
    mesh = WebSocketMesh(bus, listen="tcp:0:interface=127.0.0.1", keepalive=0)
    await mesh.start()
    inbox = Inbox(bus.connect())

    def connect() -> RawGravPeer:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # read nothing, hold little
        sock.connect(("127.0.0.1", mesh.listening_port))
        peer = RawGravPeer(0, sock=sock)
        peer.server = False  # it dials: masked frames, and it sends the upgrade
        peer.upgrade("127.0.0.1", mesh.listening_port, "/meta/message", {})
        peer.handshake(FLOODER)
        return peer

    def flood(peer: RawGravPeer) -> None:
        ping = peer.frame(b"p" * 125, PING)
        for _ in range(PINGS // 100):
            peer.sock.sendall(ping * 100)
        peer.send_frame(message_json(FENCE, "fence", b"", "2026-11-22T01:39:07Z"))

    peer = await deferToThread(connect)
    try:
        await within(mesh.wait_for_peers(1))
        conn = mesh.connection_to(FLOODER)
        await deferToThread(flood, peer)
        await within(inbox.has(FENCE), 30)  # every ping before the fence was processed
        assert buffered(conn.transport) < 128 * 1024  # before the fix: about 500 KiB
    finally:
        peer.close()
        await bus.stop()
