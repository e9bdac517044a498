"""Cocaine message stream codec: captured bytes, round trips, any split, garbage, limits."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import FrozenInstanceError

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from support.splits import split
from txloom.wire.cocaine import (
    DEFAULT_MAX_MESSAGE_SIZE,
    NEED_DATA,
    Decoder,
    Encoder,
    Header,
    MalformedMessage,
    Message,
    MessageTooLarge,
    encode,
    header_value,
)
from txloom.wire.decoder import ConnectionClosed
from txloom.wire.errors import (
    FrameTooLarge,
    LocalProtocolError,
    RemoteProtocolError,
    TruncatedFrame,
)


def decode_all(data: bytes, decoder: Decoder | None = None) -> list[Message]:
    """Every whole message in ``data``, the shared decoder way."""
    decoder = decoder if decoder is not None else Decoder()
    decoder.receive_data(data)
    return list(decoder)


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
    [msg] = decode_all(wire)
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
    msgs = decode_all(stream)
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
    assert decode_all(new_style) == [Message(3, 0, [b"text", b"\xff\x00bin"])]


def test_error_message_layout() -> None:
    wire = encode(5, 1, [[42, 200], "there is no handler for event 'nope'"])
    [msg] = decode_all(wire)
    assert msg.args == [[42, 200], b"there is no handler for event 'nope'"]


def test_headers_left_off_when_empty() -> None:
    assert encode(2, 2, [], []) == encode(2, 2, []) == b"\x93\x02\x02\x90"


def test_graph_maps_with_integer_keys_decode() -> None:
    graph = {0: [b"resolve", {}, {0: [b"value", {}], 1: [b"error", {}]}]}
    wire = encode(1, 0, [[[b"127.0.0.1", 10053]], 3, graph])
    [msg] = decode_all(wire)
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
    assert decode_all(wire) == msgs


@given(st.lists(messages, min_size=1, max_size=6), st.lists(st.integers(min_value=0), max_size=30))
def test_any_split(msgs: list[Message], cuts: list[int]) -> None:
    enc = Encoder()
    wire = b"".join(enc.message(m) for m in msgs)
    dec = Decoder()
    got: list[Message] = []
    for piece in split(wire, cuts):
        got.extend(decode_all(piece, dec))
    assert got == msgs
    assert dec.pending == 0


@given(st.binary(max_size=200), st.lists(st.integers(min_value=0), max_size=10))
def test_garbage_raises_only_protocol_errors(data: bytes, cuts: list[int]) -> None:
    dec = Decoder(max_message_size=1000)
    try:
        for piece in split(data, cuts):
            for msg in decode_all(piece, dec):
                assert isinstance(msg, Message)
    except RemoteProtocolError as e:
        # broken for good: the same error again, whatever comes next
        dec.receive_data(b"\x93\x02\x02\x90")
        with pytest.raises(RemoteProtocolError) as again:
            dec.next_event()
        assert again.value is e


@given(values)
def test_any_value_that_is_not_a_message_is_refused(value: object) -> None:
    wire = msgpack.packb(value, use_bin_type=False)
    try:
        [msg] = decode_all(wire)
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
    dec.receive_data(wire)
    with pytest.raises(MalformedMessage, match=reason):
        dec.next_event()
    dec.receive_data(encode(1, 0, []))
    with pytest.raises(MalformedMessage):
        dec.next_event()


def test_default_limit_is_64_mib() -> None:
    assert DEFAULT_MAX_MESSAGE_SIZE == 64 * 1024 * 1024
    assert Decoder().max_message_size == DEFAULT_MAX_MESSAGE_SIZE


def test_message_of_exactly_the_limit_passes_one_byte_more_fails() -> None:
    exact = encode(2, 0, [b"x" * 100])
    limit = len(exact)
    assert decode_all(exact, Decoder(limit)) == [Message(2, 0, [b"x" * 100])]
    over = encode(2, 0, [b"x" * 101])
    dec = Decoder(limit)
    dec.receive_data(over)
    with pytest.raises(MessageTooLarge) as info:
        dec.next_event()
    assert isinstance(info.value, FrameTooLarge)
    assert info.value.limit == limit


def test_limit_is_per_message_not_per_read() -> None:
    one = encode(2, 0, [b"y" * 50])
    dec = Decoder(len(one))
    assert len(decode_all(one * 40, dec)) == 40


def test_oversize_detected_before_it_is_all_buffered() -> None:
    dec = Decoder(1000)
    header = b"\x93\x02\x00\x91\xdb" + (10**9).to_bytes(4, "big")  # announces a 1 GB raw
    assert decode_all(header + b"z" * 900, dec) == []
    assert dec.pending == 905 + 4
    dec.receive_data(b"z" * 200)
    with pytest.raises(MessageTooLarge):
        dec.next_event()


def test_deeply_nested_partial_message_is_bounded_too() -> None:
    dec = Decoder(100)
    dec.receive_data(b"\x91" * 150)
    with pytest.raises(MessageTooLarge):
        dec.next_event()


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


# -- the shared decoder shape ----------------------------------------------------------------


def test_messages_are_frozen_and_the_end_of_stream_is_explicit() -> None:
    dec = Decoder()
    dec.receive_data(encode(2, 0, [b"a"]) + encode(2, 2, []))
    first = dec.next_event()
    assert first == Message(2, 0, [b"a"])
    with pytest.raises(FrozenInstanceError):
        first.channel = 3  # type: ignore[misc]
    assert dec.next_event() == Message(2, 2, [])
    assert dec.next_event() is NEED_DATA
    dec.receive_eof()
    assert dec.next_event() == ConnectionClosed()


def test_a_stream_that_ends_inside_a_message_is_truncated_not_closed() -> None:
    dec = Decoder()
    wire = encode(2, 0, [b"x" * 50])
    dec.receive_data(wire[:20])
    assert dec.next_event() is NEED_DATA
    assert dec.in_frame and dec.pending == 20
    dec.receive_eof()
    with pytest.raises(TruncatedFrame):
        dec.next_event()


# -- garbage that is valid MessagePack, so the checks behind the parser are reached ---------

#: What each check of the decoder says, by the outcome a garbage test tallies.
OUTCOMES = {
    "not MessagePack": "parser",
    "array of 3 or 4": "shape",
    "bad channel id": "channel",
    "bad message type": "type",
    "message arguments": "args",
    "headers must be": "headers",
    "bad header entry": "header entry",
    "exceeds the limit": "too large",
}

_ANY = [None, True, -1, 7, -(2**63), 1.5, b"x", "s", [1], {}, {b"k": 1}]
_CHANNELS = [0, 1, 2, 2**64 - 1]
_TYPES = [0, 1, 2, 65535]
_ARGS = [[], [b"event"], [[42, 200], b"reason"]]
_ENTRIES = [80, [False, b"trace_id", b"\0" * 8], [True, b"a", b"b"]]
_BAD_ENTRIES = [[False, b"a"], [1, b"a", b"b"], True, b"raw", [False, 1, b"b"]]


def _slot(rng: random.Random, good: list[object], bad: list[object]) -> object:
    """Mostly a valid value, so that the checks behind this one are reached too."""
    return rng.choice(good) if rng.random() < 0.8 else rng.choice(bad)


def near_message(rng: random.Random) -> bytes:
    """Bytes of one value shaped almost like a message, valid MessagePack framing or not."""
    roll = rng.random()
    if roll < 0.04:
        return b"\xc1"  # the one byte MessagePack never uses
    if roll < 0.08:
        return msgpack.packb([2, 0, [b"z" * 300]], use_bin_type=False)  # over the test limit
    size = rng.choice([3, 3, 4, 4, 4, 4, 2, 5])
    value: list[object] = [
        _slot(rng, _CHANNELS, _ANY),
        _slot(rng, _TYPES, _ANY),
        _slot(rng, _ARGS, _ANY),
    ]
    if size >= 4:
        entries = [_slot(rng, _ENTRIES, _BAD_ENTRIES) for _ in range(rng.randint(0, 3))]
        value.append(_slot(rng, [entries], _ANY))
    value = [*value, None][:size]
    return msgpack.packb(value, use_bin_type=bool(rng.getrandbits(1)))


def outcome(wire: bytes) -> str:
    """Which check ``wire`` ends at: ``message`` if it passes every one."""
    dec = Decoder(max_message_size=256)
    dec.receive_data(wire)
    try:
        event = dec.next_event()
    except RemoteProtocolError as e:
        return next(name for text, name in OUTCOMES.items() if text in str(e))
    assert isinstance(event, Message)
    return "message"


def test_structured_garbage_reaches_every_check() -> None:
    rng = random.Random(1209)
    seen = Counter(outcome(near_message(rng)) for _ in range(3000))
    assert set(seen) == {*OUTCOMES.values(), "message"}, seen
    assert min(seen.values()) >= 20, seen  # each path is reached often, not by luck


@given(st.randoms(use_true_random=False), st.lists(st.integers(min_value=0), max_size=8))
def test_structured_garbage_streams_raise_only_protocol_errors(
    rng: random.Random, cuts: list[int]
) -> None:
    wire = b"".join(near_message(rng) for _ in range(5))
    dec = Decoder(max_message_size=256)
    try:
        for piece in split(wire, cuts):
            for msg in decode_all(piece, dec):
                assert isinstance(msg, Message)
    except RemoteProtocolError:
        return
