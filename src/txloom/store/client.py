"""The Twisted client of the store server: ``StoreClient``, reconnecting.

Requests are pipelined on one connection and answered in order, so many concurrent
``write_fact`` calls share the server's group commits. The connection is kept by a
``ClientService``: if it drops, calls in flight fail with ``StoreConnectionError`` (a write
may or may not have been stored; the caller decides whether to retry) and later calls wait
for the next connection.

Subscriptions use a connection of their own. Each (re)connection subscribes with ``since``
set to the last sequence number seen, so a subscription survives server restarts and
overflows without a gap or a duplicate: the server catches it up from its store.

    client = StoreClient("tcp:127.0.0.1:7400")
    client.start()
    await client.write_fact(Fact.build(store="tasks", key="t1", value={"done": False}))
    facts = await client.replay()
    sub = await client.subscribe(["tasks"], print)
    ...
    await sub.close()
    await client.stop()
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, error
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from txloom.store.errors import StoreConnectionError, StoreError
from txloom.store.fact import Fact
from txloom.store.messages import (
    facts_of,
    replay_request,
    subscribe_request,
    write_fact_request,
    write_snapshot_request,
)
from txloom.wire.crcjson import DEFAULT_MAX_FRAME_SIZE, ObjectDecoder, encode_object
from txloom.wire.errors import WireError

__all__ = ["StoreClient", "StoreClientProtocol", "StoreSubscription"]

#: Seconds a call waits for a connection before failing.
DEFAULT_CONNECT_TIMEOUT = 10.0

#: Seconds a request waits for its answer before the connection is dropped (its state is
#: unknown after that, and answers are matched by order). None waits forever.
DEFAULT_REQUEST_TIMEOUT = 60.0


class StoreClientProtocol(Protocol):
    """One connection: requests out, answers matched to them in order, events aside."""

    log = Logger()

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.decoder = ObjectDecoder(max_frame_size)
        self.pending: deque[defer.Deferred] = deque()
        #: Called with each push event (``{"event": ...}``) on a subscription connection.
        self.on_event: Callable[[dict[str, Any]], None] | None = None
        self.lost: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            with contextlib.suppress(OSError):
                set_no_delay(True)

    def handle_events(self, handler: Callable[[dict[str, Any]], None]) -> None:
        """Route push events to ``handler`` (a method: ``ClientService`` hands out a proxy,
        on which setting an attribute would not reach the protocol)."""
        self.on_event = handler

    def request(self, obj: Mapping[str, Any]) -> defer.Deferred:
        """Send one request; fires with the answer object (``ok`` or not)."""
        if self.transport is None or not self.connected:
            return defer.fail(StoreConnectionError("not connected"))
        d: defer.Deferred = defer.Deferred()
        self.pending.append(d)
        self.transport.write(encode_object(obj))
        return d

    def dataReceived(self, data: bytes) -> None:
        self.decoder.receive_data(data)
        try:
            while (obj := self.decoder.next_object()) is not None:
                if "event" in obj and self.on_event is not None:
                    try:
                        self.on_event(obj)
                    except Exception:
                        self.log.failure("subscription callback failed")
                elif self.pending:
                    self.pending.popleft().callback(obj)
                else:
                    self.log.warn("unexpected frame from the server: {obj!r}", obj=obj)
        except WireError as e:
            self.log.error("bad frame from the server: {error}", error=str(e))
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        pending, self.pending = self.pending, deque()
        for d in pending:
            d.errback(StoreConnectionError(f"connection lost: {reason.getErrorMessage()}"))
        self.lost.callback(None)


class _ClientFactory(Factory):
    def __init__(self, max_frame_size: int) -> None:
        self.max_frame_size = max_frame_size

    def buildProtocol(self, addr: Any) -> StoreClientProtocol:
        proto = StoreClientProtocol(self.max_frame_size)
        proto.factory = self
        return proto


def _check(answer: dict[str, Any]) -> dict[str, Any]:
    if answer.get("ok") is not True:
        raise StoreError.from_response(answer)
    return answer


class StoreClient:
    """Asynchronous client; every call returns a Deferred."""

    log = Logger()

    def __init__(
        self,
        endpoint: IStreamClientEndpoint | str,
        *,
        reactor: Any = None,
        token: str | None = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        retry_policy: Callable[[int], float] | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor  # noqa: PLC0415 - the installed one
        self.reactor = reactor
        if isinstance(endpoint, str):
            endpoint = clientFromString(reactor, endpoint)
        self.endpoint = endpoint
        self.token = token
        self.max_frame_size = max_frame_size
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.retry_policy = retry_policy or backoffPolicy(initialDelay=0.1, maxDelay=5.0)
        self._service = self._make_service(self._authenticate)
        self._subscriptions: set[StoreSubscription] = set()

    def _make_service(self, prepare: Callable[[StoreClientProtocol], Any]) -> ClientService:
        return ClientService(
            self.endpoint,
            _ClientFactory(self.max_frame_size),
            retryPolicy=self.retry_policy,
            clock=self.reactor,
            prepareConnection=prepare,
        )

    def _authenticate(self, proto: StoreClientProtocol) -> defer.Deferred | None:
        if self.token is None:
            return None
        return proto.request({"op": "auth", "token": self.token}).addCallback(_check)

    # -- lifetime -----------------------------------------------------------------------

    def start(self) -> StoreClient:
        """Begin connecting (calls made before the connection is up wait for it)."""
        if not self._service.running:
            self._service.startService()
        return self

    def stop(self) -> defer.Deferred:
        """Close every subscription and the connection."""
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        for subscription in list(self._subscriptions):
            await subscription.close()
        if self._service.running:
            await self._service.stopService()

    async def _connection(self) -> StoreClientProtocol:
        self.start()
        d = self._service.whenConnected()
        d.addTimeout(self.connect_timeout, self.reactor)
        try:
            return await d
        except defer.TimeoutError:
            raise StoreConnectionError(
                f"no connection to {self.endpoint} within {self.connect_timeout} s"
            ) from None

    async def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        proto = await self._connection()
        d = proto.request(request)
        if self.request_timeout is None:
            return _check(await d)
        timer = self.reactor.callLater(self.request_timeout, self._timed_out, proto, request)
        try:
            return _check(await d)
        finally:
            if timer.active():
                timer.cancel()

    def _timed_out(self, proto: StoreClientProtocol, request: dict[str, Any]) -> None:
        self.log.warn(
            "no answer to {op} within {timeout} s; dropping the connection",
            op=request.get("op"),
            timeout=self.request_timeout,
        )
        if proto.transport is not None:
            proto.transport.abortConnection()

    # -- ops ----------------------------------------------------------------------------

    def write_fact(self, fact: Fact | Mapping[str, Any]) -> defer.Deferred:
        """Store one fact; fires (with None) once the server acknowledged it."""

        async def call() -> None:
            await self._call(write_fact_request(fact))

        return defer.Deferred.fromCoroutine(call())

    def replay(
        self,
        stores: Iterable[str] | None = None,
        since: int | None = None,
        limit: int | None = None,
    ) -> defer.Deferred:
        """Every fact (by transaction time); with arguments, one page in sequence order."""
        request = replay_request(stores, since, limit)

        async def call() -> list[Fact]:
            return facts_of(await self._call(request))

        return defer.Deferred.fromCoroutine(call())

    async def replay_pages(
        self, stores: Iterable[str] | None = None, since: int = 0, limit: int | None = None
    ) -> AsyncIterator[list[Fact]]:
        """Pages of facts numbered above ``since``, in sequence order (any store size).

        Use with ``async for`` inside a coroutine run by ``Deferred.fromCoroutine``.
        """
        while True:
            answer = await self._call(replay_request(stores, since, limit))
            yield facts_of(answer)
            if not answer.get("more"):
                return
            since = answer["next"]

    def replay_all(
        self, stores: Iterable[str] | None = None, since: int = 0, limit: int | None = None
    ) -> defer.Deferred:
        """Every fact numbered above ``since`` in sequence order, read page by page."""

        async def call() -> list[Fact]:
            facts: list[Fact] = []
            async for page in self.replay_pages(stores, since, limit):
                facts.extend(page)
            return facts

        return defer.Deferred.fromCoroutine(call())

    def write_snapshot(self, facts: Iterable[Fact | Mapping[str, Any]]) -> defer.Deferred:
        """Replace the server's snapshot with ``facts``."""
        request = write_snapshot_request(facts)

        async def call() -> None:
            await self._call(request)

        return defer.Deferred.fromCoroutine(call())

    def ping(self) -> defer.Deferred:
        async def call() -> bool:
            return bool((await self._call({"op": "ping"})).get("pong"))

        return defer.Deferred.fromCoroutine(call())

    def stats(self) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._fields({"op": "stats"}))

    def compact(self) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._fields({"op": "compact"}))

    async def _fields(self, request: dict[str, Any]) -> dict[str, Any]:
        answer = dict(await self._call(request))
        answer.pop("ok", None)
        return answer

    def subscribe(
        self,
        stores: Iterable[str] | str,
        callback: Callable[[Fact], Any],
        *,
        since: int | None = None,
        on_overflow: Callable[[int], Any] | None = None,
    ) -> defer.Deferred:
        """Call ``callback(fact)`` for each fact written to ``stores`` (all when empty).

        Fires with a ``StoreSubscription`` once the server acknowledged it; facts
        acknowledged to writers after that are delivered. ``since`` starts with the
        stored facts numbered above it.
        """
        names = [stores] if isinstance(stores, str) else [str(s) for s in stores]
        subscription = StoreSubscription(self, names, callback, since, on_overflow)
        self._subscriptions.add(subscription)
        return subscription.start()

    def _forget(self, subscription: StoreSubscription) -> None:
        self._subscriptions.discard(subscription)


class StoreSubscription:
    """A push subscription that resubscribes from its last sequence number on reconnect.

    An overflow (the server dropped events because this reader fell behind) is healed
    the same way: the connection is dropped and the subscription catches up.
    """

    log = Logger()

    def __init__(
        self,
        client: StoreClient,
        stores: list[str],
        callback: Callable[[Fact], Any],
        since: int | None,
        on_overflow: Callable[[int], Any] | None,
    ) -> None:
        self.client = client
        self.stores = stores
        self.callback = callback
        self.on_overflow = on_overflow
        #: Sequence number of the last fact delivered (or the starting point).
        self.last_seq = since
        self.overflows = 0
        self._service = client._make_service(self._subscribe)
        self._ready: defer.Deferred = defer.Deferred()
        self._proto: StoreClientProtocol | None = None
        self._closed = False
        # After an overflow, events still in flight on the old connection come after the
        # gap; they are ignored until the catch-up on the next connection delivers them.
        self._resyncing = False

    def start(self) -> defer.Deferred:
        self._service.startService()

        async def wait() -> StoreSubscription:
            d = self._ready
            d.addTimeout(self.client.connect_timeout, self.client.reactor)
            try:
                await d
            except defer.TimeoutError:
                await self.close()
                raise StoreConnectionError(
                    f"no subscription to {self.client.endpoint} within "
                    f"{self.client.connect_timeout} s"
                ) from None
            return self

        return defer.Deferred.fromCoroutine(wait())

    async def _subscribe_async(self, proto: StoreClientProtocol) -> None:
        if self.client.token is not None:
            _check(await proto.request({"op": "auth", "token": self.client.token}))
        if self.last_seq is None:
            # start from the server's present, by number, so a reconnect misses nothing
            stats = _check(await proto.request({"op": "stats"}))
            self.last_seq = int(stats.get("last_seq", 0))
        self._resyncing = False
        proto.handle_events(self._event)
        _check(await proto.request(subscribe_request(self.stores, self.last_seq)))
        self._proto = proto
        if not self._ready.called:
            self._ready.callback(self)

    def _subscribe(self, proto: StoreClientProtocol) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._subscribe_async(proto))

    def _event(self, event: dict[str, Any]) -> None:
        if self._resyncing:
            return
        kind = event.get("event")
        if kind == "fact_written":
            seq = event.get("seq")
            if isinstance(seq, int):
                if self.last_seq is not None and seq <= self.last_seq:
                    return  # already delivered before a reconnect
                self.last_seq = seq
            self.callback(Fact.from_dict(event.get("fact"), seq if isinstance(seq, int) else None))
        elif kind == "overflow":
            self.overflows += 1
            dropped = int(event.get("dropped", 0))
            self.log.warn(
                "subscription fell behind: {dropped} events dropped; catching up from seq {seq}",
                dropped=dropped,
                seq=self.last_seq,
            )
            if self.on_overflow is not None:
                self.on_overflow(dropped)
            self._resyncing = True
            proto = self._proto
            if proto is not None and proto.transport is not None:
                proto.transport.loseConnection()  # the service reconnects with since

    def close(self) -> defer.Deferred:
        """Unsubscribe and close the connection."""

        async def close() -> None:
            if self._closed:
                return
            self._closed = True
            self.client._forget(self)
            proto = self._proto
            if proto is not None and proto.connected:
                proto.transport.write(encode_object({"op": "close"}))
            if self._service.running:
                with contextlib.suppress(error.ConnectionDone):
                    await self._service.stopService()
            if not self._ready.called:
                self._ready.errback(StoreConnectionError("subscription closed"))
                self._ready.addErrback(lambda _: None)

        return defer.Deferred.fromCoroutine(close())
