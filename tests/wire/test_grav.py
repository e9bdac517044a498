"""The Grav wire codec: captured Go bytes, round trips, timestamps, garbage, the session."""

from __future__ import annotations

import base64
import contextlib
import json
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txloom.wire import grav
from txloom.wire.errors import LocalProtocolError, RemoteProtocolError
from txloom.wire.grav import (
    Announcement,
    BadAnnouncement,
    BadHandshake,
    Handshake,
    HandshakeReply,
    MessageFields,
    NotAMessage,
)
from txloom.wire.grav_session import (
    ForeignFrame,
    GravSession,
    MessageFrame,
    Role,
    SessionState,
    Withdraw,
    WithdrawAck,
)
from txloom.wire.rfc3339 import BadTimestamp

# Bytes captured from a Grav v0.5.2 node (see the shared wire vectors).
GO_NODE = "af34e89e-1690-47eb-9134-b1603eee7217"
GO_ACCEPT = (
    b'{"accept":true,"uuid":"af34e89e-1690-47eb-9134-b1603eee7217","belongsTo":"*","interests":[]}'
)
GO_REFUSAL = (
    b'{"accept":false,"uuid":"af34e89e-1690-47eb-9134-b1603eee7217",'
    b'"belongsTo":"","interests":null}'
)
GO_MESSAGE = (
    b'{"meta":{"uuid":"dc472fad-0b42-4f97-b67f-a95d4287a76a","parent_id":"parent-123",'
    b'"response_to":"","msg_type":"go.tick","timestamp":"2026-11-22T01:39:07.952081882Z"},'
    b'"payload":{"data":"eyJuIjowfQ=="}}'
)
PY_MESSAGE = (
    b'{"meta":{"uuid":"e0395639-bcc8-49df-aa75-99237936bcca","parent_id":"","response_to":"",'
    b'"msg_type":"bars.ping","timestamp":"2026-11-22T01:39:07.078658+00:00"},'
    b'"payload":{"data":"eyJuIjoxfQ=="}}'
)
PY_MESSAGE_AS_GO_WROTE_IT = (
    b'{"meta":{"uuid":"e0395639-bcc8-49df-aa75-99237936bcca","parent_id":"","response_to":"",'
    b'"msg_type":"bars.ping","timestamp":"2026-11-22T01:39:07.078658Z"},'
    b'"payload":{"data":"eyJuIjoxfQ=="}}'
)


def encode(f: MessageFields) -> bytes:
    return grav.encode_message(f, f.hops)


def fields(
    uuid: str = "u",
    msg_type: str = "t",
    data: bytes | None = None,
    parent_id: str = "",
    response_to: str = "",
) -> MessageFields:
    return MessageFields(
        uuid, parent_id, response_to, msg_type, 0, 0, data or b"", data_null=data is None
    )


# -- captured vectors -----------------------------------------------------------------------


def test_go_message_decodes_with_nanoseconds() -> None:
    f = grav.decode_message(GO_MESSAGE)
    assert f.uuid == "dc472fad-0b42-4f97-b67f-a95d4287a76a"
    assert f.parent_id == "parent-123"
    assert f.response_to == ""
    assert f.msg_type == "go.tick"
    assert f.data == b'{"n":0}'
    assert f.utc_offset == 0
    expected = datetime(2026, 11, 22, 1, 39, 7, tzinfo=timezone.utc)
    assert f.timestamp_ns == int(expected.timestamp()) * 10**9 + 952081882
    assert f.hops == 0


def test_go_message_reencodes_byte_for_byte() -> None:
    assert encode(grav.decode_message(GO_MESSAGE)) == GO_MESSAGE


def test_python_isoformat_is_remarshalled_as_go_does() -> None:
    assert encode(grav.decode_message(PY_MESSAGE)) == PY_MESSAGE_AS_GO_WROTE_IT


def test_go_handshake_reply_vectors() -> None:
    assert grav.decode_handshake_reply(GO_ACCEPT) == HandshakeReply(True, GO_NODE, "*", ())
    assert grav.decode_handshake_reply(GO_REFUSAL) == HandshakeReply(False, GO_NODE, "", None)
    assert grav.encode_handshake_reply(HandshakeReply(True, GO_NODE, "*", ())) == GO_ACCEPT
    assert grav.encode_handshake_reply(grav.refusal(GO_NODE)) == GO_REFUSAL


def test_handshake_bytes() -> None:
    hs = Handshake("peer-1", "*", ())
    assert grav.encode_handshake(hs) == b'{"uuid":"peer-1","belongsTo":"*","interests":[]}'
    assert grav.decode_handshake(grav.encode_handshake(hs)) == hs


def test_field_order_and_null_data() -> None:
    out = grav.encode_message(fields(parent_id="p", response_to="r"))
    assert out == (
        b'{"meta":{"uuid":"u","parent_id":"p","response_to":"r","msg_type":"t",'
        b'"timestamp":"1970-01-01T00:00:00Z"},"payload":{"data":null}}'
    )
    assert grav.decode_message(out).data == b""
    assert grav.decode_message(out).data_null
    empty_string = out.replace(b"null", b'""')
    assert grav.decode_message(empty_string).data == b""
    assert not grav.decode_message(empty_string).data_null
    assert encode(grav.decode_message(empty_string)) == empty_string  # "" stays "", as in Go


def test_strings_are_escaped_as_go_escapes_them() -> None:
    out = grav.encode_message(fields(msg_type='<a&b>\u2028\n\x01"\\é'))
    assert b'"msg_type":"\\u003ca\\u0026b\\u003e\\u2028\\n\\u0001\\"\\\\\xc3\xa9"' in out
    assert grav.decode_message(out).msg_type == '<a&b>\u2028\n\x01"\\é'


def test_hops_extension_is_readable_and_ignored_by_shape() -> None:
    out = grav.encode_message(fields(data=b"x"), hops=3)
    assert b'"timestamp":"1970-01-01T00:00:00Z","hops":3}' in out
    assert grav.decode_message(out).hops == 3
    with pytest.raises(LocalProtocolError):
        grav.encode_message(fields(data=b"x"), hops=grav.MAX_HOPS + 1)


def test_missing_members_take_go_zero_values() -> None:
    f = grav.decode_message(b'{"meta":{"uuid":"x"}}')
    assert f == MessageFields("x", "", "", "", grav.ZERO_TIME_NS, 0, b"", 0, True)
    assert grav.format_timestamp(f.timestamp_ns) == "0001-01-01T00:00:00Z"


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"hello",
        b"[]",
        b'"x"',
        b'{"meta":{"uuid":5}}',
        b'{"meta":{"uuid":"x","msg_type":7}}',
        b'{"meta":{"uuid":"x","timestamp":"yesterday"}}',
        b'{"meta":{"uuid":"x","timestamp":1}}',
        b'{"meta":{"uuid":"x"},"payload":[]}',
        b'{"meta":{"uuid":"x"},"payload":{"data":"###="}}',
        b'{"meta":{"uuid":"x"},"payload":{"data":"abc"}}',
        b'{"meta":{"uuid":"x"},"payload":{"data":5}}',
        b'{"meta":{"uuid":"x"},"n":NaN}',
        b"\xff\xfe",
        b"[" * 100_000,
    ],
)
def test_not_a_message(frame: bytes) -> None:
    with pytest.raises(NotAMessage):
        grav.decode_message(frame)


def test_lone_surrogates_become_replacement_characters() -> None:
    f = grav.decode_message(b'{"meta":{"uuid":"x","msg_type":"a\\ud800b"}}')
    assert f.msg_type == "a\ufffdb"
    encode(f)  # and it can be written again


MAX_NS = 253402300799 * 10**9 + 999999999  # 9999-12-31T23:59:59.999999999Z


def test_a_bad_timestamp_makes_a_frame_not_a_message() -> None:
    frame = GO_MESSAGE.replace(b"2026-11-22T01:39:07.952081882Z", b"2026-11-22T23:59:60Z")
    with pytest.raises(NotAMessage, match="out of range"):
        grav.decode_message(frame)


# -- messages: round trips and garbage ------------------------------------------------------

message_fields = st.builds(
    MessageFields,
    uuid=st.text(min_size=1),
    parent_id=st.text(),
    response_to=st.text(),
    msg_type=st.text(),
    timestamp_ns=st.integers(min_value=grav.ZERO_TIME_NS, max_value=MAX_NS - 86400 * 10**9),
    utc_offset=st.integers(min_value=-1439, max_value=1439),
    data=st.binary(max_size=300),
    hops=st.integers(min_value=0, max_value=grav.MAX_HOPS),
    data_null=st.booleans(),
).map(lambda f: f._replace(data_null=f.data_null and not f.data))


@given(message_fields)
def test_message_round_trip(f: MessageFields) -> None:
    out = encode(f)
    assert grav.decode_message(out) == f
    assert grav.decode_message(out.decode("utf-8")) == f


@given(message_fields)
def test_message_is_the_json_it_claims(f: MessageFields) -> None:
    obj = json.loads(encode(f))
    assert list(obj) == ["meta", "payload"]
    keys = ["uuid", "parent_id", "response_to", "msg_type", "timestamp"]
    assert list(obj["meta"]) == [*keys, "hops"] if f.hops else keys
    assert obj["meta"]["msg_type"] == f.msg_type
    data = obj["payload"]["data"]
    assert (base64.b64decode(data) if data is not None else b"") == f.data
    assert (data is None) == f.data_null


@given(st.binary(max_size=400))
@settings(max_examples=300)
def test_garbage_raises_only_not_a_message(garbage: bytes) -> None:
    with contextlib.suppress(NotAMessage):
        grav.decode_message(garbage)


@given(st.text(max_size=200))
def test_garbage_text_raises_only_not_a_message(garbage: str) -> None:
    with contextlib.suppress(NotAMessage):
        grav.decode_message(garbage)


def containers(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10), containers, max_leaves=10
)


@given(
    st.dictionaries(
        st.sampled_from(["uuid", "parent_id", "response_to", "msg_type", "timestamp", "hops"]),
        json_values,
    ),
    json_values,
)
def test_wrong_shapes_raise_only_not_a_message(meta: dict, payload: object) -> None:
    frame = json.dumps({"meta": meta, "payload": payload}).encode()
    try:
        f = grav.decode_message(frame)
    except NotAMessage:
        return
    encode(f)


# -- handshakes and the session -------------------------------------------------------------


@given(st.binary(max_size=200))
def test_handshake_garbage_raises_only_bad_handshake(garbage: bytes) -> None:
    for decode in (grav.decode_handshake, grav.decode_handshake_reply):
        with contextlib.suppress(BadHandshake):
            decode(garbage)


@given(
    st.builds(
        Handshake,
        st.text(min_size=1),
        st.text(),
        st.none() | st.lists(st.text(), max_size=3).map(tuple),
    )
)
def test_handshake_round_trip(hs: Handshake) -> None:
    assert grav.decode_handshake(grav.encode_handshake(hs)) == hs


def test_groups_match_as_grav_matches_them() -> None:
    assert grav.groups_match("*", "*")
    assert grav.groups_match("teamA", "teamA")
    assert grav.groups_match("teamA", "*")
    assert not grav.groups_match("*", "teamB")
    assert not grav.groups_match("teamA", "teamB")


def open_pair() -> tuple[GravSession, GravSession]:
    dialler = GravSession(Role.DIALLER, "node-a")
    listener = GravSession(Role.LISTENER, "node-b")
    hs = listener.receive_frame(dialler.handshake())
    assert hs == Handshake("node-a", "*", ())
    assert listener.state is SessionState.DECIDING
    reply = dialler.receive_frame(listener.accept())
    assert reply == HandshakeReply(True, "node-b", "*", ())
    assert dialler.state is listener.state is SessionState.OPEN
    return dialler, listener


def test_session_open_and_events() -> None:
    dialler, listener = open_pair()
    assert dialler.peer_uuid == "node-b"
    assert listener.peer_uuid == "node-a"
    assert listener.receive_frame(GO_MESSAGE) == MessageFrame(grav.decode_message(GO_MESSAGE))
    foreign = listener.receive_frame(b"hello", False)
    assert isinstance(foreign, ForeignFrame)
    assert foreign.data == b"hello"
    assert listener.receive_frame(grav.WITHDRAW, False) == Withdraw()
    assert listener.peer_withdrawn
    assert dialler.receive_frame(grav.WITHDRAW_ACK, False) == WithdrawAck()
    # the withdraw words count only as text frames
    assert isinstance(dialler.receive_frame(grav.WITHDRAW, True), ForeignFrame)


def test_session_refusal() -> None:
    dialler = GravSession(Role.DIALLER, "node-a", "teamB")
    listener = GravSession(Role.LISTENER, GO_NODE, "*")
    hs = listener.receive_frame(dialler.handshake())
    assert not grav.groups_match(listener.belongs_to, hs.belongs_to)
    refusal = listener.refuse()
    assert refusal == GO_REFUSAL
    assert listener.state is SessionState.CLOSED
    reply = dialler.receive_frame(refusal)
    assert not reply.accept
    assert dialler.state is SessionState.CLOSED
    assert dialler.receive_frame(GO_MESSAGE) is None


def test_session_misuse() -> None:
    listener = GravSession(Role.LISTENER, "n")
    with pytest.raises(LocalProtocolError):
        listener.accept()
    with pytest.raises(LocalProtocolError):
        listener.handshake()
    with pytest.raises(BadHandshake):
        listener.receive_frame(GO_MESSAGE)  # a message is not a handshake
    listener = GravSession(Role.LISTENER, "n")
    listener.receive_frame(b'{"uuid":"x","belongsTo":"*","interests":[]}')
    with pytest.raises(BadHandshake):
        listener.receive_frame(GO_MESSAGE)  # talks before it is answered
    with pytest.raises(BadHandshake):
        GravSession(Role.LISTENER, "n").receive_frame(GO_ACCEPT)


@given(st.lists(st.tuples(st.binary(max_size=120), st.booleans()), max_size=10))
def test_open_session_never_raises(frames: list[tuple[bytes, bool]]) -> None:
    _, listener = open_pair()
    for payload, is_binary in frames:
        event = listener.receive_frame(payload, is_binary)
        assert isinstance(event, MessageFrame | ForeignFrame | Withdraw | WithdrawAck)


@given(st.binary(max_size=200))
def test_unopened_session_raises_only_bad_handshake(garbage: bytes) -> None:
    for role in Role:
        with contextlib.suppress(BadHandshake):
            GravSession(role, "n").receive_frame(garbage)


# -- discovery datagrams --------------------------------------------------------------------


def test_announcement_bytes() -> None:
    ann = Announcement("node-1", 8080, "/meta/message")
    raw = grav.encode_announcement(ann)
    assert raw == b'{"uuid":"node-1","port":"8080","path":"/meta/message"}'
    assert grav.decode_announcement(raw) == ann


@given(st.text(min_size=1), st.integers(1, 65535), st.text().map(lambda s: "/" + s))
def test_announcement_round_trip(uuid: str, port: int, path: str) -> None:
    ann = Announcement(uuid, port, path)
    raw = grav.encode_announcement(ann)
    if len(raw) > grav.MAX_DATAGRAM_SIZE or not path.isprintable():
        return
    assert grav.decode_announcement(raw) == ann


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b'{"uuid":"x","port":"0","path":"/"}',
        b'{"uuid":"x","port":"99999","path":"/"}',
        b'{"uuid":"x","port":"80a","path":"/"}',
        b'{"uuid":"x","port":"8080","path":"meta"}',
        b'{"uuid":"","port":"8080","path":"/"}',
        b'{"uuid":"x","port":"8080","path":"/"}' + b" " * grav.MAX_DATAGRAM_SIZE,
    ],
)
def test_bad_announcements(raw: bytes) -> None:
    with pytest.raises(BadAnnouncement):
        grav.decode_announcement(raw)


@given(st.binary(max_size=300))
def test_announcement_garbage_raises_only_bad_announcement(garbage: bytes) -> None:
    with contextlib.suppress(BadAnnouncement):
        grav.decode_announcement(garbage)


def test_every_peer_error_is_a_remote_protocol_error() -> None:
    for cls in (NotAMessage, BadHandshake, BadAnnouncement, BadTimestamp):
        assert issubclass(cls, RemoteProtocolError)
