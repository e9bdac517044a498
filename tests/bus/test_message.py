"""Message: constructors, wire form (captured Go bytes), views."""

from __future__ import annotations

import re
import uuid as uuidlib
from datetime import datetime, timezone

import pytest

from txloom.bus import DEFAULT_MSG_TYPE, WEBSOCKET_MSG_TYPE, Message, new_uuid
from txloom.wire.grav import NotAMessage

GO_MESSAGE = (
    b'{"meta":{"uuid":"dc472fad-0b42-4f97-b67f-a95d4287a76a","parent_id":"parent-123",'
    b'"response_to":"","msg_type":"go.tick","timestamp":"2026-11-22T01:39:07.952081882Z"},'
    b'"payload":{"data":"eyJuIjowfQ=="}}'
)


def test_new_uuid_is_a_version_4_uuid() -> None:
    seen = set()
    for _ in range(200):
        text = new_uuid()
        parsed = uuidlib.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuidlib.RFC_4122
        seen.add(text)
    assert len(seen) == 200


def test_constructors() -> None:
    m = Message.new()
    assert m.msg_type == DEFAULT_MSG_TYPE
    assert m.data == b""
    assert m.parent_id == m.response_to == ""
    p = Message.new_with_parent_id("t", "req-1", "text")
    assert (p.msg_type, p.parent_id, p.data) == ("t", "req-1", b"text")
    r = Message.new_reply_to("t.reply", m.uuid, bytearray(b"ok"))
    assert r.response_to == m.uuid
    assert r.data == b"ok"
    assert Message.foreign(b"raw").msg_type == WEBSOCKET_MSG_TYPE
    with pytest.raises(TypeError):
        Message.new("t", 5)  # type: ignore[arg-type]


def test_go_bytes_round_trip() -> None:
    m = Message.from_json(GO_MESSAGE)
    assert m.uuid == "dc472fad-0b42-4f97-b67f-a95d4287a76a"
    assert m.parent_id == "parent-123"
    assert m.msg_type == "go.tick"
    assert m.data == b'{"n":0}'
    assert m.timestamp_text == "2026-11-22T01:39:07.952081882Z"
    assert m.timestamp == datetime(2026, 11, 22, 1, 39, 7, 952081, tzinfo=timezone.utc)
    assert m.to_json() == GO_MESSAGE
    assert Message.from_json(GO_MESSAGE.decode()) == m


def test_fresh_message_json() -> None:
    m = Message.new("bars.ping", b'{"n":1}')
    raw = m.to_json()
    assert re.fullmatch(
        rb'\{"meta":\{"uuid":"[0-9a-f-]{36}","parent_id":"","response_to":"",'
        rb'"msg_type":"bars.ping","timestamp":"[0-9-]{10}T[0-9:]{8}(\.[0-9]+)?Z"\},'
        rb'"payload":\{"data":"eyJuIjoxfQ=="\}\}',
        raw,
    ), raw
    assert Message.from_json(raw) == m


def test_offset_timestamps_keep_their_zone() -> None:
    raw = GO_MESSAGE.replace(b"01:39:07.952081882Z", b"03:09:07.952081882+01:30")
    m = Message.from_json(raw)
    assert m.utc_offset == 90
    assert m.timestamp.utcoffset().total_seconds() == 5400
    assert m.timestamp_ns == Message.from_json(GO_MESSAGE).timestamp_ns
    assert m.to_json() == raw


def test_not_a_message() -> None:
    with pytest.raises(NotAMessage):
        Message.from_json(b"hello")


def test_equality_and_repr() -> None:
    m = Message.from_json(GO_MESSAGE)
    assert m == Message.from_json(GO_MESSAGE)
    assert m != Message.new("go.tick")
    assert m != "x"
    assert "go.tick" in repr(m)
    with pytest.raises(TypeError):
        hash(m)
