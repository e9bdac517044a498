"""Every op of the store protocol, declared once, and what handlers give back.

``OPS`` says, for each op, its name, the request fields it reads and whether it is a
*barrier* (it runs only after every earlier answer on the connection went out, so that a
``replay`` sent after ``write_fact`` sees that write). The session reads it when it
parses a request (unknown op? wait for earlier answers?) and the router when it binds
its handlers (one per declared op, checked at start-up), so the two cannot drift apart.

A handler returns the answer, or an *intent* the connection acts on (``CloseAfter``,
``Subscribe``, ``Authenticated``): handlers never call back into the connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from txloom.store import errors
from txloom.store.replies import MISSING, request_id_problem

__all__ = [
    "OPS",
    "Authenticated",
    "CloseAfter",
    "OpSpec",
    "Request",
    "Subscribe",
    "parse_request",
]


@dataclass(frozen=True, slots=True)
class OpSpec:
    """One op: its name, the request fields it reads, and whether it is a barrier."""

    name: str
    fields: tuple[str, ...] = ()
    barrier: bool = False


#: The protocol's ops (docs/store.md has the table of requests and answers).
OPS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        OpSpec("write_fact", ("fact",)),
        OpSpec("write_snapshot", ("facts",), barrier=True),
        OpSpec("compact", (), barrier=True),
        OpSpec("replay", ("stores", "since", "limit"), barrier=True),
        OpSpec("subscribe", ("stores", "since"), barrier=True),
        OpSpec("stats"),
        OpSpec("ping"),
        OpSpec("close"),
        OpSpec("auth", ("token",)),
    )
}


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed request: its op, the fields the op reads (absent ones are None), and the
    ``request_id`` to echo (``MISSING`` when it had none)."""

    spec: OpSpec
    args: dict[str, Any] = field(default_factory=dict)
    request_id: Any = MISSING

    def __getitem__(self, name: str) -> Any:
        return self.args.get(name)

    def given(self, name: str) -> bool:
        return self.args.get(name) is not None


@dataclass(frozen=True, slots=True)
class BadRequest:
    """A request that cannot be handled: answered with ``code`` and ``message``
    (``request_id`` echoed unless it was the problem)."""

    code: str
    message: str
    request_id: Any = MISSING


def parse_request(obj: dict[str, Any]) -> Request | BadRequest:
    """``obj`` (a decoded frame) as a ``Request``, or the error it is answered with."""
    request_id = obj.get("request_id", MISSING)
    if request_id is not MISSING:
        problem = request_id_problem(request_id)
        if problem is not None:
            return BadRequest(errors.INVALID_REQUEST, problem)
    op = obj.get("op")
    spec = OPS.get(op) if isinstance(op, str) else None
    if spec is None:
        shown = "nil" if op is None else _inspect(op)
        return BadRequest(errors.UNKNOWN_OP, f"Unknown op: {shown}", request_id)
    return Request(spec, {name: obj.get(name) for name in spec.fields}, request_id)


def _inspect(value: Any) -> str:
    """The op as the reference server names it in ``Unknown op: ...``."""
    import json  # noqa: PLC0415 - only for this rare answer

    return json.dumps(value, ensure_ascii=False)


# -- intents: what a handler asks of the connection ------------------------------------


@dataclass(frozen=True, slots=True)
class CloseAfter:
    """Send ``frame``, then close the connection (the ``close`` op)."""

    frame: bytes


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Turn the connection into a push connection for ``stores`` (None: all), first
    catching up from ``since`` if given; the ack goes out once it is registered."""

    stores: list[str] | None
    since: int | None


@dataclass(frozen=True, slots=True)
class Authenticated:
    """The token was right: the connection may send anything now; answer ``frame``."""

    frame: bytes
