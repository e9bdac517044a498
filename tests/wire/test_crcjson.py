"""CRC32-framed JSON codec: round trips, any split, garbage, limits."""

from __future__ import annotations

import json
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support.splits import split
from txloom.wire.crcjson import (
    BadChecksum,
    BadJSON,
    FrameDecoder,
    FrameTooLarge,
    NotAnObject,
    ObjectDecoder,
    decode_body,
    encode_frame,
    encode_object,
)
from txloom.wire.errors import LocalProtocolError, RemoteProtocolError

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(), json_values, max_size=6)


def test_reference_frame_layout() -> None:
    body = b'{"op":"ping"}'
    frame = encode_frame(body)
    assert frame[:4] == b"\x00\x00\x00\x0d"
    assert frame[4:-4] == body
    assert frame[-4:] == struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def test_encoding_is_compact_utf8() -> None:
    frame = encode_object({"k": "é", "n": [1, 2]})
    assert frame[4:-4] == '{"k":"é","n":[1,2]}'.encode()


@given(st.lists(json_objects, max_size=8), st.lists(st.integers(min_value=0), max_size=12))
def test_round_trip_any_split(objects: list[dict], cuts: list[int]) -> None:
    stream = b"".join(encode_object(o) for o in objects)
    decoder = ObjectDecoder()
    out = []
    for piece in split(stream, cuts):
        decoder.receive_data(piece)
        out.extend(decoder)
    assert out == objects
    assert decoder.frames.consumed == len(stream)
    assert decoder.frames.pending == 0


@given(st.binary(max_size=2000), st.lists(st.integers(min_value=0), max_size=6))
@settings(max_examples=300)
def test_garbage_raises_only_codec_errors(garbage: bytes, cuts: list[int]) -> None:
    decoder = ObjectDecoder(max_frame_size=1024)
    try:
        for piece in split(garbage, cuts):
            decoder.receive_data(piece)
            list(decoder)
    except RemoteProtocolError:
        pass


@given(st.binary(max_size=300))
def test_valid_frame_of_garbage_is_bad_json_or_not_object(body: bytes) -> None:
    decoder = ObjectDecoder()
    decoder.receive_data(encode_frame(body))
    try:
        obj = decoder.next_object()
    except (BadJSON, NotAnObject):
        return
    assert isinstance(obj, dict)
    assert obj == json.loads(body.decode("utf-8"))


def test_oversize_header_refused_before_body() -> None:
    decoder = FrameDecoder(max_frame_size=16 * 1024 * 1024)
    decoder.receive_data(b"\xff\xff\xff\xff")
    with pytest.raises(FrameTooLarge) as info:
        decoder.next_frame()
    assert info.value.size == 0xFFFFFFFF
    assert info.value.limit == 16 * 1024 * 1024
    # broken for good: more bytes change nothing
    decoder.receive_data(b"x" * 100)
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()
    assert decoder.pending == 4


def test_frame_at_exact_limit_is_accepted() -> None:
    decoder = FrameDecoder(max_frame_size=10)
    decoder.receive_data(encode_frame(b"0123456789"))
    assert decoder.next_frame() == b"0123456789"
    decoder.receive_data(encode_frame(b"0123456789a"))
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()


def test_bad_checksum() -> None:
    frame = bytearray(encode_object({"op": "ping"}))
    frame[-1] ^= 0x01
    decoder = FrameDecoder()
    decoder.receive_data(bytes(frame))
    with pytest.raises(BadChecksum):
        decoder.next_frame()


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"\xff\xfe", BadJSON),
        (b"{not json", BadJSON),
        (b"NaN", BadJSON),
        (b'{"x": Infinity}', BadJSON),
        (b"[" * 100_000 + b"]" * 100_000, BadJSON),
        (b"[1,2]", NotAnObject),
        (b'"s"', NotAnObject),
        (b"null", NotAnObject),
        (b"", BadJSON),
    ],
)
def test_body_errors(body: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_body(body)


def test_incomplete_frame_waits() -> None:
    frame = encode_object({"op": "replay"})
    decoder = FrameDecoder()
    decoder.receive_data(frame[:-1])
    assert decoder.next_frame() is None
    decoder.receive_data(frame[-1:])
    assert decoder.next_frame() == frame[4:-4]


def test_many_frames_compact_the_buffer() -> None:
    frame = encode_object({"pad": "x" * 1000})
    decoder = FrameDecoder()
    for _ in range(500):
        decoder.receive_data(frame)
        assert decoder.next_frame() is not None
    assert decoder.pending == 0
    assert decoder.consumed == 500 * len(frame)


def test_local_errors() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(b"x" * 11, max_frame_size=10)
    with pytest.raises(LocalProtocolError):
        encode_object({"x": float("nan")})
    with pytest.raises(LocalProtocolError):
        encode_object({"x": object()})
