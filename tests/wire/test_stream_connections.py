"""Nested-streams connection state machines: any split, garbage behind valid prefixes."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support.splits import split
from txloom.wire.decoder import NEED_DATA, ConnectionClosed
from txloom.wire.errors import FrameTooLarge, RemoteProtocolError, TruncatedFrame
from txloom.wire.framing import U64_LE
from txloom.wire.streams import (
    ABORT_MARK,
    LARGE_FRAME,
    MAX_CONTROL_SIZE,
    Accepted,
    Announce,
    Attach,
    ChannelDecoder,
    End,
    Frame,
    Hello,
    MasterClosedEarly,
    MasterDecoder,
    Refuse,
    Request,
    ServerConnectionDecoder,
    SourceAborted,
    SourceAnnounced,
    TooManySources,
    UnexpectedFrame,
    compress_payload,
    encode_control,
    encode_frame,
)

cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=8)


def drain(decoder, pieces, eof=True) -> list:
    out = []
    for piece in pieces:
        decoder.receive_data(piece)
        out.extend(decoder)
    if eof:
        decoder.receive_eof()
        out.extend(decoder)
    return out


def control(msg) -> bytes:
    return encode_frame(encode_control(msg))


@given(
    st.text(max_size=20),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    st.none() | st.binary(min_size=1, max_size=32),
    st.binary(max_size=3000),
    cuts,
)
def test_master_request_any_split(service, tags, token, body, points) -> None:
    hello = Hello(service, tags, token)
    stream = control(hello) + encode_frame(body)
    events = drain(ServerConnectionDecoder(), split(stream, points))
    assert events == [hello, Request(body), ConnectionClosed()]


@given(st.binary(min_size=1, max_size=32), st.none() | st.binary(max_size=16), cuts)
def test_attach_any_split(channel, token, points) -> None:
    events = drain(ServerConnectionDecoder(), split(control(Attach(channel, token)), points))
    assert events == [Attach(channel, token), ConnectionClosed()]


def test_server_refuses_a_second_request_on_one_master() -> None:
    decoder = ServerConnectionDecoder()
    decoder.receive_data(control(Hello("s")) + encode_frame(b"a") + encode_frame(b"b"))
    assert decoder.next_event() == Hello("s")
    assert decoder.next_event() == Request(b"a")
    with pytest.raises(UnexpectedFrame):
        decoder.next_event()


def test_server_first_frame_limited_to_a_control_frame() -> None:
    decoder = ServerConnectionDecoder()
    decoder.receive_data(U64_LE.pack(MAX_CONTROL_SIZE + 1))
    with pytest.raises(FrameTooLarge):
        decoder.next_event()


def test_request_body_limited_before_buffering() -> None:
    decoder = ServerConnectionDecoder(max_frame_size=100)
    decoder.receive_data(control(Hello("s")) + U64_LE.pack(101))
    assert decoder.next_event() == Hello("s")
    with pytest.raises(FrameTooLarge):
        decoder.next_event()


sources = st.lists(
    st.tuples(st.binary(max_size=200), st.binary(min_size=1, max_size=16), st.booleans()),
    max_size=6,
)


@given(sources, st.booleans(), cuts)
def test_master_announcements_any_split(items, refuse, points) -> None:
    stream = b"".join(encode_frame(h) + control(Announce(c, z)) for h, c, z in items)
    end = Refuse("no") if refuse else End()
    stream += encode_frame(b"") + control(end)
    events = drain(MasterDecoder(), split(stream, points))
    expected = [SourceAnnounced(h, c, z) for h, c, z in items] + [end]
    assert events == [*expected, ConnectionClosed()]


def test_master_cut_between_header_and_announce_is_an_error() -> None:
    decoder = MasterDecoder()
    decoder.receive_data(encode_frame(b"header"))
    assert decoder.next_event() is NEED_DATA
    decoder.receive_eof()
    with pytest.raises(TruncatedFrame):
        decoder.next_event()


def test_master_closed_without_end_is_an_error() -> None:
    decoder = MasterDecoder()
    decoder.receive_data(encode_frame(b"h") + control(Announce(b"c")))
    assert isinstance(decoder.next_event(), SourceAnnounced)
    decoder.receive_eof()
    with pytest.raises(MasterClosedEarly):
        decoder.next_event()


def test_nothing_after_end() -> None:
    decoder = MasterDecoder()
    decoder.receive_data(encode_frame(b"") + control(End()) + encode_frame(b"h"))
    assert decoder.next_event() == End()
    with pytest.raises(UnexpectedFrame):
        decoder.next_event()


def test_master_limits_sources() -> None:
    decoder = MasterDecoder(max_sources=1)
    decoder.receive_data((encode_frame(b"h") + control(Announce(b"c"))) * 2)
    assert isinstance(decoder.next_event(), SourceAnnounced)
    with pytest.raises(TooManySources):
        decoder.next_event()


@given(st.lists(st.binary(max_size=300), max_size=8), st.booleans(), cuts)
def test_channel_frames_any_split(payloads, compressed, points) -> None:
    encode = compress_payload if compressed else bytes
    stream = control(Accepted()) + b"".join(encode_frame(encode(p)) for p in payloads)
    events = drain(ChannelDecoder(compressed), split(stream, points))
    assert events == [Accepted(), *(Frame(p) for p in payloads), ConnectionClosed()]


def test_uncompressed_channel_keeps_the_marker() -> None:
    stream = control(Accepted()) + encode_frame(b"lz4!" + bytes(8) + b"raw")
    events = drain(ChannelDecoder(False), [stream])
    assert events[1] == Frame(b"lz4!" + bytes(8) + b"raw")


def test_channel_abort_mark_is_an_error() -> None:
    decoder = ChannelDecoder(False)
    decoder.receive_data(control(Accepted()) + encode_frame(b"x") + ABORT_MARK)
    assert decoder.next_event() == Accepted()
    assert decoder.next_event() == Frame(b"x")
    with pytest.raises(SourceAborted):
        decoder.next_event()


def test_channel_cut_mid_frame_is_an_error_not_an_end() -> None:
    decoder = ChannelDecoder(False)
    decoder.receive_data(control(Accepted()) + encode_frame(b"abcdef")[:-2])
    decoder.receive_eof()
    assert decoder.next_event() == Accepted()
    with pytest.raises(TruncatedFrame):
        decoder.next_event()


def test_channel_refused() -> None:
    events = drain(ChannelDecoder(False), [control(Refuse("bad token"))])
    assert events == [Refuse("bad token"), ConnectionClosed()]


# Garbage behind valid length prefixes, so that it reaches control parsing, state checks
# and decompression rather than stopping at the length field.
garbage_frames = st.lists(st.binary(max_size=64), min_size=1, max_size=6).map(
    lambda parts: b"".join(encode_frame(p) for p in parts)
)
controls = st.sampled_from(
    [Hello("s"), Attach(b"c"), Announce(b"c", True), Accepted(), Refuse("r"), End()]
).map(control)
garbage = st.lists(garbage_frames | controls, max_size=5).map(b"".join)


makers = st.sampled_from([ServerConnectionDecoder, MasterDecoder, lambda: ChannelDecoder(True)])


@given(makers, garbage, st.booleans())
def test_garbage_gives_events_or_a_remote_error(make, data, eof) -> None:
    decoder = make()
    with contextlib.suppress(RemoteProtocolError):
        drain(decoder, [data], eof=eof)
        return
    with pytest.raises(RemoteProtocolError):  # sticky
        decoder.next_event()


LARGE = [bytes(range(256)) * 1100, b"small", b"y" * (LARGE_FRAME + 1), b""]


@settings(max_examples=25)
@given(st.lists(st.integers(min_value=1, max_value=100_000), min_size=1, max_size=6))
def test_large_frames_gathered_under_any_reads(sizes) -> None:
    stream = control(Accepted()) + b"".join(encode_frame(p) for p in LARGE)
    pieces, i = [], 0
    while i < len(stream):
        size = sizes[len(pieces) % len(sizes)]
        pieces.append(stream[i : i + size])
        i += size
    events = drain(ChannelDecoder(False), pieces)
    assert events == [Accepted(), *(Frame(p) for p in LARGE), ConnectionClosed()]


def test_large_frame_cut_is_truncated() -> None:
    decoder = ChannelDecoder(False)
    stream = control(Accepted()) + encode_frame(bytes(LARGE_FRAME * 2))
    for i in range(0, len(stream) - 1000, 65536):
        decoder.receive_data(stream[i : min(i + 65536, len(stream) - 1000)])
        list(decoder)
    assert decoder.in_frame and decoder.pending > LARGE_FRAME
    decoder.receive_eof()
    with pytest.raises(TruncatedFrame):
        decoder.next_event()


@settings(max_examples=15)
@given(st.lists(st.integers(min_value=4000, max_value=400_000), min_size=1, max_size=6))
def test_reads_sized_by_the_read_hint(available) -> None:
    """A reader following ``read_hint`` (the kernel having ``available`` bytes at each read)
    gets every frame, and a large payload read whole is kept as that very object."""
    stream = control(Accepted()) + b"".join(encode_frame(p) for p in LARGE)
    decoder, events, pos, n = ChannelDecoder(False), [], 0, 0
    while pos < len(stream):
        want = min(decoder.read_hint or 256 * 1024, available[n % len(available)])
        n += 1
        decoder.receive_data(stream[pos : pos + want])
        pos += want
        events.extend(decoder)
    decoder.receive_eof()
    events.extend(decoder)
    assert events == [Accepted(), *(Frame(p) for p in LARGE), ConnectionClosed()]


def test_a_large_payload_read_whole_is_not_copied() -> None:
    payload = b"z" * (LARGE_FRAME * 2)
    decoder = ChannelDecoder(False)
    decoder.receive_data(control(Accepted()) + encode_frame(b"x" * LARGE_FRAME))
    assert list(decoder) == [Accepted(), Frame(b"x" * LARGE_FRAME)]
    assert decoder.read_hint == 8  # after a large frame: the next prefix alone
    decoder.receive_data(encode_frame(payload)[:8])
    assert decoder.next_frames() == []
    assert decoder.read_hint == len(payload)  # then exactly the payload
    whole = bytes(bytearray(payload))
    decoder.receive_data(whole)
    (frame,) = decoder.next_frames()
    assert frame is whole
    decoder.receive_data(encode_frame(b"small"))
    assert decoder.next_frames() == [b"small"]
    assert decoder.read_hint is None
