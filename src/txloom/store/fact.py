"""Facts: the one record type the store keeps, and the rules for reading one off the wire.

Existing Igniter clients send facts with legacy names, missing keys and integer times, and
expect the server to tolerate all of it; the server, in turn, must hand every fact back in
one fixed shape. ``normalize_fact`` is that rule set, applied once when a fact arrives.
What is stored, replayed and pushed afterwards are the bytes ``encode_fact`` made from the
normalized dict, so the hot paths (replay, push, recovery) never parse a fact again except
to peek at three fields (``peek_fact``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from txloom.wire import strictjson

__all__ = [
    "FACT_FIELDS",
    "Fact",
    "FactMeta",
    "InvalidFact",
    "canonical_json",
    "encode_fact",
    "normalize_fact",
    "peek_fact",
    "peek_fields",
    "value_hash",
]

#: The fields of a fact, in the order txloom writes them (the spec's order).
FACT_FIELDS = (
    "id",
    "store",
    "key",
    "value",
    "value_hash",
    "causation",
    "transaction_time",
    "valid_time",
    "schema_version",
    "producer",
    "derivation",
)


class InvalidFact(ValueError):
    """The object cannot be stored as a fact (no store, wrong types, not finite...)."""


@dataclass(frozen=True, slots=True)
class FactMeta:
    """What the server needs to know about a fact besides its bytes."""

    id: str | None
    store: str
    transaction_time: float


def _time(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidFact(f"fact {name} must be a number, not {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        raise InvalidFact(f"fact {name} is too large") from None
    if not math.isfinite(number):
        raise InvalidFact(f"fact {name} must be finite")
    return number


def normalize_fact(obj: Any) -> dict[str, Any]:
    """Apply the decoding rules: the fact as the store keeps it, fields in spec order.

    Unknown keys are dropped, missing ones become null, ``timestamp`` and ``term`` are
    read as ``transaction_time`` and ``valid_time``, a missing transaction time is 0.0,
    both times become floats. ``id`` and ``value_hash`` are kept as received.
    """
    if obj is None:
        raise InvalidFact("fact missing")
    if not isinstance(obj, dict):
        raise InvalidFact("fact must be a JSON object")
    if "store" not in obj:
        raise InvalidFact("fact has no store")
    store = obj["store"]
    if not isinstance(store, str) or not store:
        raise InvalidFact("fact store must be a non-empty string")
    fact_id = obj.get("id")
    if fact_id is not None and not isinstance(fact_id, str):
        raise InvalidFact("fact id must be a string or null")
    tt = obj.get("transaction_time")
    if tt is None:
        tt = obj.get("timestamp")
    vt = obj.get("valid_time")
    if vt is None:
        vt = obj.get("term")
    return {
        "id": fact_id,
        "store": store,
        "key": obj.get("key"),
        "value": obj.get("value"),
        "value_hash": obj.get("value_hash"),
        "causation": obj.get("causation"),
        "transaction_time": 0.0 if tt is None else _time(tt, "transaction_time"),
        "valid_time": None if vt is None else _time(vt, "valid_time"),
        "schema_version": obj.get("schema_version"),
        "producer": obj.get("producer"),
        "derivation": obj.get("derivation"),
    }


def encode_fact(fact: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON of a normalized fact: the bytes stored, replayed and pushed."""
    try:
        return strictjson.dump(fact)
    except ValueError as e:  # a non-finite float somewhere inside value/producer/...
        raise InvalidFact(f"fact is not representable as JSON: {e}") from None


def meta_of(fact: Mapping[str, Any]) -> FactMeta:
    """The meta of a normalized fact."""
    return FactMeta(fact["id"], fact["store"], fact["transaction_time"])


# A fact written by txloom (or by the reference server) starts with its id and store, and
# usually ends with the times followed by null producer/derivation; reading those three
# fields with two anchored patterns is an order of magnitude cheaper than parsing the
# whole body, which matters when a million facts are scanned at start-up. Anything the
# patterns do not recognise falls back to the JSON parser, so they only decide speed.
_HEAD = re.compile(rb'\{"id":(?:null|"([^"\\]*)"),"store":"([^"\\]*)",')
_NUM = rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
_TAIL = re.compile(
    rb',"transaction_time":(' + _NUM + rb'),"valid_time":(?:null|' + _NUM + rb"),"
    rb'"schema_version":(?:null|-?\d+),"producer":null,"derivation":null\}\Z'
)
_TAIL_WINDOW = 200


def peek_fields(body: bytes) -> tuple[str | None, str, float]:
    """``(id, store, transaction_time)`` of a stored fact; ``InvalidFact`` if not one.

    The tuple form of ``peek_fact``, for the start-up scan (a million calls).
    """
    head = _HEAD.match(body)
    if head is not None:
        tail = _TAIL.search(body, len(body) - _TAIL_WINDOW if len(body) > _TAIL_WINDOW else 0)
        if tail is not None:
            raw_id = head.group(1)
            try:
                return (
                    None if raw_id is None else raw_id.decode("utf-8"),
                    head.group(2).decode("utf-8"),
                    float(tail.group(1)),
                )
            except (UnicodeDecodeError, ValueError):
                pass
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise InvalidFact(f"stored fact is not JSON: {e}") from None
    fact = normalize_fact(obj)
    return fact["id"], fact["store"], fact["transaction_time"]


def peek_fact(body: bytes) -> FactMeta:
    """Id, store and transaction time of a stored fact; ``InvalidFact`` if it is not one."""
    return FactMeta(*peek_fields(body))


def canonical_json(value: Any) -> str:
    """Keys sorted recursively, no spaces, UTF-8 kept as is: what ``value_hash`` hashes."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def value_hash(value: Any) -> str:
    """Lowercase hex SHA-256 of the canonical JSON of ``value``."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Fact:
    """One fact, as clients build and read it.

    ``Fact.build`` is how a new fact should be made: it fills in the id, hash and
    transaction time the way the spec says, so every client computes them alike.
    """

    store: str
    key: Any = None
    value: Any = None
    id: str | None = None
    value_hash: str | None = None
    causation: str | None = None
    transaction_time: float = 0.0
    valid_time: float | None = None
    schema_version: int | None = 1
    producer: Mapping[str, Any] | None = None
    derivation: Mapping[str, Any] | None = None
    #: The server's sequence number when the fact came from a push event (else None).
    seq: int | None = field(default=None, compare=False)

    @classmethod
    def build(
        cls,
        *,
        store: str,
        key: Any,
        value: Any,
        causation: str | None = None,
        valid_time: float | None = None,
        schema_version: int = 1,
        producer: Mapping[str, Any] | None = None,
        derivation: Mapping[str, Any] | None = None,
    ) -> Fact:
        """A new fact: random UUID v4 id, hash of the canonical value, time now."""
        return cls(
            store=store,
            key=key,
            value=value,
            id=str(uuid.uuid4()),
            value_hash=value_hash(value),
            causation=causation,
            transaction_time=time.time(),
            valid_time=None if valid_time is None else float(valid_time),
            schema_version=schema_version,
            producer=producer,
            derivation=derivation,
        )

    @classmethod
    def from_dict(cls, obj: Any, seq: int | None = None) -> Fact:
        """Read a fact with the same decoding rules the server applies."""
        f = normalize_fact(obj)
        return cls(
            store=f["store"],
            key=f["key"],
            value=f["value"],
            id=f["id"],
            value_hash=f["value_hash"],
            causation=f["causation"],
            transaction_time=f["transaction_time"],
            valid_time=f["valid_time"],
            schema_version=f["schema_version"],
            producer=f["producer"],
            derivation=f["derivation"],
            seq=seq,
        )

    def to_dict(self) -> dict[str, Any]:
        """The wire form, fields in spec order."""
        return {
            "id": self.id,
            "store": self.store,
            "key": self.key,
            "value": self.value,
            "value_hash": self.value_hash,
            "causation": self.causation,
            "transaction_time": self.transaction_time,
            "valid_time": self.valid_time,
            "schema_version": self.schema_version,
            "producer": self.producer,
            "derivation": self.derivation,
        }
