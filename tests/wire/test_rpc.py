"""Reverse-RPC message codec: every message round-trips; garbage is InvalidMessage."""

from __future__ import annotations

import contextlib

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from support.splits import split
from txloom.wire.errors import FrameTooLarge, RemoteProtocolError
from txloom.wire.rpc import (
    Cancel,
    ErrorResponse,
    Hello,
    InvalidMessage,
    Request,
    Response,
    RpcStreamDecoder,
    decode_batch,
    decode_message,
    encode_batch,
    encode_frame,
    encode_message,
)

ids = st.integers(min_value=0, max_value=2**63 - 1)
details = st.none() | st.text() | st.lists(st.integers(), max_size=3)
messages = st.one_of(
    st.builds(Hello, st.text(), ids, st.none() | st.text()),
    st.builds(Request, ids, st.text(), st.integers(0, 2**31), st.binary()),
    st.builds(Cancel, ids),
    st.builds(Response, ids, st.binary()),
    st.builds(ErrorResponse, ids, st.text(), st.text(), details),
)


@given(messages)
def test_message_round_trip(msg) -> None:
    assert decode_message(encode_message(msg)) == msg


@given(st.lists(messages, max_size=6), st.lists(st.integers(0), max_size=6))
def test_stream_round_trip_any_split(msgs, cuts) -> None:
    stream = b"".join(encode_frame(m) for m in msgs)
    decoder = RpcStreamDecoder()
    out = []
    for piece in split(stream, cuts):
        decoder.receive_data(piece)
        out.extend(decoder)
    assert out == msgs


@given(st.lists(messages, max_size=6))
def test_batch_round_trip(msgs) -> None:
    assert decode_batch(encode_batch(msgs)) == msgs


@given(st.binary(max_size=400))
def test_garbage_body_is_invalid_message(body) -> None:
    with contextlib.suppress(InvalidMessage):
        decode_message(body)


@given(st.binary(max_size=400))
def test_garbage_stream_raises_only_protocol_errors(data) -> None:
    decoder = RpcStreamDecoder(max_frame_size=256)
    decoder.receive_data(data)
    with contextlib.suppress(RemoteProtocolError):
        list(decoder)


@pytest.mark.parametrize(
    "obj",
    [
        [],
        {"hello": {"name": 1, "next_id": 0}},
        {"hello": {"name": "a", "next_id": True}},
        {"hello": {"name": "a", "next_id": -1}},
        {"hello": {"name": "a"}},
        {"request": {"id": 1, "type": "t", "timeout_ms": 5, "payload": "not bytes"}},
        {"response": {"id": 1}},
        {"response": {"id": 1, "error": {"code": "internal"}}},
        {"cancel": "x"},
        {"hello": {"name": "a", "next_id": 1}, "cancel": 1},
        {"mystery": {}},
    ],
)
def test_malformed_messages(obj) -> None:
    with pytest.raises(InvalidMessage):
        decode_message(cbor2.dumps(obj))


def test_field_names_on_the_wire() -> None:
    assert cbor2.loads(encode_message(Hello("agent-1", 7, "t"))) == {
        "hello": {"name": "agent-1", "next_id": 7, "token": "t"}
    }
    assert cbor2.loads(encode_message(ErrorResponse(3, "unavailable", "no handler"))) == {
        "response": {"id": 3, "error": {"code": "unavailable", "message": "no handler"}}
    }
    assert cbor2.loads(encode_message(Cancel(9))) == {"cancel": 9}


def test_oversize_frame() -> None:
    decoder = RpcStreamDecoder(max_frame_size=10)
    decoder.receive_data(b"\x00\x00\x01\x00")
    with pytest.raises(FrameTooLarge):
        list(decoder)
