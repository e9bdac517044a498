"""Running one Twisted coroutine as a shell command.

``twisted.internet.task.react`` exits the process itself; a subcommand should instead
return or raise like any function, so that ``txloom.cli.command.main`` alone decides the
exit status (and tests can call ``main`` in-process). SIGINT and SIGTERM stop the reactor
as usual; a command stopped that way raises ``KeyboardInterrupt``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["run_on_reactor"]

T = TypeVar("T")


def run_on_reactor(main: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
    """Run the reactor until ``main(reactor)`` finishes; return its result or raise."""
    from twisted.internet import reactor  # noqa: PLC0415 - not for commands that need none
    from twisted.internet.defer import Deferred  # noqa: PLC0415
    from twisted.python.failure import Failure  # noqa: PLC0415

    outcome: list[Any] = []

    def finished(result: object) -> None:
        outcome.append(result)
        reactor.callWhenRunning(reactor.stop)

    def start() -> None:
        Deferred.fromCoroutine(main(reactor)).addBoth(finished)

    reactor.callWhenRunning(start)
    reactor.run()
    if not outcome:
        raise KeyboardInterrupt
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]
