"""What each op does: validation, the call into the backend, the answer's shape.

Handlers take the connection and the request and return the answer (a frame), a
``ReplyStream``, a Deferred of either, or ``None`` when they answered themselves. Ops
marked *barrier* run only after every earlier answer on the connection went out, so a
``replay`` sent after ``write_fact`` on one connection sees that write.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from txloom.store import errors
from txloom.store.errors import RequestError
from txloom.store.fact import InvalidFact, encode_fact, meta_of, normalize_fact
from txloom.store.protocol import CloseAfter
from txloom.store.replay import ReplayPlan
from txloom.store.replies import (
    MISSING,
    OK,
    ReplyStream,
    envelope_size,
    error_frame,
    ok_frame,
    replay_envelope,
)

if TYPE_CHECKING:
    from txloom.store.protocol import StoreServerProtocol
    from txloom.store.service import StoreServerFactory

__all__ = ["RequestRouter"]


Handler = Callable[["StoreServerProtocol", dict[str, Any]], Any]


def _op(name: str, barrier: bool = False) -> Callable[[Handler], Handler]:
    def mark(fn: Handler) -> Handler:
        fn.op_name = name  # type: ignore[attr-defined]
        fn.barrier = barrier  # type: ignore[attr-defined]
        return fn

    return mark


def _rid(request: dict[str, Any]) -> Any:
    return request.get("request_id", MISSING)


def _stores(request: dict[str, Any]) -> list[str] | None:
    stores = request.get("stores")
    if stores is None:
        return None
    if not isinstance(stores, list) or not all(isinstance(s, str) for s in stores):
        raise RequestError(errors.INVALID_REQUEST, "stores must be a list of strings")
    return stores or None


def _non_negative(request: dict[str, Any], name: str) -> int | None:
    value = request.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RequestError(errors.INVALID_REQUEST, f"{name} must be a non-negative integer")
    return value


class RequestRouter:
    """Maps op names to handlers for one server (one factory)."""

    def __init__(self, factory: StoreServerFactory) -> None:
        self.factory = factory
        self.backend = factory.backend
        self.config = factory.config
        self._handlers: dict[str, Handler] = {}
        for name in dir(self):
            fn = getattr(self, name)
            op = getattr(fn, "op_name", None)
            if op is not None:
                self._handlers[op] = fn

    def handler(self, op: Any) -> Handler | None:
        return self._handlers.get(op) if isinstance(op, str) else None

    # -- facts --------------------------------------------------------------------------

    def _fact(self, obj: Any, where: str = "fact") -> tuple[bytes, Any]:
        try:
            fact = normalize_fact(obj)
            body = encode_fact(fact)
        except InvalidFact as e:
            raise RequestError(errors.INVALID_FACT, f"{where}: {e}") from None
        if len(body) > self.config.max_fact_size:
            raise RequestError(
                errors.INVALID_FACT,
                f"{where}: {len(body)} bytes encoded, above the limit of "
                f"{self.config.max_fact_size} (the frame limit less room for the answer)",
            )
        return body, meta_of(fact)

    @_op("write_fact")
    def write_fact(self, conn: StoreServerProtocol, request: dict[str, Any]) -> defer.Deferred:
        body, meta = self._fact(request.get("fact"))
        request_id = _rid(request)
        frame = OK if request_id is MISSING else ok_frame(None, request_id)
        factory = self.factory
        factory.write_requests += 1
        observe = factory.on_write_acked
        started = time.monotonic() if observe is not None else 0.0

        def committed(_seq: int) -> bytes:
            factory.facts_written += 1
            if observe is not None:
                observe(time.monotonic() - started)
            return frame

        return self.backend.append(body, meta).addCallback(committed)

    @_op("write_snapshot", barrier=True)
    def write_snapshot(self, conn: StoreServerProtocol, request: dict[str, Any]) -> defer.Deferred:
        facts = request.get("facts")
        if not isinstance(facts, list):
            raise RequestError(errors.INVALID_REQUEST, "facts must be a list of facts")
        encoded = [self._fact(f, f"facts[{i}]") for i, f in enumerate(facts)]
        request_id = _rid(request)
        return self.backend.write_snapshot(encoded).addCallback(
            lambda _count: ok_frame(None, request_id)
        )

    @_op("compact", barrier=True)
    def compact(self, conn: StoreServerProtocol, request: dict[str, Any]) -> defer.Deferred:
        request_id = _rid(request)

        def done(report: dict[str, Any]) -> bytes:
            fields = {k: report[k] for k in ("through", "facts", "bytes_before", "bytes_after")}
            return ok_frame(fields, request_id)

        return self.backend.compact().addCallback(done)

    # -- reading ------------------------------------------------------------------------

    @_op("replay", barrier=True)
    def replay(
        self, conn: StoreServerProtocol, request: dict[str, Any]
    ) -> ReplyStream | defer.Deferred:
        stores = _stores(request)
        since = _non_negative(request, "since")
        limit = _non_negative(request, "limit")
        if limit == 0:
            raise RequestError(errors.INVALID_REQUEST, "limit must be at least 1")
        request_id = _rid(request)
        if any(request.get(k) is not None for k in ("stores", "since", "limit")):
            budget = self.config.max_frame_size - envelope_size(request_id)

            def first_page(plan: ReplayPlan) -> ReplyStream:
                stream = self._stream(plan, True, request_id)
                try:
                    stream.read_first()
                except BaseException:
                    stream.close()
                    raise
                return stream

            # on a reader thread: a store filter may make the selection scan the index
            return self.backend.page(
                since or 0, stores, limit=limit, budget=budget, then=first_page
            )
        return self._stream(self.backend.plan_replay(), False, request_id)

    def _stream(self, plan: ReplayPlan, paged: bool, request_id: Any) -> ReplyStream:
        """The answer to a replay, read on the backend's reader threads as it goes out
        (built on whichever thread planned it; it touches nothing shared)."""
        max_frame = self.config.max_frame_size
        if paged and plan.count == 0 and plan.more:
            plan.close()
            raise RequestError(
                errors.FRAME_TOO_LARGE,
                f"the fact after seq {plan.next} does not fit in one answer with this "
                "request_id; send a shorter request_id",
            )
        prefix, suffix = replay_envelope(plan, paged, request_id)
        stream = ReplyStream(
            plan,
            prefix,
            suffix,
            self.backend.read,
            failure_frame=error_frame(
                errors.INTERNAL_ERROR, "storage failure; see the server log", request_id
            ),
        )
        if stream.length > max_frame:
            stream.close()
            raise RequestError(
                errors.FRAME_TOO_LARGE,
                f"replay of {plan.count} facts needs a frame of {stream.length} bytes, above "
                f"the limit of {max_frame}; read the store in pages with "
                f'{{"op":"replay","since":0,"limit":N}} and continue from "next"',
            )
        return stream

    @_op("subscribe", barrier=True)
    def subscribe(self, conn: StoreServerProtocol, request: dict[str, Any]) -> None:
        stores = _stores(request)
        since = _non_negative(request, "since")
        conn.become_subscriber(stores, since)

    # -- connection ---------------------------------------------------------------------

    @_op("ping")
    def ping(self, conn: StoreServerProtocol, request: dict[str, Any]) -> bytes:
        return ok_frame({"pong": True}, _rid(request))

    @_op("stats")
    def stats(self, conn: StoreServerProtocol, request: dict[str, Any]) -> bytes:
        factory = self.factory
        backend = self.backend
        fields = {
            "facts_written": factory.facts_written,
            "connections_active": len(factory.connections),
            "uptime_ms": int((time.monotonic() - factory.started) * 1000),
            "last_seq": backend.last_seq,
            "facts": backend.fact_count,
            "subscribers": len(factory.hub),
            "backend": backend.name,
            "fsync": str(getattr(backend, "fsync", "n/a")) if backend.durable else "n/a",
        }
        return ok_frame(fields, _rid(request))

    @_op("close")
    def close(self, conn: StoreServerProtocol, request: dict[str, Any]) -> CloseAfter:
        return CloseAfter(ok_frame(None, _rid(request)))

    @_op("auth")
    def auth(self, conn: StoreServerProtocol, request: dict[str, Any]) -> bytes:
        if not conn.check_token(request.get("token")):
            raise RequestError(errors.UNAUTHORIZED, "wrong token", close=True)
        return ok_frame(None, _rid(request))
