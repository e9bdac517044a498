"""``StoreSession`` without a transport: answer order, barriers, the pipeline cap, auth
state and the switch to push mode, driven by hand with a ``Clock``."""

from __future__ import annotations

import json

from twisted.internet.task import Clock

from txloom.store.backend import memory_backend
from txloom.store.config import StoreConfig
from txloom.store.requests import OPS
from txloom.store.service import StoreServerFactory
from txloom.store.session import StoreSession
from txloom.wire.crcjson import encode_object


class Recorder:
    """A ``SessionOutput`` that writes down what the session asked for."""

    def __init__(self) -> None:
        self.data = b""
        self.calls: list[tuple] = []

    def write(self, data: bytes) -> None:
        self.data += data

    def pause_reading(self) -> None:
        self.calls.append(("pause",))

    def resume_reading(self) -> None:
        self.calls.append(("resume",))

    def lose(self) -> None:
        self.calls.append(("lose",))

    def abort(self) -> None:
        self.calls.append(("abort",))

    def start_push(self, stores, since) -> None:
        self.calls.append(("push", stores, since))

    def became_authenticated(self) -> None:
        self.calls.append(("authenticated",))

    def drained(self) -> None:
        self.calls.append(("drained",))

    def answers(self) -> list[dict]:
        data, out = self.data, []
        while data:
            size = int.from_bytes(data[:4], "big")
            out.append(json.loads(data[4 : 4 + size]))
            data = data[8 + size :]
        return out


def session(**overrides) -> tuple[StoreSession, Recorder, Clock]:
    clock = Clock()
    backend = memory_backend(clock)
    backend.open()
    clock.advance(0)
    server = StoreServerFactory(backend, StoreConfig(listen=[], **overrides), clock)
    output = Recorder()
    return StoreSession(server, output), output, clock


def send(s: StoreSession, *requests: dict) -> None:
    s.data_received(b"".join(encode_object(r) for r in requests))


def write(i: int) -> dict:
    return {"op": "write_fact", "fact": {"id": f"f{i}", "store": "s"}, "request_id": i}


def test_answers_keep_request_order_while_a_write_commits() -> None:
    s, out, clock = session()
    send(s, write(1), {"op": "ping", "request_id": "p"})
    assert out.answers() == []  # the ping waits behind the uncommitted write
    clock.advance(0)
    assert [a["request_id"] for a in out.answers()] == [1, "p"]


def test_a_barrier_waits_for_earlier_answers_and_sees_their_writes() -> None:
    s, out, clock = session()
    send(s, write(1), {"op": "replay", "request_id": "r"}, {"op": "ping"})
    assert s.held is not None and ("pause",) in out.calls
    clock.advance(0)
    replay = out.answers()[1]
    assert [f["id"] for f in replay["facts"]] == ["f1"]
    assert out.answers()[2] == {"ok": True, "pong": True}
    assert s.held is None and out.calls[-1] == ("resume",)


def test_the_pipeline_cap_stops_reading() -> None:
    s, out, clock = session(max_pipeline=2)
    send(s, write(1), write(2), write(3))
    assert len(s.slots) == 2 and out.calls == [("pause",)]
    clock.advance(0)
    clock.advance(0)
    # the third was already buffered: once there is room it is read without more bytes
    # arriving (it used to wait for the peer's next send, for ever if there was none)
    assert [a["request_id"] for a in out.answers()] == [1, 2, 3]
    assert out.calls[0] == ("pause",) and out.calls[-1] == ("resume",)


def test_auth_state() -> None:
    s, out, _ = session(auth_token="t")
    send(s, {"op": "auth", "token": "wrong"})
    assert out.answers()[0]["error_code"] == "unauthorized" and out.calls == [("lose",)]
    s, out, _ = session(auth_token="t")
    send(s, {"op": "ping"})
    assert out.answers()[0]["error"].startswith("authenticate first")
    s, out, _ = session(auth_token="t")
    send(s, {"op": "auth", "token": "t"}, {"op": "ping"})
    assert out.answers() == [{"ok": True}, {"ok": True, "pong": True}]
    assert out.calls == [("authenticated",)] and s.authenticated


def test_subscribe_switches_to_push_mode() -> None:
    s, out, _ = session()
    send(s, {"op": "subscribe", "stores": ["a"], "since": 3}, {"op": "ping"})
    assert out.calls == [("push", ["a"], 3)] and s.pushing
    assert out.answers() == []  # the ack is the connection's to send; the ping is ignored
    send(s, {"op": "close"})
    assert out.calls[-1] == ("lose",)


def test_every_declared_op_has_a_handler() -> None:
    s, _, _ = session()
    assert set(s.server.router._handlers) == set(OPS)
    assert {name for name, spec in OPS.items() if spec.barrier} == {
        "write_snapshot",
        "compact",
        "replay",
        "subscribe",
    }
