"""CRC32-framed JSON codec: round trips, any split, garbage, limits."""

from __future__ import annotations

import json
import random
import struct
import zlib
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support.splits import split
from txloom.wire.crcjson import (
    BadChecksum,
    BadJSON,
    Frame,
    FrameDecoder,
    FrameTooLarge,
    JSONObject,
    NotAnObject,
    ObjectDecoder,
    decode_body,
    encode_frame,
    encode_object,
)
from txloom.wire.decoder import NEED_DATA, ConnectionClosed
from txloom.wire.errors import LocalProtocolError, RemoteProtocolError, TruncatedFrame

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
    assert out == [JSONObject(o) for o in objects]
    assert decoder.consumed == len(stream)
    assert decoder.pending == 0
    decoder.receive_eof()
    assert decoder.next_event() == ConnectionClosed()


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


def test_events_are_frozen_and_a_truncated_stream_is_an_error() -> None:
    frame = encode_object({"op": "ping"})
    decoder = FrameDecoder()
    decoder.receive_data(frame + frame[:5])
    event = decoder.next_event()
    assert event == Frame(b'{"op":"ping"}')
    with pytest.raises(AttributeError):
        event.body = b""  # type: ignore[misc]
    assert decoder.next_event() is NEED_DATA
    decoder.receive_eof()
    with pytest.raises(TruncatedFrame):
        decoder.next_event()
    with pytest.raises(TruncatedFrame):  # sticky
        decoder.next_event()


def garbage_frame(rng: random.Random) -> bytes:
    """A frame whose length prefix is right, so the decoder reads it whole and reaches
    the checks behind it: the checksum, UTF-8, JSON, the object test (or the limit)."""
    kind = rng.randrange(6)
    if kind == 0:  # random bytes
        body = rng.randbytes(rng.randrange(1, 200))
    elif kind == 1:  # almost JSON
        body = json.dumps({"op": "x" * rng.randrange(5)}).encode()[: rng.randrange(1, 12)]
    elif kind == 2:  # JSON, not an object
        body = rng.choice([b"[1]", b'"op"', b"null", b"3.5", b"true"])
    elif kind == 3:  # invalid UTF-8 inside a string
        body = b'{"op":"' + bytes([rng.randrange(0x80, 0x100)]) + b'"}'
    elif kind == 4:  # a good object
        body = json.dumps({"op": "ping", "n": rng.random()}).encode()
    else:  # announced larger than the limit
        return struct.pack(">I", 1025 + rng.randrange(1 << 20)) + b"{"
    frame = bytearray(encode_frame(body))
    if rng.random() < 0.25:  # a flipped bit in the body or the checksum
        frame[rng.randrange(4, len(frame))] ^= 1 << rng.randrange(8)
    return bytes(frame)


def test_garbage_with_valid_length_prefixes_reaches_every_error_path() -> None:
    rng = random.Random(7)
    reached: Counter[str] = Counter()
    for _ in range(2000):
        decoder = ObjectDecoder(max_frame_size=1024)
        data = garbage_frame(rng)
        for piece in split(data, [rng.randrange(len(data) + 1) for _ in range(2)]):
            decoder.receive_data(piece)
        try:
            event = decoder.next_event()
        except RemoteProtocolError as e:
            reached[type(e).__name__] += 1
            with pytest.raises(type(e)):  # sticky
                decoder.next_event()
            continue
        assert isinstance(event, JSONObject)
        reached["ok"] += 1
    assert set(reached) == {"ok", "BadChecksum", "BadJSON", "NotAnObject", "FrameTooLarge"}
    assert min(reached.values()) >= 100, reached
