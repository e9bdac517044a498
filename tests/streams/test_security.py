"""Tokens, limits and TLS, on real sockets."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from support.certs import self_signed_certificate
from support.streams import SERVICE, client_for, control_frame, raw_connect, serving
from support.waiting import until
from txloom.streams import RequestRefused, Source, StaticResolver, StreamClient
from txloom.wire.decoder import NEED_DATA
from txloom.wire.streams import (
    Attach,
    ChannelDecoder,
    Hello,
    MasterClosedEarly,
    MasterDecoder,
    Refuse,
    SourceAborted,
    TooManySources,
    encode_frame,
)

TOKEN = b"shared secret"


@pytest_twisted.ensureDeferred
async def test_shared_token_required_in_hello() -> None:
    async with serving(lambda b, t: [Source(b"s", [b"x"])], token=TOKEN) as server:
        with pytest.raises(RequestRefused, match="bad or missing token"):
            await client_for(server).post(SERVICE, b"").collect()
        with pytest.raises(RequestRefused, match="bad or missing token"):
            await client_for(server, token=b"wrong").post(SERVICE, b"").collect()
        answer = await client_for(server, token=TOKEN).post(SERVICE, b"").collect()
        assert answer == [(b"s", [b"x"])]


def events(data: bytes, decoder) -> list:
    decoder.receive_data(data)
    out = []
    while (event := decoder.next_event()) is not NEED_DATA:
        out.append(event)
    return out


async def attach(server, token: bytes | None, channel: bytes) -> list:
    peer = await raw_connect(server)
    peer.transport.write(control_frame(Attach(channel, token)))
    await peer.lost
    return events(bytes(peer.received), ChannelDecoder(False))


@pytest_twisted.ensureDeferred
async def test_channel_token_alone_reads_nothing_and_is_single_use() -> None:
    async with serving(lambda b, t: [Source(b"s", [b"secret frame"])], token=TOKEN) as server:
        master = await raw_connect(server)
        master.transport.write(control_frame(Hello(SERVICE, token=TOKEN)) + encode_frame(b""))
        await until(lambda: events(bytes(master.received), MasterDecoder()), what="announce")
        channel = events(bytes(master.received), MasterDecoder())[0].channel
        assert len(channel) == 16  # 128 random bits
        # A stranger who saw the channel token but has no shared token: refused, and the
        # source stays for its owner.
        assert await attach(server, None, channel) == [Refuse("bad or missing token")]
        got = await attach(server, TOKEN, channel)
        assert got[1:] == [got[1]] and got[1].payload == b"secret frame"
        # Used once: a replay is refused.
        refused = await attach(server, TOKEN, channel)
        assert isinstance(refused[0], Refuse) and "unknown channel" in refused[0].reason


@pytest_twisted.ensureDeferred
async def test_sources_per_request_limited_on_both_sides() -> None:
    many = lambda b, t: (Source(b"%d" % i, []) for i in range(10))  # noqa: E731
    async with serving(many, max_sources=3) as server:
        request = client_for(server).post(SERVICE, b"")
        got = [await request.next_source() for _ in range(3)]
        assert [s.header for s in got] == [b"0", b"1", b"2"]
        with pytest.raises(RequestRefused, match="source limit"):
            await request.next_source()
    async with serving(many) as server:
        request = client_for(server, max_sources=2).post(SERVICE, b"")
        assert (await request.next_source()).header == b"0"
        assert (await request.next_source()).header == b"1"
        with pytest.raises(TooManySources):
            await request.next_source()


@pytest_twisted.ensureDeferred
async def test_frame_size_limited_on_both_sides() -> None:
    async with serving(lambda b, t: [Source(b"s", [bytes(2000)])], max_frame_size=1000) as server:
        with pytest.raises(RequestRefused, match="exceeds the limit"):
            await client_for(server).post(SERVICE, bytes(1001)).collect()
        source = await client_for(server).post(SERVICE, b"").next_source()
        with pytest.raises(SourceAborted):
            await source.read()


@pytest_twisted.ensureDeferred
async def test_concurrent_requests_limited() -> None:
    hold: Deferred[None] = Deferred()

    async def slow(body, tags):
        await hold
        yield Source(b"s", [])

    async with serving(slow, max_requests=1) as server:
        first = client_for(server).post(SERVICE, b"")
        await until(lambda: server.requests, what="the first request")
        with pytest.raises(RequestRefused, match="server busy"):
            await client_for(server).post(SERVICE, b"").collect()
        hold.callback(None)
        assert [s.header for s in [await first.next_source()]] == [b"s"]


@pytest_twisted.ensureDeferred
async def test_tls_through_endpoint_strings(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path / "tls")
    listen = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    async with serving(lambda b, t: [Source(b"s", [b"over tls"] * 3)], endpoint=listen) as server:
        port = server.address[1]
        endpoint = f"ssl:host=127.0.0.1:port={port}:caCertsDir={cert.parent}"
        client = StreamClient(StaticResolver({SERVICE: [endpoint]}))
        assert await client.post(SERVICE, b"").collect() == [(b"s", [b"over tls"] * 3)]
        # A plain TCP client cannot talk to it.
        plain = StreamClient(StaticResolver({SERVICE: [f"tcp:127.0.0.1:{port}"]}))
        with pytest.raises(MasterClosedEarly):
            await plain.post(SERVICE, b"").collect()
