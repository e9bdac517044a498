"""Failures on real sockets: never-attached sources, cut frames, oversize lengths."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from support.streams import SERVICE, control_frame, raw_connect, raw_server, serving
from support.waiting import until
from txloom.streams import StaticResolver, StreamClient
from txloom.streams.source import Source
from txloom.wire.errors import FrameTooLarge, TruncatedFrame
from txloom.wire.framing import U64_LE
from txloom.wire.streams import Accepted, Announce, End, Hello, MasterClosedEarly, encode_frame


@pytest_twisted.ensureDeferred
async def test_source_never_attached_times_out_and_its_producer_is_released() -> None:
    released = []

    def frames():
        try:
            yield b"never sent"
        finally:
            released.append(True)

    gen = frames()
    next(gen, None)  # started, so that closing it runs its finally
    clock = Clock()
    async with serving(lambda b, t: [Source(b"h", gen)], clock=clock) as server:
        peer = await raw_connect(server)
        peer.transport.write(control_frame(Hello(SERVICE)) + encode_frame(b"body"))
        await until(lambda: server.pending, what="the source to be announced")
        clock.advance(29.9)
        assert server.pending and not released
        clock.advance(0.2)
        assert not server.pending
        assert released == [True]
        assert server.error_mass == 1
        await until(lambda: not server.requests, what="the request to end")


def _channels(tokens: list[bytes]):
    def on_master(transport, hello, body):
        for token in tokens:
            transport.write(encode_frame(token) + control_frame(Announce(token)))
        transport.write(encode_frame(b"") + control_frame(End()))
        transport.loseConnection()

    return on_master


@pytest_twisted.ensureDeferred
async def test_connection_cut_mid_frame_fails_that_source_only() -> None:
    def on_channel(transport, token):
        transport.write(control_frame(Accepted()) + encode_frame(b"whole"))
        if token == b"cut":
            transport.write(encode_frame(b"0123456789")[:-3])
        else:
            transport.write(encode_frame(b"last"))
        transport.loseConnection()

    port, endpoint = await raw_server(_channels([b"a", b"cut", b"b"]), on_channel)
    try:
        errors = []
        client = StreamClient(
            StaticResolver({SERVICE: [endpoint]}), on_error=lambda e, s: errors.append((e, s))
        )
        results = {}
        async for source in client.post(SERVICE, b""):
            frames = []
            try:
                async for frame in source:
                    frames.append(frame)
            except TruncatedFrame:
                frames.append("truncated")
            results[source.header] = frames
        assert results == {
            b"a": [b"whole", b"last"],
            b"cut": [b"whole", "truncated"],
            b"b": [b"whole", b"last"],
        }
        assert [type(e) for e, _ in errors] == [TruncatedFrame]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_oversize_length_rejected_before_allocation() -> None:
    def on_channel(transport, token):
        transport.write(control_frame(Accepted()) + U64_LE.pack(2**40) + b"x" * 100)

    port, endpoint = await raw_server(_channels([b"big"]), on_channel)
    try:
        client = StreamClient(StaticResolver({SERVICE: [endpoint]}), max_frame_size=1 << 20)
        source = await client.post(SERVICE, b"").next_source()
        with pytest.raises(FrameTooLarge, match="1099511627776"):
            await source.read()
        connection = source._connection
        assert connection.decoder.pending < 200  # nothing of the 1 TiB was reserved
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_master_cut_after_a_source_is_an_error_not_the_end() -> None:
    def on_master(transport, hello, body):
        transport.write(encode_frame(b"h") + control_frame(Announce(b"c")))
        transport.loseConnection()  # a crash between two announcements

    def on_channel(transport, token):
        transport.write(control_frame(Accepted()) + encode_frame(b"f"))
        transport.loseConnection()

    port, endpoint = await raw_server(on_master, on_channel)
    try:
        request = StreamClient(StaticResolver({SERVICE: [endpoint]})).post(SERVICE, b"")
        source = await request.next_source()
        assert [f async for f in source] == [b"f"]
        with pytest.raises(MasterClosedEarly):
            await request.next_source()
    finally:
        await port.stopListening()
