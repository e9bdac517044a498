"""Hostile clients on real sockets: every request is answered or the connection closed,
and nothing a client sends puts a traceback in the server's log."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher

from support.store import RawClient, frame, serve, tcp_address


@pytest.fixture
def server(tmp_path: Path):
    yield from serve(tmp_path / "data", backend="memory", frame_timeout=5.0)


@pytest.fixture
def failures():
    """Log events with a traceback through the store server or its codec (other tests'
    leftovers, collected meanwhile, do not count)."""
    events: list[dict] = []

    def observe(event: dict) -> None:
        failure = event.get("log_failure")
        if failure is not None:
            trace = failure.getTraceback()
            if "txloom/store" in trace or "txloom/wire" in trace:
                events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


UNECHOABLE = [
    b'{"op":"ping","request_id":1e999}',
    b'{"op":"ping","request_id":"\\ud800"}',
    b'{"op":"write_snapshot","facts":[],"request_id":-1e999}',
    b'{"op":"compact","request_id":["\\udfff"]}',
    b'{"op":"replay","request_id":"' + b"x" * 2000 + b'"}',
]


def send_each(address: str, bodies: list[bytes]) -> list[dict | None]:
    with RawClient(address) as c:
        answers = []
        for body in bodies:
            c.send(frame(body))
            answers.append(c.read())
        answers.append(c.rpc({"op": "ping", "request_id": "still-open"}))
        return answers


@pytest_twisted.ensureDeferred
async def test_request_ids_that_cannot_be_echoed_are_refused(server, failures) -> None:
    """Regression: these dropped the connection with a traceback, and a snapshot or a
    compaction was applied but never answered."""
    answers = await deferToThread(send_each, tcp_address(server), UNECHOABLE)
    for answer in answers[:-1]:
        assert answer is not None
        assert answer["error_code"] == "invalid_request" and "request_id" not in answer
        assert "request_id" in answer["error"]
    assert answers[-1] == {"ok": True, "pong": True, "request_id": "still-open"}
    assert failures == []


@pytest_twisted.ensureDeferred
async def test_text_that_cannot_be_encoded_is_answered(server, failures) -> None:
    bodies = [
        b'{"op":"\\ud800","request_id":1}',
        b'{"op":"write_fact","fact":{"store":"\\ud800"},"request_id":2}',
        b'{"op":"write_fact","fact":{"store":"s","value":{"\\udc00":1}},"request_id":3}',
        b'{"op":"auth","token":"\\ud800","request_id":4}',
    ]
    answers = await deferToThread(send_each, tcp_address(server), bodies)
    assert [a["error_code"] for a in answers[:3]] == ["unknown_op", "invalid_fact", "invalid_fact"]
    assert [a["request_id"] for a in answers[:4]] == [1, 2, 3, 4]
    assert answers[0]["error"] == 'Unknown op: "\\ud800"'
    assert answers[3]["ok"] is True  # no token configured: auth always succeeds
    assert failures == []


# -- fuzz ---------------------------------------------------------------------------------

OPS = ["write_fact", "write_snapshot", "replay", "compact", "stats", "ping", "auth", "close"]
ODD = [b"1e999", b"-1e999", b'"\\ud800"', b'"\\udfff x"', b"null", b"true", b"[]", b"{}", b"0"]
ODD += [b"-1", b"1.5", b'"s"', b"[1,[2,[3]]]", b'{"a":"\\ud83d"}', b"18446744073709551616"]


def value(rng: random.Random, depth: int = 0) -> bytes:
    if depth < 2 and rng.random() < 0.3:
        if rng.random() < 0.5:
            return b"[" + b",".join(value(rng, depth + 1) for _ in range(rng.randrange(3))) + b"]"
        fields = (
            b'"%s":%s' % (rng.choice([b"store", b"id", b"k"]), value(rng, depth + 1))
            for _ in range(rng.randrange(3))
        )
        return b"{" + b",".join(fields) + b"}"
    return rng.choice(ODD)


def request(rng: random.Random) -> bytes:
    """A request object with odd values where the server reads one."""
    fields = []
    if rng.random() < 0.9:
        op = b'"%s"' % rng.choice(OPS).encode() if rng.random() < 0.8 else rng.choice(ODD)
        fields.append(b'"op":%s' % op)
    for key in (b"request_id", b"fact", b"facts", b"stores", b"since", b"limit", b"token"):
        if rng.random() < 0.35:
            fields.append(b'"%s":%s' % (key, value(rng)))
    if rng.random() < 0.3:
        fact = b'{"store":%s,"value":%s,"transaction_time":%s}' % (
            rng.choice([b'"s"', *ODD]),
            value(rng),
            rng.choice([b"1", *ODD]),
        )
        fields.append(b'"fact":%s' % fact)
        fields.append(b'"facts":[%s]' % fact)
    rng.shuffle(fields)
    body = b"{" + b",".join(fields) + b"}"
    if rng.random() < 0.05:  # bytes that break the frame's content: JSON, UTF-8
        body = rng.choice([body[:-1], body + b"x", b"\xff" + body, b"[" + body + b"]"])
    return body


def fuzz(address: str, count: int, seed: int) -> dict[str, int]:
    """Send ``count`` requests one at a time; each must be answered or the connection
    closed (a read that times out is a hang)."""
    rng = random.Random(seed)
    outcomes = {"answered": 0, "closed": 0}
    client = None
    for _ in range(count):
        if client is None:
            client = RawClient(address, timeout=10.0)
        body = request(rng)
        client.send(frame(body))
        try:
            answer = client.read()
        except TimeoutError:
            raise AssertionError(f"no answer and no close for {body!r}") from None
        except ConnectionResetError:
            answer = None
        if answer is None or '"op":"subscribe"' in body.decode("utf-8", "replace"):
            outcomes["closed" if answer is None else "answered"] += 1
            client.close()
            client = None
            continue
        assert "ok" in answer, (body, answer)
        outcomes["answered"] += 1
        if answer.get("ok") and b'"op":"close"' in body:
            client.expect_closed()
            client.close()
            client = None
    if client is not None:
        client.close()
    return outcomes


@pytest_twisted.ensureDeferred
async def test_fuzzed_requests_are_all_answered_without_a_traceback(server, failures) -> None:
    """Regression: a 20,000-frame fuzz left 85 connections hanging and logged 324
    tracebacks."""
    outcomes = await deferToThread(fuzz, tcp_address(server), 1500, 12)
    assert outcomes["answered"] > 1000 and outcomes["closed"] > 10, outcomes
    assert failures == [], [e.get("log_format") for e in failures][:5]
