"""``strictjson`` gives the standard library's answers, whichever library did the work."""

from __future__ import annotations

import json
import math
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from txloom.wire import strictjson


def _refuse(name: str) -> object:
    raise ValueError(name)


_std_decoder = json.JSONDecoder(parse_constant=_refuse)

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # beyond 64 bits too: orjson cannot, json can
    | st.floats()  # NaN and infinities too: both must refuse them
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def std_dump(value: object) -> bytes:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def std_outcome(fn, *args):
    try:
        return "ok", fn(*args)
    except (TypeError, ValueError, RecursionError) as e:
        return "error", type(e) if not isinstance(e, ValueError) else ValueError


@given(values)
def test_dump_agrees_with_json(value: object) -> None:
    expected = std_outcome(std_dump, value)
    got = std_outcome(strictjson.dump, value)
    assert got[0] == expected[0]
    if got[0] == "ok":
        assert json.loads(got[1]) == json.loads(expected[1])  # floats may be spelled apart


@given(values)
def test_parse_agrees_with_json(value: object) -> None:
    try:
        data = std_dump(value)
    except (TypeError, ValueError):
        return
    parsed = strictjson.parse(data)
    assert parsed == _std_decoder.decode(data.decode("utf-8"))
    assert type(parsed) is type(json.loads(data))


@pytest.mark.parametrize(
    "data",
    [
        b'{"big":123456789012345678901234567890}',
        b"[-18446744073709551616]",
        b'{"x":1e999}',
        b'{"id":"0000000000000000000000","n":1}',
    ],
)
def test_parse_keeps_what_orjson_would_change(data: bytes) -> None:
    assert repr(strictjson.parse(data)) == repr(json.loads(data))  # 1e30 is not 10**30


@pytest.mark.parametrize(
    "data", [b"NaN", b'{"x":Infinity}', b'{"a":1,}', b"\xff", b'"\\ud800"x', b"[" * 5000]
)
def test_parse_refuses_what_json_refuses(data: bytes) -> None:
    with pytest.raises((ValueError, RecursionError)):
        strictjson.parse(data)


@pytest.mark.parametrize(
    "value", [math.inf, {"x": [math.nan]}, {"u": uuid.uuid4()}, {1: "int key"}, "\ud800"]
)
def test_dump_refuses_or_converts_as_json_does(value: object) -> None:
    assert std_outcome(strictjson.dump, value) == std_outcome(std_dump, value)
