"""Nested-streams codec: frames, LZ4 payloads without the model's defects, control messages."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from txloom.wire.errors import RemoteProtocolError
from txloom.wire.framing import U64_LE
from txloom.wire.streams import (
    LZ4_MARKER,
    Announce,
    Attach,
    BadCompression,
    Hello,
    InvalidControl,
    StreamFrameDecoder,
    compress_payload,
    decode_control,
    decompress_payload,
    encode_control,
    encode_frame,
)


@given(st.binary(max_size=2000) | st.binary(max_size=50).map(lambda b: LZ4_MARKER + b))
def test_compression_round_trip(payload) -> None:
    assert decompress_payload(compress_payload(payload)) == payload


def test_incompressible_payload_is_sent_raw() -> None:
    payload = bytes(range(256))
    assert compress_payload(payload) == payload


def test_compressible_payload_shrinks() -> None:
    payload = b"abc" * 1000
    packed = compress_payload(payload)
    assert packed.startswith(LZ4_MARKER)
    assert len(packed) < len(payload)
    assert U64_LE.unpack_from(packed, 4) == (3000,)


def test_raw_payload_with_marker_is_never_ambiguous() -> None:
    payload = LZ4_MARKER + b"\x00" * 8
    packed = compress_payload(payload)
    assert packed != payload
    assert decompress_payload(packed) == payload


def test_small_payloads_stay_raw() -> None:
    assert compress_payload(b"a" * 12) == b"a" * 12


@given(st.binary(max_size=200))
def test_garbage_compressed_payload(tail) -> None:
    try:
        out = decompress_payload(LZ4_MARKER + tail, limit=1024)
    except BadCompression:
        return
    assert len(out) == U64_LE.unpack_from(tail)[0]


def test_uncompressed_size_is_limited() -> None:
    with pytest.raises(BadCompression):
        decompress_payload(LZ4_MARKER + U64_LE.pack(3000) + b"\x00", limit=1000)


def test_frames_any_split() -> None:
    payloads = [b"", b"x", b"y" * 70000]
    stream = b"".join(encode_frame(p) for p in payloads)
    decoder = StreamFrameDecoder()
    out = []
    for i in range(0, len(stream), 777):
        decoder.receive_data(stream[i : i + 777])
        out.extend(event.payload for event in decoder)
    assert out == payloads
    assert not decoder.in_frame


@given(
    st.one_of(
        st.builds(Hello, st.text(), st.dictionaries(st.text(), st.text(), max_size=3)),
        st.builds(Announce, st.binary(min_size=1), st.booleans()),
        st.builds(Attach, st.binary(min_size=1)),
    )
)
def test_control_round_trip(msg) -> None:
    assert decode_control(encode_control(msg)) == msg


@given(st.binary(max_size=300))
def test_garbage_control(data) -> None:
    with contextlib.suppress(InvalidControl):
        decode_control(data)


def test_control_errors_are_remote_protocol_errors() -> None:
    assert issubclass(InvalidControl, RemoteProtocolError)
    assert issubclass(BadCompression, RemoteProtocolError)
