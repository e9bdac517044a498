"""What each op does: validation, the call into the backend, the answer's shape.

One handler per op declared in ``txloom.store.requests.OPS``, named after it. A handler
takes the parsed ``Request`` and returns the answer (a frame), a ``ReplyStream``, a
Deferred of either, or an intent (``CloseAfter``, ``Subscribe``, ``Authenticated``) that
the session acts on; it never touches the connection.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer

from txloom.interfaces import IReplayPlan, IStorageBackend
from txloom.store import errors
from txloom.store.config import StoreConfig
from txloom.store.errors import RequestError
from txloom.store.fact import InvalidFact, encode_fact, meta_of, normalize_fact
from txloom.store.replies import (
    MISSING,
    OK,
    ReplyStream,
    envelope_size,
    error_frame,
    ok_frame,
    replay_envelope,
)
from txloom.store.requests import OPS, Authenticated, CloseAfter, Request, Subscribe


class ServerState(Protocol):
    """What the handlers read of their server (``StoreServerFactory``), for ``stats``."""

    backend: IStorageBackend
    config: StoreConfig
    hub: Any
    connections: Any
    facts_written: int
    started: float


__all__ = ["RequestRouter"]


Handler = Callable[[Request], Any]


def _rid(request: Request) -> Any:
    return request.request_id


def _stores(request: Request) -> list[str] | None:
    stores = request["stores"]
    if stores is None:
        return None
    if not isinstance(stores, list) or not all(isinstance(s, str) for s in stores):
        raise RequestError(errors.INVALID_REQUEST, "stores must be a list of strings")
    return stores or None


def _non_negative(request: Request, name: str) -> int | None:
    value = request[name]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RequestError(errors.INVALID_REQUEST, f"{name} must be a non-negative integer")
    return value


class RequestRouter:
    """Maps op names to handlers for one server (one factory)."""

    def __init__(self, factory: ServerState) -> None:
        self.factory = factory
        self.backend = factory.backend
        self.config = factory.config
        #: One handler per declared op, bound by name (a missing one fails here, at once).
        self._handlers: dict[str, Handler] = {name: getattr(self, name) for name in OPS}

    def handle(self, request: Request) -> Any:
        """The answer to ``request``, an intent, or a Deferred of one; raises
        ``RequestError`` for a request the op refuses."""
        return self._handlers[request.spec.name](request)

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

    def write_fact(self, request: Request) -> defer.Deferred:
        body, meta = self._fact(request["fact"])
        request_id = _rid(request)
        frame = OK if request_id is MISSING else ok_frame(None, request_id)
        factory = self.factory
        factory.write_requests += 1
        written = self.backend.append(body, meta)
        if factory.on_write_acked is None:
            return written.addCallback(self._written, frame)
        return written.addCallback(self._written_observed, frame, time.monotonic())

    # bound methods, not a closure per write: this is the hot path of the store

    def _written(self, _seq: int, frame: bytes) -> bytes:
        self.factory.facts_written += 1
        return frame

    def _written_observed(self, _seq: int, frame: bytes, started: float) -> bytes:
        self.factory.facts_written += 1
        observe = self.factory.on_write_acked
        if observe is not None:
            observe(time.monotonic() - started)
        return frame

    def write_snapshot(self, request: Request) -> defer.Deferred:
        facts = request["facts"]
        if not isinstance(facts, list):
            raise RequestError(errors.INVALID_REQUEST, "facts must be a list of facts")
        encoded = [self._fact(f, f"facts[{i}]") for i, f in enumerate(facts)]
        request_id = _rid(request)
        return self.backend.write_snapshot(encoded).addCallback(
            lambda _count: ok_frame(None, request_id)
        )

    def compact(self, request: Request) -> defer.Deferred:
        request_id = _rid(request)

        def done(report: dict[str, Any]) -> bytes:
            fields = {k: report[k] for k in ("through", "facts", "bytes_before", "bytes_after")}
            return ok_frame(fields, request_id)

        return self.backend.compact().addCallback(done)

    # -- reading ------------------------------------------------------------------------

    def replay(self, request: Request) -> ReplyStream | defer.Deferred:
        stores = _stores(request)
        since = _non_negative(request, "since")
        limit = _non_negative(request, "limit")
        if limit == 0:
            raise RequestError(errors.INVALID_REQUEST, "limit must be at least 1")
        request_id = _rid(request)
        if any(request.given(k) for k in ("stores", "since", "limit")):
            budget = self.config.max_frame_size - envelope_size(request_id)

            def first_page(plan: IReplayPlan) -> ReplyStream:
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

    def _stream(self, plan: IReplayPlan, paged: bool, request_id: Any) -> ReplyStream:
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
                errors.STORAGE_FAILED, "storage failure; see the server log", request_id
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

    def subscribe(self, request: Request) -> Subscribe:
        return Subscribe(_stores(request), _non_negative(request, "since"))

    # -- connection ---------------------------------------------------------------------

    def ping(self, request: Request) -> bytes:
        return ok_frame({"pong": True}, _rid(request))

    def stats(self, request: Request) -> bytes:
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
            "fsync": str(backend.fsync) if backend.durable else "n/a",
            **backend.storage_status(),
        }
        return ok_frame(fields, _rid(request))

    def close(self, request: Request) -> CloseAfter:
        return CloseAfter(ok_frame(None, _rid(request)))

    def auth(self, request: Request) -> Authenticated:
        expected = self.config.auth_token
        token = request["token"]
        if expected is not None:
            try:
                good = isinstance(token, str) and hmac.compare_digest(
                    token.encode("utf-8"), expected.encode("utf-8")
                )
            except UnicodeEncodeError:  # a lone surrogate is no token
                good = False
            if not good:
                raise RequestError(errors.UNAUTHORIZED, "wrong token", close=True)
        return Authenticated(ok_frame(None, _rid(request)))
