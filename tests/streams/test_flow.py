"""Flow control end to end: one slow reader pauses its own source, every buffer is bounded."""

from __future__ import annotations

import itertools

import pytest_twisted

from support.streams import SERVICE, client_for, serving
from support.waiting import until
from txloom.streams import Source
from txloom.streams.channel import READ_SIZE
from txloom.streams.serving import WRITE_BATCH

FRAME = 64 * 1024


@pytest_twisted.ensureDeferred
async def test_stalled_reader_pauses_only_its_source_and_server_buffer_is_bounded() -> None:
    pulled = {"stalled": 0}

    def endless():
        for _ in itertools.count():
            pulled["stalled"] += 1
            yield bytes(FRAME)

    def sources(body, tags):
        yield Source(b"stalled", endless())
        for i in range(9):
            yield Source(b"%d" % i, [b"%d" % j * 100 for j in range(300)])

    async with serving(sources) as server:
        request = client_for(server, frame_buffer=4).post(SERVICE, b"")
        stalled = await request.next_source()
        assert await stalled.read() == bytes(FRAME)
        finished = [len([f async for f in source]) async for source in request]
        assert finished == [300] * 9
        (run,) = server.requests
        (pump,) = run.pumps
        await until(lambda: pump.paused, what="the stalled source's pump to be paused")
        # The server holds at most the transport's buffer plus one batch for this source...
        assert pump.buffered <= 64 * 1024 + WRITE_BATCH + FRAME
        # ...and stopped pulling from the source: what it pulled is in socket buffers and in
        # the client's read-ahead (4 frames), not an endless queue.
        frames_pulled = pulled["stalled"]
        assert frames_pulled * FRAME < 64 * 1024 * 1024
        assert stalled.frames_received <= frames_pulled
        assert len(stalled._frames) <= 4 + READ_SIZE // FRAME + 1
        # Reading on resumes it, to the end of what we care to read.
        for _ in range(frames_pulled + 10):
            assert await stalled.read() == bytes(FRAME)
        assert pulled["stalled"] > frames_pulled
        request.close()
        stalled.close()
        await until(lambda: not server.requests, what="the request to end on the server")


@pytest_twisted.ensureDeferred
async def test_client_read_ahead_bounded_by_frame_buffer() -> None:
    async with serving(lambda b, t: [Source(b"s", (b"x" * 1000 for _ in range(5000)))]) as server:
        request = client_for(server, frame_buffer=16).post(SERVICE, b"")
        source = await request.next_source()
        await until(lambda: source._paused, what="the channel to be paused")
        # frames already decoded from the last read may land on top of the limit
        assert 16 <= len(source._frames) <= 16 + READ_SIZE // 1000
        assert len([f async for f in source]) == 5000


@pytest_twisted.ensureDeferred
async def test_unconsumed_sources_bounded_by_source_buffer() -> None:
    announced = []

    def sources(body, tags):
        for i in range(200):
            announced.append(i)
            yield Source(b"%d" % i, [b"f"])

    async with serving(sources) as server:
        request = client_for(server, source_buffer=5).post(SERVICE, b"")
        first = await request.next_source()
        await until(lambda: len(request._sources) == 5, what="the source buffer to fill")
        assert len(request._sources) == 5
        assert len(request._open) <= 6  # the one taken and five waiting: channels too
        rest = [s async for s in request]
        assert len(rest) == 199 and first.header == b"0"
        assert len(announced) == 200
