"""HTTP payloads of the ``http`` event: captured bytes, round trips, garbage."""

from __future__ import annotations

import random
from collections import Counter

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from txloom.wire.cocaine_http import (
    HttpRequest,
    HttpResponseHead,
    MalformedHttpPayload,
    UnsafeTarget,
    decode_request,
    decode_response_head,
    encode_request,
    encode_response_head,
    normalise_target,
)
from txloom.wire.errors import LocalProtocolError, RemoteProtocolError

CAPTURED_HEAD = b"\x92\xcc\xc8\x92\x92\xacContent-Type\xaatext/plain\x92\xa3X-M\xa4POST"


def test_captured_response_head() -> None:
    head = decode_response_head(CAPTURED_HEAD)
    assert head == HttpResponseHead(200, [(b"Content-Type", b"text/plain"), (b"X-M", b"POST")])
    assert encode_response_head(200, head.headers) == CAPTURED_HEAD


def test_captured_request_chunk() -> None:
    captured = msgpack.packb(
        [
            b"POST",
            b"/path?a=1",
            b"1.1",
            [[b"Host", b"x"], [b"Content-Type", b"text/plain"]],
            b"BODY",
        ],
        use_bin_type=False,
    )
    req = decode_request(captured)
    assert req == HttpRequest(
        b"POST", b"/path?a=1", b"1.1", [(b"Host", b"x"), (b"Content-Type", b"text/plain")], b"BODY"
    )
    assert encode_request(req.method, req.uri, req.version, req.headers, req.body) == captured
    # "HTTP/1.1" as twisted.web spells it is sent as the bare number
    assert encode_request("POST", "/path?a=1", "HTTP/1.1", req.headers, b"BODY") == captured


names = st.binary(min_size=1, max_size=20)
header_lists = st.lists(st.tuples(names, st.binary(max_size=30)), max_size=6)


@given(st.binary(max_size=8), st.binary(max_size=50), header_lists, st.binary(max_size=200))
def test_request_round_trip(method: bytes, uri: bytes, headers: list, body: bytes) -> None:
    req = HttpRequest(method, uri, b"1.1", headers, body)
    wire = encode_request(req.method, req.uri, req.version, req.headers, req.body)
    assert decode_request(wire) == req


@given(st.integers(min_value=100, max_value=999), header_lists)
def test_response_head_round_trip(status: int, headers: list) -> None:
    head = decode_response_head(encode_response_head(status, headers))
    assert head == HttpResponseHead(status, headers)


@given(st.binary(max_size=100))
def test_garbage_is_a_remote_error(data: bytes) -> None:
    for decode, kind in ((decode_request, HttpRequest), (decode_response_head, HttpResponseHead)):
        try:
            value = decode(data)
        except RemoteProtocolError:
            continue
        assert isinstance(value, kind)


@pytest.mark.parametrize(
    "obj",
    [[b"GET", b"/", b"1.1", [], 5], [b"GET"], [b"GET", b"/", b"1.1", [[b"a"]], b""], {}],
)
def test_bad_requests(obj: object) -> None:
    with pytest.raises(MalformedHttpPayload):
        decode_request(msgpack.packb(obj))


@pytest.mark.parametrize("obj", [[99, []], [b"200", []], [200], [200, [[1, 2]]], [True, []]])
def test_bad_heads(obj: object) -> None:
    with pytest.raises(MalformedHttpPayload):
        decode_response_head(msgpack.packb(obj))


def test_local_errors() -> None:
    with pytest.raises(LocalProtocolError):
        encode_response_head(42, [])
    with pytest.raises(LocalProtocolError):
        encode_request("GET", "/", "1.1", [("a", 1)], b"")  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("target", "normal"),
    [
        (b"/app/a/b", b"/app/a/b"),
        (b"/app/./a/b/../c?x=/../y", b"/app/a/c?x=/../y"),
        (b"/app/a/..", b"/app/"),
        (b"/app/a/.", b"/app/a/"),
        (b"/app/%2e%2E/b", b"/b"),
        (b"/a//../b", b"/a/b"),
        (b"/.well-known/x.txt", b"/.well-known/x.txt"),
        (b"/...", b"/..."),
        (b"*", b"*"),
        (b"http://example.com/a/../b", b"http://example.com/a/../b"),
    ],
)
def test_dot_segments_are_removed(target: bytes, normal: bytes) -> None:
    assert normalise_target(target) == normal


@pytest.mark.parametrize(
    "target", [b"/..", b"/app/../..", b"/a/%2e%2e/%2e%2e/etc", b"/app/..%2f..%2fetc", b"/a/.%5C.."]
)
def test_climbing_above_the_root_is_refused(target: bytes) -> None:
    with pytest.raises(UnsafeTarget):
        normalise_target(target)


# -- garbage that is valid MessagePack, so the checks behind the parser are reached ---------

_FIELDS = [b"GET", b"/x", b"1.1", b""]
_BAD = [None, 1, -2, 1.5, True, [], {}, [b"a"]]
_PAIRS = [[b"Host", b"x"], [b"A", b""]]
_BAD_PAIRS = [[b"a"], [1, b"b"], [b"a", 2], b"ab", None]


def _near_request(rng: random.Random) -> bytes:
    def pick(good: list[object], bad: list[object]) -> object:
        return rng.choice(good) if rng.random() < 0.85 else rng.choice(bad)

    if rng.random() < 0.05:
        return b"\xc1"
    pairs = [pick(_PAIRS, _BAD_PAIRS) for _ in range(rng.randint(0, 3))]
    value = [pick(_FIELDS, _BAD), pick(_FIELDS, _BAD), pick(_FIELDS, _BAD), pick([pairs], _BAD)]
    value.append(pick(_FIELDS, _BAD))
    size = rng.choice([5, 5, 5, 5, 4, 6])
    return msgpack.packb([*value, None][:size], use_bin_type=bool(rng.getrandbits(1)))


#: How each check of ``decode_request`` begins its message.
_CHECKS = ("not MessagePack", "an HTTP request is", "method, uri", "headers must", "bad header")


def _outcome(wire: bytes) -> str:
    try:
        decode_request(wire)
    except MalformedHttpPayload as e:
        return next(check for check in _CHECKS if str(e).startswith(check))
    return "request"


def test_structured_garbage_reaches_every_check() -> None:
    rng = random.Random(815)
    seen = Counter(_outcome(_near_request(rng)) for _ in range(2000))
    assert set(seen) == {*_CHECKS, "request"}, seen
    assert min(seen.values()) >= 20, seen
