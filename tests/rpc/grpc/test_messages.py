"""The aperture protobuf <-> txloom message mapping: round trips, the seed's own encodings,
and garbage that only ever raises ``InvalidMessage``."""

from __future__ import annotations

import contextlib

import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import status_pb2
from hypothesis import given
from hypothesis import strategies as st

from txloom.rpc.errors import STATUS_NUMBERS
from txloom.rpc.grpc.messages import (
    decode_client_message,
    decode_server_message,
    encode_client_message,
    encode_server_message,
    token_from_metadata,
    token_metadata,
)
from txloom.rpc.grpc.proto.aperture.rpc.v1 import rpc_pb2
from txloom.wire.rpc import Cancel, ErrorResponse, Hello, InvalidMessage, Request, Response

ids = st.integers(min_value=0, max_value=2**63 - 1)
type_names = st.from_regex(r"[a-z][a-z0-9_.]{0,30}[A-Za-z0-9]", fullmatch=True)
json_details = st.none() | st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
down = st.one_of(
    st.builds(Request, ids, type_names, st.integers(0, 2**40), st.binary()),
    st.builds(Cancel, ids),
)
up = st.one_of(
    st.builds(Hello, st.text(), ids),
    st.builds(Response, ids, st.binary()),
    st.builds(ErrorResponse, ids, st.sampled_from(sorted(STATUS_NUMBERS)), st.text(), json_details),
)


@given(down)
def test_server_messages_round_trip(msg: Request | Cancel) -> None:
    assert decode_server_message(encode_server_message(msg)) == msg


@given(up)
def test_client_messages_round_trip(msg: Hello | Response | ErrorResponse) -> None:
    assert decode_client_message(encode_client_message(msg)) == msg


@given(st.binary(max_size=200))
def test_garbage_only_raises_invalid_message(data: bytes) -> None:
    for decode in (decode_server_message, decode_client_message):
        with contextlib.suppress(InvalidMessage):
            decode(data)


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_well_formed_protobuf_with_bad_values_is_refused_cleanly(rid: int, next_id: int) -> None:
    """Valid framing, values txloom cannot take: the deep error paths, never a crash."""
    messages = [
        rpc_pb2.ClientToServer(hello=rpc_pb2.ClientToServer.Hello(name="a", next_id=next_id)),
        rpc_pb2.ClientToServer(response=rpc_pb2.Response(id=rid, payload=b"")),
    ]
    for msg in messages:
        try:
            decode_client_message(msg.SerializeToString())
        except InvalidMessage as e:
            assert "out of range" in str(e)
    try:
        decode_server_message(rpc_pb2.ServerToClient(cancel_id=rid).SerializeToString())
    except InvalidMessage as e:
        assert "out of range" in str(e)


def test_the_seeds_own_encodings() -> None:
    """As aperture's Go side builds them: Duration timeouts, Any payloads, Status errors."""
    req = rpc_pb2.ServerToClient(
        request=rpc_pb2.Request(
            id=3,
            timeout=duration_pb2.Duration(seconds=2, nanos=1),  # rounds up to whole ms
            payload=any_pb2.Any(type_url="example.com/x/agents.v1.Ping", value=b"\x01"),
        )
    )
    assert decode_server_message(req.SerializeToString()) == Request(
        3, "agents.v1.Ping", 2001, b"\x01"
    )
    error = status_pb2.Status(code=7, message="denied")  # no txloom name: nearest one
    resp = rpc_pb2.ClientToServer(response=rpc_pb2.Response(id=3, error=error))
    assert decode_client_message(resp.SerializeToString()) == ErrorResponse(
        3, "unauthenticated", "denied"
    )
    other = status_pb2.Status(code=2, message="?")
    other.details.add(type_url="type.googleapis.com/x.Y", value=b"z")
    resp = rpc_pb2.ClientToServer(response=rpc_pb2.Response(id=4, error=other))
    assert decode_client_message(resp.SerializeToString()) == ErrorResponse(
        4, "internal", "?", {"type_url": "type.googleapis.com/x.Y", "value": b"z"}
    )
    # a result left unset is an empty payload (proto3 writers may omit it)
    empty = rpc_pb2.ClientToServer(response=rpc_pb2.Response(id=5))
    assert decode_client_message(empty.SerializeToString()) == Response(5, b"")


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "neither"),
        (rpc_pb2.ServerToClient(request=rpc_pb2.Request(id=1)).SerializeToString(), "payload"),
        (
            rpc_pb2.ServerToClient(
                request=rpc_pb2.Request(id=1, payload=any_pb2.Any(type_url="x/"))
            ).SerializeToString(),
            "type name",
        ),
        (
            rpc_pb2.ServerToClient(
                request=rpc_pb2.Request(
                    id=1,
                    timeout=duration_pb2.Duration(seconds=-1),
                    payload=any_pb2.Any(type_url="x/a.B"),
                )
            ).SerializeToString(),
            "negative",
        ),
    ],
)
def test_server_messages_txloom_cannot_act_on(data: bytes, why: str) -> None:
    with pytest.raises(InvalidMessage, match=why):
        decode_server_message(data)


def test_tokens_ride_in_metadata() -> None:
    assert token_metadata(None) == ()
    assert token_from_metadata(token_metadata("abc")) == "abc"
    assert token_from_metadata([("Authorization", b"Bearer xyz")]) == "xyz"
    assert token_from_metadata([("authorization", "plain")]) == "plain"
    assert token_from_metadata([("other", "x")]) is None
