"""Small helpers shared by the bus tests."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from support.waiting import until  # noqa: F401  (re-exported for the bus tests)
from txloom.bus import Bus, Message, Pod


def settle(clock: Clock, rounds: int = 10_000) -> None:
    """Run every call due now (the bus's flushes and what they schedule) on ``clock``."""
    for _ in range(rounds):
        if not any(c.getTime() <= clock.seconds() for c in clock.getDelayedCalls()):
            return
        clock.advance(0)
    raise AssertionError("the bus kept scheduling work for ever")


def clocked_bus(**kwargs: object) -> tuple[Bus, Clock]:
    clock = Clock()
    return Bus(reactor=clock, **kwargs), clock  # type: ignore[arg-type]


class Inbox:
    """A pod's received messages, with a Deferred wait for "at least n of them"."""

    def __init__(self, pod: Pod, msg_type: str | None = None) -> None:
        self.pod = pod
        self.messages: list[Message] = []
        self._waits: list[tuple[Callable[[list[Message]], bool], Deferred[list[Message]]]] = []
        if msg_type is None:
            pod.on(self._got)
        else:
            pod.on_type(msg_type, self._got)

    def _got(self, msg: Message) -> None:
        self.messages.append(msg)
        ready = [(c, d) for c, d in self._waits if c(self.messages)]
        self._waits = [(c, d) for c, d in self._waits if not c(self.messages)]
        for _, d in ready:
            d.callback(self.messages)

    def until(self, check: Callable[[list[Message]], bool], timeout: float = 10.0) -> Deferred:
        d: Deferred[list[Message]] = Deferred()
        if check(self.messages):
            d.callback(self.messages)
        else:
            self._waits.append((check, d))
        from twisted.internet import reactor

        return d.addTimeout(timeout, reactor)

    def count(self, n: int, timeout: float = 10.0) -> Deferred:
        return self.until(lambda msgs: len(msgs) >= n, timeout)

    def has(self, uuid: str, timeout: float = 10.0) -> Deferred:
        return self.until(lambda msgs: any(m.uuid == uuid for m in msgs), timeout)

    def uuids(self) -> list[str]:
        return [m.uuid for m in self.messages]


def within(d: Deferred, seconds: float = 10.0) -> Deferred:
    from twisted.internet import reactor

    return d.addTimeout(seconds, reactor)
