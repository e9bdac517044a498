"""Sources over real loopback TCP: content byte for byte, compression, the model's defects."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed

from support.streams import SERVICE, client_for, serving
from support.waiting import until
from txloom.streams import RequestRefused, Source, StreamServer
from txloom.wire.errors import RemoteProtocolError
from txloom.wire.streams import LARGE_FRAME, LZ4_MARKER

LARGE = 180 * 1024


def ten_sources(body: bytes, tags: dict[str, str]) -> list[Source]:
    return [
        Source(b"h%d" % i, [b"small %d" % i, os.urandom(LARGE // 2) + bytes(LARGE // 2)])
        for i in range(10)
    ]


def expected(answer):
    return [(h, [len(f) for f in frames]) for h, frames in answer]


@pytest.mark.parametrize("compression", [False, True])
@pytest_twisted.ensureDeferred
async def test_ten_sources_small_and_large_frames(compression: bool) -> None:
    sent: dict[bytes, list[bytes]] = {}

    def sources(body: bytes, tags: dict[str, str]) -> list[Source]:
        made = ten_sources(body, tags)
        for s in made:
            sent[s.header] = list(s.frames)
        return [Source(h, f) for h, f in sent.items()]

    async with serving(sources, compression=compression) as server:
        answer = await client_for(server).post(SERVICE, b"q").collect()
    assert [h for h, _ in answer] == [b"h%d" % i for i in range(10)]
    for header, frames in answer:
        assert frames == sent[header]  # byte for byte


@pytest_twisted.ensureDeferred
async def test_large_frames_from_plain_and_slow_async_sources() -> None:
    """Frames over ``LARGE_FRAME`` go out in their own write and are read whole where they
    can be: content byte for byte, mixed with small ones, from iterables and from an async
    generator whose frames come a reactor turn later."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    frames = [os.urandom(LARGE_FRAME + 1), b"s", os.urandom(1024 * 1024), b"", os.urandom(300_000)]

    async def later():
        for frame in frames:
            yield await deferLater(reactor, 0, lambda f=frame: f)

    def sources(body, tags):
        return [Source(b"plain", list(frames)), Source(b"async", later())]

    async with serving(sources) as server:
        answer = await client_for(server).post(SERVICE, b"").collect()
    assert answer == [(b"plain", frames), (b"async", frames)]


@pytest_twisted.ensureDeferred
async def test_thousand_sources_of_hundred_frames() -> None:
    def frames(i: int) -> list[bytes]:
        return [b"%d:%d" % (i, j) for j in range(100)]

    def sources(body, tags):
        return (Source(b"%d" % i, frames(i)) for i in range(1000))

    async with serving(sources) as server:
        answer = await client_for(server, source_buffer=64).post(SERVICE, b"").collect()
    assert len(answer) == 1000
    assert answer == [(b"%d" % i, frames(i)) for i in range(1000)]


PAYLOADS = [
    b"abc" * 5000,  # compressible
    os.urandom(5000),  # incompressible: the model sent an empty block (12 bytes of garbage)
    LZ4_MARKER + bytes(8) + b"not compressed",  # the model misread it as compressed
    LZ4_MARKER,
    b"",
    b"x" * 12,
]


@pytest.mark.parametrize("compression", [False, True])
@pytest_twisted.ensureDeferred
async def test_payload_kinds_arrive_unchanged(compression: bool) -> None:
    async with serving(lambda b, t: [Source(b"p", PAYLOADS)], compression=compression) as server:
        answer = await client_for(server).post(SERVICE, b"").collect()
    assert answer == [(b"p", PAYLOADS)]


@pytest_twisted.ensureDeferred
async def test_body_tags_and_async_generators() -> None:
    seen = []

    async def frames(n: int):
        for i in range(n):
            yield await succeed(b"%d" % i)

    async def sources(body, tags):
        seen.append((body, tags))
        for n in (3, 0, 2):
            yield Source(b"n%d" % n, frames(n))

    async with serving(sources) as server:
        request = client_for(server).post(SERVICE, b"the body", tags={"bucket": "b1", "k": "v"})
        answer = await request.collect()
    assert seen == [(b"the body", {"bucket": "b1", "k": "v"})]
    assert answer == [(b"n3", [b"0", b"1", b"2"]), (b"n0", []), (b"n2", [b"0", b"1"])]


@pytest_twisted.ensureDeferred
async def test_deferred_style_source_function_and_reads() -> None:
    def sources(body, tags) -> Deferred:
        return succeed([(b"a", [succeed(b"1"), b"2"])])

    async with serving(sources) as server:
        request = client_for(server).post(SERVICE, b"")
        source = await request.next_source()
        assert source.header == b"a"
        assert source.meta.remote.port == server.address[1]
        assert [await source.read(), await source.read(), await source.read()] == [b"1", b"2", None]
        assert await request.next_source() is None


@pytest_twisted.ensureDeferred
async def test_failing_source_function_is_a_refusal() -> None:
    def sources(body, tags):
        raise ValueError("no such thing")

    async with serving(sources) as server:
        with pytest.raises(RequestRefused, match="no such thing"):
            await client_for(server).post(SERVICE, b"").collect()


@pytest_twisted.ensureDeferred
async def test_source_failing_mid_stream_is_an_error_on_that_source_only() -> None:
    def broken():
        yield b"one"
        raise RuntimeError("disk on fire")

    async with serving(lambda b, t: [Source(b"bad", broken()), Source(b"ok", [b"x"])]) as server:
        request = client_for(server).post(SERVICE, b"")
        bad = await request.next_source()
        ok = await request.next_source()
        assert await bad.read() == b"one"
        with pytest.raises(RemoteProtocolError, match="failed on the server"):
            await bad.read()
        assert [f async for f in ok] == [b"x"]


@pytest_twisted.ensureDeferred
async def test_unknown_service_of_a_service_table() -> None:
    server = StreamServer({"other": lambda b, t: []})
    await server.listen()
    try:
        with pytest.raises(RequestRefused, match="unknown service"):
            await client_for(server).post(SERVICE, b"").collect()
    finally:
        await server.stopService()


@pytest_twisted.ensureDeferred
async def test_server_is_a_service_in_a_multiservice() -> None:
    root = MultiService()
    server = StreamServer(lambda b, t: [Source(b"s", [b])])
    server.setServiceParent(root)
    root.startService()
    try:
        await until(lambda: server.address is not None, what="the server to listen")
        assert await client_for(server).post(SERVICE, b"hi").collect() == [(b"s", [b"hi"])]
    finally:
        await root.stopService()
    assert server.port is None
