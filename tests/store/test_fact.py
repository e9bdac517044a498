"""Facts: decoding rules, canonical hashing, Fact.build, and the fast three-field peek."""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from txloom.store.fact import (
    FACT_FIELDS,
    Fact,
    InvalidFact,
    canonical_json,
    encode_fact,
    normalize_fact,
    peek_fact,
    value_hash,
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=15,
)
times = st.one_of(
    st.none(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
)
facts = st.fixed_dictionaries(
    {"store": st.text(min_size=1)},
    optional={
        "id": st.none() | st.text(),
        "key": json_values,
        "value": json_values,
        "value_hash": st.none() | st.text(),
        "causation": st.none() | st.text(),
        "transaction_time": times,
        "valid_time": times,
        "schema_version": st.none() | st.integers(),
        "producer": st.none() | st.dictionaries(st.text(), json_values, max_size=3),
        "derivation": st.none() | st.dictionaries(st.text(), json_values, max_size=3),
        "extra": json_values,
    },
)


def test_decoding_rules_of_the_spec() -> None:
    fact = normalize_fact(
        {"store": "tasks", "timestamp": 5, "term": 3, "unknown": 1, "value": {"a": 1}}
    )
    assert list(fact) == list(FACT_FIELDS)
    assert fact["transaction_time"] == 5.0 and isinstance(fact["transaction_time"], float)
    assert fact["valid_time"] == 3.0 and isinstance(fact["valid_time"], float)
    assert "unknown" not in fact
    assert fact["id"] is None and fact["key"] is None and fact["schema_version"] is None


def test_missing_transaction_time_is_zero() -> None:
    assert normalize_fact({"store": "s"})["transaction_time"] == 0.0


def test_canonical_names_win_over_legacy_ones() -> None:
    fact = normalize_fact({"store": "s", "transaction_time": 2, "timestamp": 9, "term": 1})
    assert fact["transaction_time"] == 2.0
    assert fact["valid_time"] == 1.0


def test_id_and_value_hash_are_kept_as_received() -> None:
    fact = normalize_fact({"store": "s", "id": "not-a-uuid", "value_hash": "deadbeef"})
    assert fact["id"] == "not-a-uuid" and fact["value_hash"] == "deadbeef"


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (None, "fact missing"),
        ([1], "must be a JSON object"),
        ({"key": "k"}, "no store"),
        ({"store": ""}, "non-empty string"),
        ({"store": 5}, "non-empty string"),
        ({"store": "s", "id": 5}, "id must be"),
        ({"store": "s", "transaction_time": "yesterday"}, "must be a number"),
        ({"store": "s", "transaction_time": True}, "must be a number"),
        ({"store": "s", "valid_time": [1]}, "must be a number"),
        ({"store": "s", "transaction_time": 10**400}, "too large"),
    ],
)
def test_invalid_facts_are_refused_with_a_reason(obj: object, message: str) -> None:
    with pytest.raises(InvalidFact, match=message):
        normalize_fact(obj)


def test_non_finite_values_are_refused_on_encoding() -> None:
    fact = normalize_fact({"store": "s", "value": float("inf")})
    with pytest.raises(InvalidFact):
        encode_fact(fact)


def test_encoding_keeps_field_order_and_utf8() -> None:
    body = encode_fact(normalize_fact({"value": "é", "store": "s", "id": "x"}))
    assert body.startswith(b'{"id":"x","store":"s","key":null,"value":"\xc3\xa9"')
    assert list(json.loads(body)) == list(FACT_FIELDS)


def test_canonical_json_sorts_keys_recursively_without_spaces() -> None:
    assert canonical_json({"b": 2, "a": [1, "x", None, {"d": 1, "c": 2}]}) == (
        '{"a":[1,"x",null,{"c":2,"d":1}],"b":2}'
    )
    expected = hashlib.sha256(b'{"a":[1,"x",null],"b":2}').hexdigest()
    assert value_hash({"b": 2, "a": [1, "x", None]}) == expected


def test_fact_build_fills_id_hash_and_time() -> None:
    fact = Fact.build(store="tasks", key="k", value={"b": 1, "a": 2}, causation="c-1")
    assert uuid.UUID(fact.id).version == 4
    assert fact.value_hash == value_hash({"a": 2, "b": 1})
    assert fact.transaction_time > 1.6e9
    assert fact.causation == "c-1" and fact.valid_time is None and fact.schema_version == 1
    assert list(fact.to_dict()) == list(FACT_FIELDS)
    assert Fact.from_dict(fact.to_dict()) == fact


@given(facts)
def test_peek_agrees_with_the_parser(obj: dict) -> None:
    try:
        fact = normalize_fact(obj)
        body = encode_fact(fact)
    except InvalidFact:
        return
    meta = peek_fact(body)
    assert (meta.id, meta.store, meta.transaction_time) == (
        fact["id"],
        fact["store"],
        fact["transaction_time"],
    )


def test_peek_refuses_what_is_not_a_fact() -> None:
    for body in (b"[]", b"{}", b"not json", b'{"id":null}'):
        with pytest.raises(InvalidFact):
            peek_fact(body)
