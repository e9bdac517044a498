"""``GravSession`` has the shape of every txloom decoder: frames in, events out, limits
declared up front, sticky errors, an explicit end; garbage reaches its deep checks."""

from __future__ import annotations

import json
import random

import pytest

from txloom.wire import grav
from txloom.wire.decoder import NEED_DATA, ConnectionClosed
from txloom.wire.errors import FrameTooLarge, LocalProtocolError
from txloom.wire.grav import BadHandshake
from txloom.wire.grav_session import GravSession, MessageFrame, Role, Withdraw

MESSAGE = b'{"meta":{"uuid":"a","msg_type":"t"},"payload":{"data":"aGk="}}'


def open_listener(**kwargs: object) -> GravSession:
    s = GravSession(Role.LISTENER, "me", **kwargs)  # type: ignore[arg-type]
    s.receive_data(grav.encode_handshake(grav.Handshake("peer", "*")))
    assert isinstance(s.next_event(), grav.Handshake)
    s.accept()
    return s


def test_events_need_data_and_a_clean_end() -> None:
    s = open_listener()
    assert s.next_event() is NEED_DATA
    s.receive_data(MESSAGE)
    s.receive_data(b"WITHDRAW", binary=False)
    assert s.pending == len(MESSAGE) + 8 and not s.in_frame
    events = list(s)
    assert [type(e) for e in events] == [MessageFrame, Withdraw]
    assert s.peer_withdrawn and s.pending == 0
    s.receive_eof()
    assert s.next_event() == ConnectionClosed()
    with pytest.raises(LocalProtocolError):
        s.receive_data(MESSAGE)


def test_the_frame_limit_is_declared_up_front_and_its_error_is_sticky() -> None:
    s = open_listener(max_frame_size=len(MESSAGE))
    s.receive_data(MESSAGE)
    s.receive_data(MESSAGE + b" ")
    with pytest.raises(FrameTooLarge):
        s.next_event()
    s.receive_data(MESSAGE)
    with pytest.raises(FrameTooLarge):
        s.next_event()


def test_a_bad_handshake_is_sticky_and_frames_after_close_are_dropped() -> None:
    s = GravSession(Role.LISTENER, "me")
    s.receive_data(b"[]")
    with pytest.raises(BadHandshake):
        s.next_event()
    with pytest.raises(BadHandshake):
        s.next_event()
    d = GravSession(Role.DIALLER, "me")
    d.receive_data(grav.encode_handshake_reply(grav.refusal("them")))
    assert d.next_event().accept is False
    d.receive_data(MESSAGE)
    assert d.next_event() is NEED_DATA  # closed: dropped


def test_handshake_garbage_reaches_the_deep_checks() -> None:
    """Valid JSON objects with the handshake's members, of every type: the checks behind
    the JSON parser are reached, not only "not JSON"."""
    rng = random.Random(12)
    values = [None, True, 0, 7, "", "x", [], ["a"], [1], {}, {"a": 1}]
    reasons: dict[str, int] = {}
    for _ in range(400):
        keys = rng.sample(["uuid", "belongsTo", "interests", "accept"], rng.randint(0, 4))
        obj = {k: rng.choice(values) for k in keys}
        if "uuid" in obj and rng.random() < 0.7:
            obj["uuid"] = "peer"  # mostly a good uuid, so the later checks run
        frame = json.dumps(obj).encode()
        s = GravSession(Role.LISTENER, "me")
        s.receive_data(frame)
        try:
            s.next_event()
        except BadHandshake as e:
            reason = str(e).split(":")[0].split(" is a ")[0]
            reasons[reason] = reasons.get(reason, 0) + 1
    assert set(reasons) >= {
        "handshake has no node uuid",
        "'interests' is not a list of strings",
        "'belongsTo'",
        "a handshake reply where a handshake was expected",
    }, reasons
