"""Length-prefixed framing shared by reverse RPC (u32 BE) and nested streams (u64 LE)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from support.splits import split
from txloom.wire.decoder import NEED_DATA, ConnectionClosed
from txloom.wire.errors import FrameTooLarge, LocalProtocolError, TruncatedFrame
from txloom.wire.framing import (
    U32_BE,
    U64_LE,
    Frame,
    LengthPrefixDecoder,
    encode_length_prefixed,
)

prefixes = st.sampled_from([U32_BE, U64_LE])


@given(
    prefixes, st.lists(st.binary(max_size=300), max_size=10), st.lists(st.integers(0), max_size=10)
)
def test_round_trip_any_split(prefix, payloads, cuts) -> None:
    stream = b"".join(encode_length_prefixed(prefix, p, 1000) for p in payloads)
    decoder = LengthPrefixDecoder(prefix, 1000)
    out = []
    for piece in split(stream, cuts):
        decoder.receive_data(piece)
        out.extend(decoder)
    assert out == [Frame(p) for p in payloads]
    assert not decoder.in_frame
    decoder.receive_eof()
    assert list(decoder) == [ConnectionClosed()]


@given(prefixes, st.binary(max_size=500))
def test_garbage_raises_only_frame_too_large(prefix, garbage) -> None:
    decoder = LengthPrefixDecoder(prefix, 64)
    decoder.receive_data(garbage)
    try:
        for event in decoder:
            assert len(event.payload) <= 64
    except FrameTooLarge:
        pass


def test_huge_length_refused_from_prefix_alone() -> None:
    decoder = LengthPrefixDecoder(U64_LE, 100 * 1024 * 1024)
    decoder.receive_data(b"\xff" * 8)
    with pytest.raises(FrameTooLarge):
        decoder.next_event()
    with pytest.raises(FrameTooLarge):  # errors are sticky
        decoder.next_event()


def test_cut_frame_is_visible() -> None:
    decoder = LengthPrefixDecoder(U32_BE, 100)
    decoder.receive_data(encode_length_prefixed(U32_BE, b"hello", 100)[:-2])
    assert decoder.next_event() is NEED_DATA
    assert decoder.in_frame
    decoder.receive_eof()
    with pytest.raises(TruncatedFrame):
        decoder.next_event()


def test_sender_refuses_oversize() -> None:
    with pytest.raises(LocalProtocolError):
        encode_length_prefixed(U32_BE, b"x" * 101, 100)
