"""The controller side: the registry of connected agents, and calls on them.

Transports report agents to a ``Clients`` (``join``/``received``/``left``, the
``IRPCPeerRegistry`` contract); callers use ``call``, ``call_all`` and ``list``. Everything
that makes a call a call lives here, so it is the same on every transport:

- Request ids on a connection start at the agent's hello ``next_id``.
- Every call ends: with the response, the agent's error, ``deadline_exceeded`` (and a
  ``cancel`` sent to the agent), or ``cancelled`` when the agent leaves or is replaced.
  Nothing is ever answered with an empty result.
- A name that joins again replaces the connection holding it (the stale one is closed).
- Each agent has its own bounded number of calls in flight (``max_pending``); past it a
  call fails at once with ``unavailable``. Sending never waits, so one slow agent only
  ever delays its own calls.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txloom.interfaces import IRPCPeerRegistry
from txloom.rpc.codecs import Codec, Raw, codec_for, encode_value, type_name_of
from txloom.rpc.deadlines import Deadlines
from txloom.rpc.errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    RPCError,
    Unauthenticated,
    Unavailable,
)
from txloom.wire.rpc import ErrorResponse, Hello, Request, Response

__all__ = [
    "DEFAULT_MAX_PENDING",
    "DEFAULT_TIMEOUT",
    "MAX_NAME_LENGTH",
    "AgentInfo",
    "AgentJoined",
    "AgentLeft",
    "Clients",
]

#: Seconds a call waits for its answer unless the caller says otherwise (spec default).
DEFAULT_TIMEOUT = 5.0

#: Calls in flight per agent; one more fails at once with ``unavailable``. It bounds what a
#: slow or stuck agent can make the controller hold (timers, Deferreds, queued frames).
DEFAULT_MAX_PENDING = 4096

#: Longest agent name accepted in a hello (names appear in logs, lists and metrics).
MAX_NAME_LENGTH = 256

_MAX_ID = 2**63 - 1


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """One connected agent, as ``list`` and the join/leave events show it."""

    name: str
    transport: str
    address: str
    joined_at: float
    in_flight: int = 0


@dataclass(frozen=True, slots=True)
class AgentJoined:
    """Event: an agent said hello (after replacing any stale connection of its name)."""

    agent: AgentInfo


@dataclass(frozen=True, slots=True)
class AgentLeft:
    """Event: an agent's connection ended (closed, cut, replaced, timed out)."""

    agent: AgentInfo
    reason: str


Event = AgentJoined | AgentLeft


class _Call:
    __slots__ = ("codec", "deferred", "id", "timeout", "type_name")

    def __init__(self, call_id: int, type_name: str, codec: Codec, deferred: Deferred[Any]):
        self.id = call_id
        self.type_name = type_name
        self.codec = codec
        self.deferred = deferred
        self.timeout = 0.0


class _Agent:
    __slots__ = ("calls", "joined_at", "name", "next_id", "peer")

    def __init__(self, peer: Any, hello: Hello, joined_at: float) -> None:
        self.peer = peer
        self.name = hello.name
        self.next_id = hello.next_id
        self.joined_at = joined_at
        self.calls: dict[int, _Call] = {}

    def info(self) -> AgentInfo:
        peer = self.peer
        return AgentInfo(
            self.name,
            str(getattr(peer, "transport", "?")),
            str(getattr(peer, "address", "")),
            self.joined_at,
            len(self.calls),
        )


@implementer(IRPCPeerRegistry)
class Clients:
    """The controller's agents (see the module doc).

    ``token``: when set, a hello must carry it. ``clock``: where timeouts are scheduled
    (the reactor unless given; tests hand in a ``Clock``).
    """

    log = Logger()

    def __init__(
        self,
        token: str | None = None,
        clock: Any = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # noqa: PLC0415 - the installed one
        self.token = token
        self.clock = clock
        self.timeout = timeout
        self.max_pending = max_pending
        self._agents: dict[str, _Agent] = {}
        self._by_peer: dict[Any, _Agent] = {}
        self._listeners: list[Callable[[Event], Any]] = []
        self._waiting: dict[str, list[Deferred[AgentInfo]]] = {}
        self._response_types: dict[str, type] = {}
        self._deadlines = Deadlines(clock)

    # -- what transports report (IRPCPeerRegistry) ----------------------------------------

    def join(self, peer: Any, hello: Hello) -> None:
        if self.token is not None and not (
            hello.token is not None and hmac.compare_digest(hello.token, self.token)
        ):
            raise Unauthenticated(f"agent {hello.name[:MAX_NAME_LENGTH]!r}: bad token")
        if not hello.name or len(hello.name) > MAX_NAME_LENGTH or not hello.name.isprintable():
            raise InvalidArgument(f"agent names are 1 to {MAX_NAME_LENGTH} printable characters")
        if peer in self._by_peer:
            raise InvalidArgument("hello sent twice on one connection")
        stale = self._agents.get(hello.name)
        if stale is not None:
            self._remove(stale, "replaced by a newer connection")
            stale.peer.close("cancelled", "replaced by a newer connection")
        agent = _Agent(peer, hello, self.clock.seconds())
        self._agents[agent.name] = agent
        self._by_peer[peer] = agent
        info = agent.info()
        self.log.info(
            "agent {name} joined over {transport} from {address}",
            name=info.name,
            transport=info.transport,
            address=info.address,
        )
        for d in self._waiting.pop(agent.name, ()):
            d.callback(info)
        self._emit(AgentJoined(info))

    def received(self, peer: Any, response: Response | ErrorResponse) -> None:
        agent = self._by_peer.get(peer)
        if agent is None:
            return
        call = agent.calls.pop(response.id, None)
        if call is None:  # late (timed out, cancelled) or never asked: ignored
            return
        if isinstance(response, ErrorResponse):
            call.deferred.errback(RPCError.from_response(response))
            return
        try:
            value = call.codec.decode(response.payload)
        except RPCError as e:
            call.deferred.errback(e)
        else:
            call.deferred.callback(value)

    def left(self, peer: Any, reason: str) -> None:
        agent = self._by_peer.get(peer)
        if agent is not None:
            self._remove(agent, reason)

    def _remove(self, agent: _Agent, reason: str) -> None:
        info = agent.info()
        del self._by_peer[agent.peer]
        if self._agents.get(agent.name) is agent:
            del self._agents[agent.name]
        calls, agent.calls = agent.calls, {}
        for call in calls.values():
            call.deferred.errback(Cancelled(f"agent {agent.name} left: {reason}"))
        self.log.info("agent {name} left: {reason}", name=agent.name, reason=reason)
        self._emit(AgentLeft(info, reason))

    # -- what callers use ---------------------------------------------------------------------

    def register_type(self, request_type: type | str, response_type: type | None) -> None:
        """Decode responses to ``request_type`` as ``response_type`` (None: raw bytes)."""
        if response_type is None:
            self._response_types.pop(type_name_of(request_type), None)
        else:
            self._response_types[type_name_of(request_type)] = response_type

    def call(
        self,
        name: str,
        request: Any,
        timeout: float | None = None,
        response_type: type | None = None,
    ) -> Deferred[Any]:
        """Call agent ``name``; fires with the typed response or fails with an ``RPCError``.

        ``request`` is a dataclass, a protobuf message or a ``Raw``. Cancelling the
        Deferred cancels the call (the agent is sent ``cancel``).
        """
        try:
            prepared = self._prepare(request, response_type)
        except TypeError as e:
            return fail(InvalidArgument(str(e)))
        return self._call(name, prepared, timeout)

    def _prepare(self, request: Any, response_type: type | None) -> tuple[str, bytes, Codec]:
        """A request's type name, payload and response codec (once, even for call_all)."""
        type_name = type_name_of(request if isinstance(request, Raw) else type(request))
        payload = encode_value(request)
        return type_name, payload, codec_for(self._response_type(request, type_name, response_type))

    def _call(
        self,
        name: str,
        prepared: tuple[str, bytes, Codec],
        timeout: float | None,
        fan_out: list[tuple[_Agent, int]] | None = None,
    ) -> Deferred[Any]:
        """Send one call. Its deadline goes on the heap, or, for a ``call_all``, into
        ``fan_out``: the caller then sets one deadline for the whole fan-out."""
        type_name, payload, codec = prepared
        agent = self._agents.get(name)
        if agent is None:
            return fail(NotFound(f"no agent named {name!r}"))
        if len(agent.calls) >= self.max_pending:
            message = f"agent {name} has {len(agent.calls)} calls in flight"
            return fail(Unavailable(message))
        timeout = self.timeout if timeout is None else timeout
        call_id = agent.next_id
        agent.next_id = call_id + 1 if call_id < _MAX_ID else 0

        def cancel(_: Deferred[Any]) -> None:
            if agent.calls.pop(call_id, None) is not None:
                agent.peer.send_cancel(call_id)

        call = _Call(call_id, type_name, codec, Deferred(cancel))
        agent.calls[call_id] = call
        if timeout > 0:
            call.timeout = timeout
            # The deadline names the call by id, not by object: deadlines are never taken
            # off the heap, and a finished call (its Deferred, its result) should not be
            # kept alive for the rest of its timeout.
            if fan_out is None:
                self._deadlines.after(timeout, self._expire, agent, call_id)
            else:
                fan_out.append((agent, call_id))
        timeout_ms = max(0, round(timeout * 1000))
        agent.peer.send_request(Request(call_id, type_name, timeout_ms, payload))
        return call.deferred

    def _response_type(self, request: Any, type_name: str, given: type | None) -> type | None:
        if given is not None:
            return given
        known = self._response_types.get(type_name)
        if known is not None:
            return known
        return getattr(type(request), "__rpc_response__", None)

    def _expire(self, agent: _Agent, call_id: int) -> None:
        call = agent.calls.pop(call_id, None)
        if call is None:
            return  # answered, cancelled or failed already
        agent.peer.send_cancel(call.id)
        message = f"agent {agent.name} did not answer {call.type_name} within {call.timeout:g}s"
        call.deferred.errback(DeadlineExceeded(message))

    def _expire_all(self, fan_out: list[tuple[_Agent, int]]) -> None:
        for agent, call_id in fan_out:
            self._expire(agent, call_id)

    def call_all(
        self,
        request: Any,
        timeout: float | None = None,
        response_type: type | None = None,
        names: Iterable[str] | None = None,
    ) -> Deferred[dict[str, Any]]:
        """Call every connected agent (or ``names``) at once.

        Fires with ``{name: response or RPCError}`` once every call ended; each entry
        waits only for its own agent.
        """
        targets = list(self._agents) if names is None else list(names)
        try:
            prepared = self._prepare(request, response_type)
        except TypeError as e:
            return fail(InvalidArgument(str(e)))
        fan_out: list[tuple[_Agent, int]] = []
        calls = [self._call(n, prepared, timeout, fan_out) for n in targets]
        if fan_out:
            self._deadlines.after(
                self.timeout if timeout is None else timeout, self._expire_all, fan_out
            )
        done = DeferredList(calls, consumeErrors=True)

        def collect(results: list[tuple[bool, Any]]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for name, (ok, value) in zip(targets, results, strict=True):
                out[name] = value if ok else _as_error(value)
            return out

        return done.addCallback(collect)

    def list(self) -> list[AgentInfo]:
        """The connected agents, by name."""
        return [self._agents[n].info() for n in sorted(self._agents)]

    def __contains__(self, name: object) -> bool:
        return name in self._agents

    def __len__(self) -> int:
        return len(self._agents)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._agents))

    def when_joined(self, name: str) -> Deferred[AgentInfo]:
        """Fires once an agent called ``name`` is connected (at once if it is now)."""
        agent = self._agents.get(name)
        if agent is not None:
            return succeed(agent.info())
        waiting = self._waiting.setdefault(name, [])

        def forget(d: Deferred[AgentInfo]) -> None:
            if d in waiting:
                waiting.remove(d)

        d: Deferred[AgentInfo] = Deferred(forget)
        waiting.append(d)
        return d

    def subscribe(self, listener: Callable[[Event], Any]) -> Callable[[], None]:
        """Call ``listener`` with every ``AgentJoined``/``AgentLeft``; returns unsubscribe."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def _emit(self, event: Event) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                self.log.failure("RPC agent event listener failed")

    def close_all(self, reason: str = "controller shutting down") -> None:
        """Drop every agent (their calls fail with ``cancelled``)."""
        for agent in list(self._agents.values()):
            self._remove(agent, reason)
            agent.peer.close("unavailable", reason)


def _as_error(failure: Failure) -> BaseException:
    error = failure.value
    if isinstance(error, RPCError):
        return error
    return Cancelled(str(error) or type(error).__name__)
