"""The mesh's timers on a Clock: redial backoff, the connect deadline, the handshake
deadline and the keepalive heartbeat (no real time passes)."""

from __future__ import annotations

import base64
import os
import struct

from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from txloom.bus import Bus
from txloom.bus.mesh import WebSocketMesh
from txloom.bus.mesh.dialer import BACKOFF_FACTOR, CONNECT_TIMEOUT, DialerState
from txloom.bus.mesh.peer import MeshServerFactory

URL = "ws://10.0.0.9:8080/meta/message"


def clocked_mesh(**options: object) -> tuple[WebSocketMesh, MemoryReactorClock]:
    clock = MemoryReactorClock()
    mesh = WebSocketMesh(Bus(reactor=clock), listen=None, reactor=clock, **options)  # type: ignore[arg-type]
    return mesh, clock


def retry_delay(clock: MemoryReactorClock) -> float:
    [call] = [c for c in clock.getDelayedCalls() if c.func.__name__ == "_attempt"]
    return call.getTime() - clock.seconds()


def test_redials_back_off_with_jitter_up_to_the_maximum() -> None:
    mesh, clock = clocked_mesh(reconnect_initial=1.0, reconnect_max=8.0)
    mesh.found(URL)
    dialer = mesh.dialers[URL]
    bases = []
    for attempt in range(1, 7):
        assert len(clock.tcpClients) == attempt
        host, port, factory, timeout, _ = clock.tcpClients[-1]
        assert (host, port, timeout) == ("10.0.0.9", 8080, CONNECT_TIMEOUT)
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        assert dialer.state is DialerState.WAITING
        delay = retry_delay(clock)
        base = min(8.0, BACKOFF_FACTOR ** (attempt - 1))
        assert 0.75 * base <= delay <= 1.25 * base
        bases.append(base)
        clock.advance(delay)
    assert bases == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    mesh.bus.stop()
    assert dialer.state is DialerState.STOPPED
    assert not [c for c in clock.getDelayedCalls() if c.func.__name__ == "_attempt"]


def open_websocket(mesh: WebSocketMesh) -> tuple[object, StringTransport]:
    """A listening connection on a fake transport, upgraded to WebSocket."""
    factory = MeshServerFactory(mesh)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    key = base64.b64encode(os.urandom(16)).decode()
    protocol.dataReceived(
        (
            "GET /meta/message HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert transport.value().startswith(b"HTTP/1.1 101")
    transport.clear()
    return protocol, transport


def masked(payload: bytes, opcode: int) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


def test_a_silent_peer_is_closed_at_the_handshake_deadline() -> None:
    mesh, clock = clocked_mesh(handshake_timeout=3.0)
    _, transport = open_websocket(mesh)
    clock.advance(2.9)
    assert transport.value() == b""
    clock.advance(0.2)
    frame = transport.value()
    assert frame[0] == 0x88 and struct.unpack(">H", frame[2:4])[0] == 4002  # close, 4002


def test_heartbeat_pings_an_idle_peer_and_drops_one_that_never_answers() -> None:
    mesh, clock = clocked_mesh(keepalive=10.0, handshake_timeout=60.0)
    protocol, transport = open_websocket(mesh)
    protocol.dataReceived(masked(b'{"uuid":"peer","belongsTo":"*","interests":[]}', 2))
    assert mesh.is_connected("peer")
    transport.clear()
    clock.advance(10.0)
    ping = transport.value()
    assert ping[0] == 0x89  # a ping went out after 10 s
    protocol.dataReceived(masked(ping[2:], 10))  # answered: still connected
    transport.clear()
    clock.advance(10.0)
    assert transport.value()[0] == 0x89
    clock.advance(4.9)  # the pong may take up to half the interval
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting  # no pong: dropped
    protocol.connectionLost(Failure(ConnectionDone()))
    assert not mesh.is_connected("peer")
