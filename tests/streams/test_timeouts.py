"""Every client and server timeout, and the error mass, driven by a ``task.Clock``."""

from __future__ import annotations

import itertools

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock

from support.streams import SERVICE, client_for, control_frame, raw_connect, raw_server, serving
from support.waiting import until
from txloom.streams import Source, StaticResolver, StreamClient, StreamTimeout
from txloom.wire.decoder import NEED_DATA
from txloom.wire.streams import (
    Accepted,
    Announce,
    Attach,
    Hello,
    MasterDecoder,
    SourceAborted,
    encode_frame,
)


class NeverConnects:
    def connect(self, factory):
        return Deferred(lambda d: None)


@pytest_twisted.ensureDeferred
async def test_dial_timeout() -> None:
    clock = Clock()
    client = StreamClient(StaticResolver({SERVICE: ["tcp:192.0.2.1:1"]}), clock=clock)
    client.endpoint_factory = lambda endpoint: NeverConnects()
    request = client.post(SERVICE, b"")
    pending = request.next_source()
    clock.advance(9.9)
    assert not pending.called
    clock.advance(0.2)
    with pytest.raises(StreamTimeout, match="dial timeout"):
        await pending


@pytest_twisted.ensureDeferred
async def test_master_read_timeout() -> None:
    got = []
    port, endpoint = await raw_server(lambda t, h, b: got.append(b), lambda t, c: None)
    try:
        clock = Clock()
        client = StreamClient(
            StaticResolver({SERVICE: [endpoint]}), clock=clock, master_read_timeout=5
        )
        pending = client.post(SERVICE, b"body").next_source()
        await until(lambda: got, what="the request to arrive")
        clock.advance(5)
        with pytest.raises(StreamTimeout, match="master read timeout"):
            await pending
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_frame_read_timeout() -> None:
    def on_master(transport, hello, body):
        transport.write(encode_frame(b"h") + control_frame(Announce(b"c")))

    port, endpoint = await raw_server(
        on_master, lambda transport, c: transport.write(control_frame(Accepted()))
    )
    try:
        clock = Clock()
        client = StreamClient(
            StaticResolver({SERVICE: [endpoint]}), clock=clock, frame_read_timeout=5
        )
        source = await client.post(SERVICE, b"").next_source()
        read = source.read()
        clock.advance(5)
        with pytest.raises(StreamTimeout, match="frame read timeout"):
            await read
    finally:
        await port.stopListening()


class NotReading(Protocol):
    def connectionMade(self) -> None:
        self.transport.pauseProducing()


@pytest_twisted.ensureDeferred
async def test_client_master_write_timeout() -> None:
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Factory.forProtocol(NotReading)
    )
    try:
        clock = Clock()
        endpoint = f"tcp:127.0.0.1:{port.getHost().port}"
        client = StreamClient(
            StaticResolver({SERVICE: [endpoint]}), clock=clock, master_write_timeout=5
        )
        request = client.post(SERVICE, bytes(48 << 20))
        pending = request.next_source()
        await until(
            lambda: request.master is not None and request.master.write_deadline.armed,
            what="the body to stall",
        )
        clock.advance(5)
        with pytest.raises(StreamTimeout, match="master write timeout"):
            await pending
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_serving_timeout_cuts_master_and_channels() -> None:
    clock = Clock()
    async with serving(
        lambda b, t: [Source(b"s", (bytes(1000) for _ in itertools.count()))],
        clock=clock,
        serving_timeout=10,
    ) as server:
        source = await client_for(server, frame_buffer=8).post(SERVICE, b"").next_source()
        await source.read()
        clock.advance(10)
        with pytest.raises(SourceAborted):
            while True:
                await source.read()
        await until(lambda: not server.requests, what="the request to be dropped")


@pytest_twisted.ensureDeferred
async def test_sourcing_timeout_closes_the_master() -> None:
    clock = Clock()
    never: Deferred[None] = Deferred()

    async def sources(body, tags):
        yield Source(b"first", [b"a", b"b"])
        await never
        yield Source(b"second", [])

    async with serving(sources, clock=clock, sourcing_timeout=5) as server:
        request = client_for(server).post(SERVICE, b"")
        first = await request.next_source()
        assert [f async for f in first] == [b"a", b"b"]
        following = request.next_source()
        clock.advance(5)
        assert await following is None  # the sequence ends; the source stays whole
        await until(lambda: not server.requests, what="the request to end")


@pytest_twisted.ensureDeferred
async def test_server_master_read_timeout() -> None:
    clock = Clock()
    async with serving(lambda b, t: [], clock=clock, master_read_timeout=3) as server:
        peer = await raw_connect(server)
        peer.transport.write(control_frame(Hello(SERVICE)))  # and never the body
        await until(lambda: server.port is not None)
        await until(clock.getDelayedCalls, what="the read deadline")
        clock.advance(3)
        await peer.lost
        assert server.error_mass == 1


def announcements(peer) -> list:
    decoder = MasterDecoder()
    decoder.receive_data(bytes(peer.received))
    out = []
    while (event := decoder.next_event()) is not NEED_DATA:
        out.append(event)
    return out


@pytest_twisted.ensureDeferred
async def test_server_master_write_timeout() -> None:
    clock = Clock()
    released, made = [], []

    def frames():
        made.append(1)
        try:
            yield b""
        finally:
            released.append(1)

    def sources(body, tags):
        for _ in range(1000):
            gen = frames()
            next(gen)
            yield Source(bytes(256 * 1024), gen)

    async with serving(sources, clock=clock, master_write_timeout=5) as server:
        peer = await raw_connect(server)
        peer.transport.pauseProducing()
        peer.transport.write(control_frame(Hello(SERVICE)) + encode_frame(b""))
        await until(lambda: server.requests, what="the request")
        (run,) = server.requests
        await until(lambda: run.write_deadline.armed, what="the master to stall")
        clock.advance(5)
        await until(lambda: not server.requests, what="the request to be dropped")
        assert not server.pending
        assert run.announced < 1000
        assert len(released) == len(made)  # every source taken from the function was released


@pytest_twisted.ensureDeferred
async def test_frame_write_timeout() -> None:
    clock = Clock()
    endless = (bytes(64 * 1024) for _ in itertools.count())
    async with serving(
        lambda b, t: [Source(b"s", endless)], clock=clock, frame_write_timeout=5
    ) as server:
        master = await raw_connect(server)
        master.transport.write(control_frame(Hello(SERVICE)) + encode_frame(b""))
        await until(lambda: announcements(master), what="the announcement")
        token = announcements(master)[0].channel
        channel = await raw_connect(server)
        channel.transport.pauseProducing()
        channel.transport.write(control_frame(Attach(token)))
        (run,) = server.requests
        await until(lambda: run.pumps, what="the channel to attach")
        (pump,) = run.pumps
        await until(lambda: pump.write_deadline.armed, what="the channel to stall")
        clock.advance(5)
        assert pump.done
        await until(lambda: not server.requests, what="the request to end")


@pytest_twisted.ensureDeferred
async def test_error_mass_pauses_accepting() -> None:
    clock = Clock()
    async with serving(lambda b, t: [], clock=clock, max_error_mass=3) as server:
        for _ in range(3):
            peer = await raw_connect(server)
            peer.transport.write(encode_frame(b"garbage, not a control frame"))
            await peer.lost
        assert not server.accepting
        clock.advance(29)
        assert not server.accepting
        clock.advance(1)
        assert server.accepting
        answer = await client_for(server).post(SERVICE, b"").collect()
        assert answer == []


@pytest_twisted.ensureDeferred
async def test_error_mass_action_is_an_option() -> None:
    seen = []
    async with serving(lambda b, t: [], max_error_mass=2, on_max_error_mass=seen.append) as server:
        for _ in range(2):
            peer = await raw_connect(server)
            peer.transport.write(encode_frame(b"\xff"))
            await peer.lost
        assert seen == [server] and server.accepting
