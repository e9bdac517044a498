"""The request objects both clients send, and reading facts out of answers.

Kept in one place so that the blocking and the Twisted client cannot drift apart on the
wire (``op`` goes last, as Igniter's client sends it; optional keys only when given).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from txloom.store.fact import Fact

__all__ = [
    "fact_dict",
    "facts_of",
    "replay_request",
    "subscribe_request",
    "write_fact_request",
    "write_snapshot_request",
]


def fact_dict(fact: Fact | Mapping[str, Any]) -> dict[str, Any]:
    return fact.to_dict() if isinstance(fact, Fact) else dict(fact)


def write_fact_request(fact: Fact | Mapping[str, Any]) -> dict[str, Any]:
    return {"fact": fact_dict(fact), "op": "write_fact"}


def write_snapshot_request(facts: Iterable[Fact | Mapping[str, Any]]) -> dict[str, Any]:
    return {"facts": [fact_dict(f) for f in facts], "op": "write_snapshot"}


def replay_request(
    stores: Iterable[str] | None = None, since: int | None = None, limit: int | None = None
) -> dict[str, Any]:
    """Plain replay without arguments; a page (sequence order) with any of them."""
    request: dict[str, Any] = {}
    if stores is not None:
        request["stores"] = list(stores)
    if since is not None:
        request["since"] = since
    if limit is not None:
        request["limit"] = limit
    request["op"] = "replay"
    return request


def subscribe_request(stores: Iterable[str] | str, since: int | None) -> dict[str, Any]:
    names = [stores] if isinstance(stores, str) else [str(s) for s in stores]
    request: dict[str, Any] = {"stores": names}
    if since is not None:
        request["since"] = since
    request["op"] = "subscribe"
    return request


def facts_of(answer: Mapping[str, Any]) -> list[Fact]:
    return [Fact.from_dict(f) for f in answer.get("facts") or []]
