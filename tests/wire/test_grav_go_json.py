"""Frames decided as a Grav v0.5 node decides them (Go's ``encoding/json`` into its message
struct), and messages written as Go writes them. docs/bus.md shows the same table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from txloom.bus import Message
from txloom.wire import gojson, grav
from txloom.wire.grav import ZERO_TIME_NS, MessageFields, NotAMessage

U = "dc472fad-0b42-4f97-b67f-a95d4287a76a"
T = "2026-11-22T01:39:07.5Z"
ZERO = {"uuid": "", "msg_type": "", "timestamp_ns": ZERO_TIME_NS, "data": b"", "data_null": True}

# frame -> the fields Go reads (a subset), or None: Go fails and it becomes websocket.message
GO_READS: list[tuple[bytes, dict | None]] = [
    (b"{}", ZERO),
    (b"null", ZERO),
    (b'{"payload":{"data":"aGk="}}', {**ZERO, "data": b"hi", "data_null": False}),
    (b'{"meta":{"uuid":"","msg_type":"t"}}', {"uuid": "", "msg_type": "t"}),
    (
        b'{"META":{"UUID":"a","Msg_Type":"t"},"Payload":{"DATA":"aGk="}}',
        {"uuid": "a", "data": b"hi"},
    ),
    (b'{"meta":{"uuid":"a","msg_type":"\xffok\xe2\x82"}}', {"msg_type": "\ufffdok\ufffd\ufffd"}),
    (b'{"meta":{"uuid":"a","hops":999}}', {"uuid": "a", "hops": grav.MAX_HOPS}),
    (b'{"meta":{"uuid":"a","hops":"x"}}', {"uuid": "a", "hops": grav.MAX_HOPS}),
    (b'{"meta":{"uuid":"a"},"payload":{"data":"aG\\nk=\\r\\n"}}', {"data": b"hi"}),
    (b'{"meta":{"uuid":"a","timestamp":"2026-11-22T01:39:07,5Z"}}', {"utc_offset": 0}),
    (b'{"meta":{"uuid":"a","timestamp":"2026-11-22t01:39:07.5Z"}}', None),
    (b'{"meta":{"uuid":"a","timestamp":"2026-11-22T01:39:07.5z"}}', None),
    # and more of Go's rules
    (b'{"meta":{"uuid":"a","uuid":"b"}}', {"uuid": "b"}),  # the last duplicate wins
    (b'{"meta":{"uuid":"a"},"meta":{"msg_type":"t"}}', {"uuid": "a", "msg_type": "t"}),  # merged
    (b'{"meta":{"uuid":"a","uuid":null}}', {"uuid": "a"}),  # null leaves a field as it was
    (b'{"meta":{"uuid":"a","msg_type":"\\ud800"}}', {"msg_type": "\ufffd"}),
    # the Kelvin sign folds to "k" and the long s to "s", as in Go; nothing else does
    ('{"meta":{"uuid":"a","msg_\u212aype":"t"}}'.encode(), {"msg_type": ""}),
    ('{"meta":{"uuid":"a","time\u017ftamp":"' + T + '"}}', {"utc_offset": 0}),
    (
        '{"META":{"uuid":"a","time\u017ftamp":"' + T + '","msg_type":"\u212a"}}',
        {"msg_type": "\u212a"},
    ),
    (b'{"meta":{"uuid":"a"},"payload":{"data":"QR=="}}', {"data": b"A"}),  # loose tail bits
    (b'{"meta":{"uuid":"a"},"payload":{"data":[104,105,null]}}', {"data": b"hi\x00"}),
    (b'{"meta":{"uuid":"a"},"payload":{"data":""}}', {"data": b"", "data_null": False}),
    (b'{"meta":{"uuid":"a"},"payload":{"data":"aGk=","data":null}}', {"data_null": True}),
    (b'{"meta":{"uuid":"a"},"payload":null}', {"data_null": True}),
    (b'{"meta":{"uuid":"a","timestamp":null}}', {"timestamp_ns": ZERO_TIME_NS}),
    (b'{"meta":{"uuid":"a"},"other":[1,{"x":NaN}]}', None),
    (b'{"meta":{"uuid":"a"},"payload":{"data":"aGk"}}', None),  # unpadded
    (b'{"meta":{"uuid":"a"},"payload":{"data":"aGk=aGk="}}', None),  # data after padding
    (b'{"meta":{"uuid":"a"},"payload":{"data":[256]}}', None),
    (b'{"meta":{"uuid":"a"},"payload":{"data":[-0]}}', None),
    (b'{"meta":{"uuid":"a"},"payload":{"data":[1.0]}}', None),
    (b'{"meta":{"uuid":"a","timestamp":"2026-11-22T01:39:07\\u002e5Z"}}', None),  # raw text
    (b'{"meta":{"uuid":"a","timestamp":5}}', None),
    (b'{"meta":{"uuid":7}}', None),
    (b'{"meta":[]}', None),
    (b"[]", None),
    (b'"x"', None),
    (b"{}\xff", None),
    (b"{} {}", None),
]


@pytest.mark.parametrize(("frame", "expected"), GO_READS)
def test_frames_are_read_as_go_reads_them(frame: bytes | str, expected: dict | None) -> None:
    if expected is None:
        with pytest.raises(NotAMessage):
            grav.decode_message(frame)
        return
    f = grav.decode_message(frame)
    assert {k: getattr(f, k) for k in expected} == expected


def test_a_frame_go_reads_is_written_again_as_go_writes_it() -> None:
    f = grav.decode_message(b'{"META":{"uuid":"a","msg_type":"\xff"},"payload":{"data":""}}')
    assert grav.encode_message(f) == (
        b'{"meta":{"uuid":"a","parent_id":"","response_to":"","msg_type":"\xef\xbf\xbd",'
        b'"timestamp":"0001-01-01T00:00:00Z"},"payload":{"data":""}}'
    )


def fields(msg_type: str) -> MessageFields:
    return MessageFields("u", "", "", msg_type, 0, 0, b"", 0, True)


def test_strings_are_written_as_go_writes_them() -> None:
    out = grav.encode_message(fields("\b\f\\b\\f\t<>&\u2028\x7f\ufffd\ud800"))
    # \b and \f long, a backslash before "b" untouched, U+FFFD raw, invalid text as \ufffd
    assert (
        b'"msg_type":"\\u0008\\u000c\\\\b\\\\f\\t\\u003c\\u003e\\u0026\\u2028\x7f\xef\xbf\xbd\\ufffd"'
        in out
    )
    assert grav.decode_message(out).msg_type == "\b\f\\b\\f\t<>&\u2028\x7f\ufffd\ufffd"


def test_empty_data_and_no_data() -> None:
    assert Message.new("t").to_json().endswith(b'"payload":{"data":null}}')
    assert Message.new("t", b"").to_json().endswith(b'"payload":{"data":""}}')
    again = Message.from_json(Message.new("t", b"").to_json())
    assert again.to_json().endswith(b'"payload":{"data":""}}')


def test_hops_are_written_only_when_relaying() -> None:
    relayed = grav.encode_message(grav.decode_message(b'{"meta":{"uuid":"a"}}'), hops=2)
    assert b'"hops":2' in relayed
    received = Message.from_json(relayed)  # a relayed message, delivered to local pods...
    assert b"hops" not in received.to_json()  # ...and sent on by them: no hops
    assert b"hops" not in grav.encode_message(grav.decode_message(relayed))


@given(st.binary(max_size=64))
def test_go_base64_agrees_with_the_standard_encoding(data: bytes) -> None:
    import base64

    text = base64.b64encode(data).decode()
    assert gojson.decode_base64(text) == data
    assert gojson.decode_base64("\n".join(text[i : i + 3] for i in range(0, len(text), 3))) == data


@given(st.binary(max_size=60))
def test_invalid_utf8_becomes_one_replacement_per_bad_byte(raw: bytes) -> None:
    text = raw.replace(b'"', b"").replace(b"\\", b"")  # no quote or escape to end the string
    frame = b'{"meta":{"uuid":"a","msg_type":"' + text + b'"}}'
    try:
        f = grav.decode_message(frame)
    except NotAMessage:
        return  # a control character: Go refuses those too
    # compared with the bytes sent: dropping a backslash can join two bad bytes into a
    # valid character (b"\xc2\\\x80" sends b"\xc2\x80", U+0080)
    assert f.msg_type.count("\ufffd") >= text.decode("utf-8", "replace").count("\ufffd")


@given(
    st.builds(
        MessageFields,
        uuid=st.text(max_size=8),
        parent_id=st.text(max_size=8),
        response_to=st.text(max_size=8),
        msg_type=st.text(max_size=8),
        timestamp_ns=st.integers(min_value=0, max_value=2**62),
        utc_offset=st.integers(min_value=-1439, max_value=1439),
        data=st.binary(max_size=20),
        hops=st.just(0),
        data_null=st.booleans(),
    )
)
def test_the_go_layout_fast_path_and_the_general_path_agree(f: MessageFields) -> None:
    f = f._replace(data_null=f.data_null and not f.data)
    frame = grav.encode_message(f)
    general = frame.replace(b'{"meta":', b'{"Meta":', 1)  # same message, not Go's layout
    assert grav.decode_message(frame) == grav.decode_message(general) == f
