"""Byte-exact answers against the bytes captured from the reference server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from support.store import (
    VECTOR_FACT,
    RawClient,
    serve,
    tcp_address,
)

REPLAY = (
    b'{"ok":true,"facts":[{"id":"11111111-2222-4333-8444-555555555555","store":"tasks",'
    b'"key":"k1","value":{"b":2,"a":[1,"x",null]},"value_hash":"deadbeef","causation":null,'
    b'"transaction_time":1700000000.0,"valid_time":null,"schema_version":1,"producer":null,'
    b'"derivation":null},{"id":null,"store":"tasks","key":"k2","value":{},"value_hash":null,'
    b'"causation":null,"transaction_time":1700000001.5,"valid_time":3.0,"schema_version":null,'
    b'"producer":null,"derivation":null}]}'
)
PUSH_EVENT = (
    b'{"event":"fact_written","fact":{"id":"sub-1","store":"tasks","key":"k3","value":{"b":2,'
    b'"a":[1,"x",null]},"value_hash":"deadbeef","causation":null,"transaction_time":1700000000.0,'
    b'"valid_time":null,"schema_version":1,"producer":null,"derivation":null}'
)


@pytest.fixture
def server(tmp_path: Path):
    yield from serve(tmp_path / "data", backend="memory")


def conversation(address: str) -> dict[str, object]:
    seen: dict[str, object] = {}
    with RawClient(address) as c:
        first = {"op": "write_fact", "fact": VECTOR_FACT, "request_id": "r-1"}
        seen["write_fact"] = c.rpc_body(first)
        legacy = {"store": "tasks", "key": "k2", "value": {}, "timestamp": 1700000001.5, "term": 3}
        seen["legacy"] = c.rpc_body({"fact": legacy, "op": "write_fact"})
        seen["replay"] = c.rpc_body({"op": "replay"})
        seen["unknown"] = c.rpc_body({"op": "nope"})
        seen["missing"] = c.rpc_body({"request": 1})
        seen["stats"] = c.rpc({"op": "stats"})
        seen["ping"] = c.rpc_body({"op": "ping", "request_id": 7})
        with RawClient(address) as sub:
            seen["subscribe"] = sub.rpc_body({"op": "subscribe", "stores": ["tasks"]})
            pushed = dict(VECTOR_FACT, id="sub-1", key="k3")
            seen["writer"] = c.rpc_body({"op": "write_fact", "fact": pushed})
            seen["event"] = sub.read_body()
            sub.send_object({"op": "close"})
            seen["after_close"] = sub.read_body()
        with RawClient(address) as wild:
            seen["wildcard"] = wild.rpc_body({"op": "subscribe", "stores": []})
            other = dict(VECTOR_FACT, id="sub-2", store="other")
            c.rpc_body({"op": "write_fact", "fact": other})
            seen["wildcard_event"] = wild.read_body()
        snap = {"id": "snap-only", "store": "tasks", "transaction_time": 1.0}
        seen["snapshot"] = c.rpc_body({"op": "write_snapshot", "facts": [snap]})
        seen["after_snapshot"] = c.rpc({"op": "replay"})
        seen["close"] = c.rpc_body({"op": "close"})
        seen["closed"] = c.read_body()
    return seen


@pytest_twisted.ensureDeferred
async def test_reference_conversation_byte_for_byte(server) -> None:
    seen = await deferToThread(conversation, tcp_address(server))
    assert seen["write_fact"] == b'{"ok":true,"request_id":"r-1"}'
    assert seen["legacy"] == b'{"ok":true}'
    assert seen["replay"] == REPLAY
    unknown = b'{"ok":false,"error_code":"unknown_op","error":"Unknown op: '
    assert seen["unknown"] == unknown + b'\\"nope\\""}'
    assert seen["missing"] == unknown + b'nil"}'
    stats = seen["stats"]
    assert list(stats)[:4] == ["ok", "facts_written", "connections_active", "uptime_ms"]
    assert stats["facts_written"] == 2 and stats["connections_active"] == 1
    assert seen["ping"] == b'{"ok":true,"pong":true,"request_id":7}'
    assert seen["subscribe"] == b'{"ok":true}'
    assert seen["writer"] == b'{"ok":true}'
    event = seen["event"]
    # txloom appends "seq" to the reference's event object; everything before it is equal
    assert event.startswith(PUSH_EVENT + b',"seq":')
    assert json.loads(event)["seq"] == 3
    assert seen["after_close"] is None
    assert seen["wildcard"] == b'{"ok":true}'
    assert json.loads(seen["wildcard_event"])["fact"]["store"] == "other"
    assert seen["snapshot"] == b'{"ok":true}'
    ids = [(f["id"], f["transaction_time"]) for f in seen["after_snapshot"]["facts"]]
    assert ids == [
        ("snap-only", 1.0),
        ("11111111-2222-4333-8444-555555555555", 1700000000.0),
        ("sub-1", 1700000000.0),
        ("sub-2", 1700000000.0),
        (None, 1700000001.5),
    ]
    assert seen["close"] == b'{"ok":true}'
    assert seen["closed"] is None
