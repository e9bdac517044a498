"""Example agent handlers: echo, a slow call and a failing one.

Run an agent with them::

    python -m txloom.rpc.agent --connect tcp://127.0.0.1:7300 --name agent-1 \\
        --handlers txloom.rpc.examples.echo

A handlers module either defines ``register(registry)`` (as here) or a module-level
``registry`` (a ``HandlerRegistry``).
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.defer import Deferred

from txloom.rpc import HandlerRegistry, InvalidArgument, rpc_type


@rpc_type("txloom.examples.Echo")
@dataclass
class Echo:
    """Sent back as it came."""

    text: str


Echo.__rpc_response__ = Echo  # type: ignore[attr-defined]


@rpc_type("txloom.examples.Sleep")
@dataclass
class Sleep:
    """Answered after ``seconds`` (cancellable: the timer is cancelled with the call)."""

    seconds: float


@rpc_type("txloom.examples.Fail")
@dataclass
class Fail:
    """Answered with ``invalid_argument`` carrying ``message``."""

    message: str


async def echo(request: Echo) -> Echo:
    return request


def sleep(request: Sleep) -> Deferred[None]:
    from twisted.internet import reactor  # noqa: PLC0415 - the installed one

    def cancel(_: Deferred[None]) -> None:
        if call.active():
            call.cancel()

    d: Deferred[None] = Deferred(cancel)
    call = reactor.callLater(request.seconds, d.callback, None)
    return d


def fail(request: Fail) -> None:
    raise InvalidArgument(request.message)


def register(registry: HandlerRegistry) -> None:
    registry.register(Echo, echo)
    registry.register(Sleep, sleep)
    registry.register(Fail, fail)
    registry.register("txloom.examples.Bytes", lambda payload: payload)
