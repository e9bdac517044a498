"""Connection deadlines, slots kept for authenticated clients, and the cap on bytes held
for unfinished frames: driven by a ``Clock`` over in-memory transports."""

from __future__ import annotations

import json
import zlib

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from txloom.store.backend import memory_backend
from txloom.store.config import StoreConfig
from txloom.store.service import StoreServerFactory
from txloom.wire.crcjson import encode_object


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body + (zlib.crc32(body) & 0xFFFFFFFF).to_bytes(4, "big")


class Peer:
    """One connection to the factory over a ``StringTransport``."""

    def __init__(self, factory: StoreServerFactory) -> None:
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5555))
        self.protocol = factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def request(self, **obj) -> None:
        self.send(encode_object(obj))

    def answers(self) -> list[dict]:
        data = self.transport.value()
        out = []
        while len(data) >= 8:
            size = int.from_bytes(data[:4], "big")
            out.append(json.loads(data[4 : 4 + size]))
            data = data[8 + size :]
        return out

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting or self.protocol.closing


def make_factory(clock: Clock, **overrides) -> StoreServerFactory:
    config = StoreConfig(listen=[], backend="memory", **overrides)
    backend = memory_backend(clock)
    opened = backend.open()
    clock.advance(0)
    assert opened.called
    factory = StoreServerFactory(backend, config, clock)
    factory.set_ready()
    return factory


def test_a_connection_that_never_authenticates_is_closed_at_the_deadline() -> None:
    clock = Clock()
    factory = make_factory(clock, auth_token="secret", auth_timeout=5.0)
    stranger, client = Peer(factory), Peer(factory)
    client.request(op="auth", token="secret")
    clock.advance(4.9)
    assert not stranger.closed
    clock.advance(0.2)
    assert stranger.closed
    assert stranger.answers()[-1]["error_code"] == "unauthorized"
    assert "within 5 s" in stranger.answers()[-1]["error"]
    assert not client.closed and client.answers() == [{"ok": True}]
    stranger.protocol.connectionLost(None)
    assert factory.unauthenticated == {} and factory.connections == {client.protocol}


def test_half_a_frame_is_closed_at_the_frame_deadline() -> None:
    """Regression: a peer sending half a header held its connection for ever."""
    clock = Clock()
    factory = make_factory(clock, frame_timeout=3.0)
    slow, steady = Peer(factory), Peer(factory)
    slow.send(b"\x00\x00")
    ping = encode_object({"op": "ping"})
    for _ in range(4):  # frames that each complete in time keep the connection
        steady.send(ping[:5])
        clock.advance(2.0)
        steady.send(ping[5:])
    assert slow.closed and slow.answers()[-1]["error_code"] == "bad_frame"
    assert "within 3 s" in slow.answers()[-1]["error"]
    assert not steady.closed and len(steady.answers()) == 4


def test_an_idle_connection_is_closed_but_a_busy_or_push_one_is_not() -> None:
    clock = Clock()
    factory = make_factory(clock, idle_timeout=60.0)
    idle, subscriber = Peer(factory), Peer(factory)
    subscriber.request(op="subscribe")
    idle.request(op="ping")
    clock.advance(59.0)
    assert not idle.closed
    idle.request(op="ping")  # activity moves the deadline
    clock.advance(59.0)
    assert not idle.closed
    clock.advance(1.5)
    assert idle.closed and idle.transport.disconnecting
    clock.advance(600.0)
    assert not subscriber.closed


def test_strangers_cannot_keep_a_client_with_the_token_out() -> None:
    """Regression: at --max-connections, the right token was refused ``overloaded``
    for as long as strangers held the slots."""
    clock = Clock()
    factory = make_factory(clock, auth_token="secret", max_connections=4, max_unauthenticated=2)
    first, second = Peer(factory), Peer(factory)
    first.request(op="auth", token="secret")
    second.request(op="auth", token="secret")
    strangers = [Peer(factory) for _ in range(5)]  # each pushes out the oldest stranger
    assert [s.closed for s in strangers] == [True, True, True, False, False]
    assert strangers[0].answers() == [
        {"ok": False, "error_code": "overloaded", "error": "too many connections"}
    ]
    client = Peer(factory)  # all four slots taken: a stranger makes room
    assert not client.closed and strangers[3].closed
    client.request(op="auth", token="secret")
    client.request(op="ping")
    assert client.answers() == [{"ok": True}, {"ok": True, "pong": True}]
    assert len(factory.connections) == 4
    late = Peer(factory)  # one stranger left to push out; then authenticated ones only
    assert strangers[4].closed and not late.closed
    late.request(op="auth", token="secret")
    refused = Peer(factory)
    assert refused.closed and refused.answers()[0]["error_code"] == "overloaded"


def test_unfinished_frames_across_connections_are_bounded() -> None:
    """Regression: 32 unfinished 16 MiB frames held 512 MiB."""
    clock = Clock()
    factory = make_factory(clock, max_frame_size=8192, max_partial_bytes=10_000)
    big = encode_object({"op": "ping", "pad": "x" * 7000})
    peers = [Peer(factory) for _ in range(3)]
    peers[0].send(big[:4500])
    peers[1].send(big[:4500])
    assert factory.partial_bytes == 9000
    peers[2].send(big[:4500])
    assert peers[2].closed and peers[2].answers()[-1]["error_code"] == "overloaded"
    assert factory.partial_bytes == 9000
    peers[0].send(big[4500:])  # a frame that completes gives its bytes back
    assert peers[0].answers()[-1]["pong"] is True
    assert factory.partial_bytes == 4500
    peers[1].protocol.connectionLost(None)
    assert factory.partial_bytes == 0


def test_before_authenticating_frames_are_small() -> None:
    clock = Clock()
    factory = make_factory(clock, auth_token="secret")
    stranger = Peer(factory)
    stranger.send((100_000).to_bytes(4, "big") + b"{")
    assert stranger.closed and stranger.answers()[0]["error_code"] == "frame_too_large"
    client = Peer(factory)
    client.request(op="auth", token="secret")
    client.request(op="write_fact", fact={"store": "s", "value": "x" * 100_000})
    clock.advance(0)
    assert [a["ok"] for a in client.answers()] == [True, True]
