"""Small helpers shared by the bus tests."""

from __future__ import annotations

from twisted.internet.task import Clock

from txloom.bus import Bus


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
