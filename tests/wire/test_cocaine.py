"""Cocaine message stream codec: captured bytes, round trips, any split, garbage, limits."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from support.splits import split
from txloom.wire.cocaine import (
    DEFAULT_MAX_MESSAGE_SIZE,
    Decoder,
    Encoder,
    Header,
    MalformedMessage,
    Message,
    MessageTooLarge,
    encode,
    header_value,
)
from txloom.wire.errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError

# -- bytes as a real Cocaine v12 worker and engine exchange them ----------------------------

INVOKE_PING = [
    2,
    0,
    [b"ping"],
    [
        [False, b"trace_id", b"\x00" * 8],
        [False, b"span_id", b"\x01" * 8],
        [False, b"parent_id", b"\x00" * 8],
        80,
    ],
]


def test_captured_invoke_with_literal_and_indexed_headers() -> None:
    wire = msgpack.packb(INVOKE_PING, use_bin_type=False)
    [msg] = Decoder().receive_data(wire)
    assert msg == Message(
        2,
        0,
        [b"ping"],
        (
            Header(b"trace_id", b"\x00" * 8),
            Header(b"span_id", b"\x01" * 8),
            Header(b"parent_id", b"\x00" * 8),
            80,
        ),
    )
    # and we put the same bytes back on the wire
    assert Encoder().message(msg) == wire
    assert header_value(msg.headers, b"SPAN_ID") == b"\x01" * 8
    assert header_value(msg.headers, b"missing") is None


def test_captured_handshake_heartbeat_and_terminate_echo() -> None:
    stream = b"".join(
        msgpack.packb(m, use_bin_type=False)
        for m in ([1, 0, [b"U-1234"]], [1, 0, []], [1, 1, [1, b"engine shutting down"]])
    )
    msgs = Decoder().receive_data(stream)
    assert msgs == [
        Message(1, 0, [b"U-1234"]),
        Message(1, 0, []),
        Message(1, 1, [1, b"engine shutting down"]),
    ]
    # an echo of terminate is the same message, strings as old-spec raw
    assert encode(1, 1, [1, "engine shutting down"]) == msgpack.packb(
        [1, 1, [1, b"engine shutting down"]], use_bin_type=False
    )


def test_strings_go_out_as_old_raw_and_every_string_kind_comes_in_as_bytes() -> None:
    wire = encode(3, 0, ["text", b"\xff\x00bin"])
    assert b"\xc4" not in wire  # no bin8 header: old peers do not know it
    assert wire == b"\x93\x03\x00\x92\xa4text\xa5\xff\x00bin"
    new_style = msgpack.packb([3, 0, ["text", b"\xff\x00bin"]], use_bin_type=True)
    assert Decoder().receive_data(new_style) == [Message(3, 0, [b"text", b"\xff\x00bin"])]


def test_error_message_layout() -> None:
    wire = encode(5, 1, [[42, 200], "there is no handler for event 'nope'"])
    [msg] = Decoder().receive_data(wire)
    assert msg.args == [[42, 200], b"there is no handler for event 'nope'"]


def test_headers_left_off_when_empty() -> None:
    assert encode(2, 2, [], []) == encode(2, 2, []) == b"\x93\x02\x02\x90"


def test_graph_maps_with_integer_keys_decode() -> None:
    graph = {0: [b"resolve", {}, {0: [b"value", {}], 1: [b"error", {}]}]}
    wire = encode(1, 0, [[[b"127.0.0.1", 10053]], 3, graph])
    [msg] = Decoder().receive_data(wire)
    assert msg.args[2] == graph


# -- properties ------------------------------------------------------------------------------

leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.binary(max_size=40)
    | st.floats(allow_nan=False)
)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.binary(max_size=8), inner),
    max_leaves=12,
)
header_entries = st.integers(min_value=0, max_value=2**32) | st.builds(
    Header, st.binary(max_size=20), st.binary(max_size=20), st.booleans()
)
messages = st.builds(
    Message,
    st.integers(min_value=0, max_value=2**64 - 1),
    st.integers(min_value=0, max_value=2**16),
    st.lists(values, max_size=4),
    st.lists(header_entries, max_size=4).map(tuple),
)


@given(st.lists(messages, max_size=6))
def test_round_trip(msgs: list[Message]) -> None:
    enc = Encoder()
    wire = b"".join(enc.message(m) for m in msgs)
    assert Decoder().receive_data(wire) == msgs


@given(st.lists(messages, min_size=1, max_size=6), st.lists(st.integers(min_value=0), max_size=30))
def test_any_split(msgs: list[Message], cuts: list[int]) -> None:
    enc = Encoder()
    wire = b"".join(enc.message(m) for m in msgs)
    dec = Decoder()
    got: list[Message] = []
    for piece in split(wire, cuts):
        got.extend(dec.receive_data(piece))
    assert got == msgs
    assert dec.pending == 0


@given(st.binary(max_size=200), st.lists(st.integers(min_value=0), max_size=10))
def test_garbage_raises_only_protocol_errors(data: bytes, cuts: list[int]) -> None:
    dec = Decoder(max_message_size=1000)
    try:
        for piece in split(data, cuts):
            for msg in dec.receive_data(piece):
                assert isinstance(msg, Message)
    except RemoteProtocolError:
        # broken for good: the same error again
        with pytest.raises(RemoteProtocolError):
            dec.receive_data(b"\x93\x02\x02\x90")


@given(values)
def test_any_value_that_is_not_a_message_is_refused(value: object) -> None:
    wire = msgpack.packb(value, use_bin_type=False)
    try:
        [msg] = Decoder().receive_data(wire)
    except MalformedMessage:
        return
    assert isinstance(msg, Message)


# -- errors and limits -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"\xc1", "not MessagePack"),
        (msgpack.packb({b"a": 1}), "array of 3 or 4"),
        (msgpack.packb([1, 0]), "array of 3 or 4"),
        (msgpack.packb([-1, 0, []]), "channel"),
        (msgpack.packb([True, 0, []]), "channel"),
        (msgpack.packb([1, b"x", []]), "message type"),
        (msgpack.packb([1, 0, b"x"]), "arguments"),
        (msgpack.packb([1, 0, [], {}]), "headers"),
        (msgpack.packb([1, 0, [], [[False, b"a"]]]), "header entry"),
        (msgpack.packb([1, 0, [], [[1, b"a", b"b"]]]), "header entry"),
        (msgpack.packb([1, 0, [], [True]]), "header entry"),
    ],
)
def test_malformed(wire: bytes, reason: str) -> None:
    dec = Decoder()
    with pytest.raises(MalformedMessage, match=reason):
        dec.receive_data(wire)
    with pytest.raises(MalformedMessage):
        dec.receive_data(encode(1, 0, []))


def test_default_limit_is_64_mib() -> None:
    assert DEFAULT_MAX_MESSAGE_SIZE == 64 * 1024 * 1024
    assert Decoder().max_message_size == DEFAULT_MAX_MESSAGE_SIZE


def test_message_of_exactly_the_limit_passes_one_byte_more_fails() -> None:
    exact = encode(2, 0, [b"x" * 100])
    limit = len(exact)
    assert Decoder(limit).receive_data(exact) == [Message(2, 0, [b"x" * 100])]
    over = encode(2, 0, [b"x" * 101])
    dec = Decoder(limit)
    with pytest.raises(MessageTooLarge) as info:
        dec.receive_data(over)
    assert isinstance(info.value, FrameTooLarge)
    assert info.value.limit == limit


def test_limit_is_per_message_not_per_read() -> None:
    one = encode(2, 0, [b"y" * 50])
    dec = Decoder(len(one))
    assert len(dec.receive_data(one * 40)) == 40


def test_oversize_detected_before_it_is_all_buffered() -> None:
    dec = Decoder(1000)
    header = b"\x93\x02\x00\x91\xdb" + (10**9).to_bytes(4, "big")  # announces a 1 GB raw
    assert dec.receive_data(header + b"z" * 900) == []
    with pytest.raises(MessageTooLarge):
        dec.receive_data(b"z" * 200)


def test_deeply_nested_partial_message_is_bounded_too() -> None:
    dec = Decoder(100)
    with pytest.raises(MessageTooLarge):
        dec.receive_data(b"\x91" * 150)


def test_encoding_what_msgpack_cannot_carry_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode(2, 0, [object()])
    with pytest.raises(LocalProtocolError):
        encode(2, 0, [], [b"not a header"])  # type: ignore[list-item]
    with pytest.raises(LocalProtocolError):
        encode(2**64, 0, [])


def test_bad_limit_refused() -> None:
    with pytest.raises(ValueError):
        Decoder(0)
