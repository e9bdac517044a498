"""The suite's one way to wait for a condition: poll it, never sleep a fixed time.

``until`` is for tests running on the reactor (``pytest_twisted``); ``until_blocking`` for
tests that drive real processes from plain threads. Both fail with what was awaited once
``timeout`` passes; the timeout is an upper bound for a broken run, not a pace, so it is
generous enough for a machine whose cores are busy with other work.
"""

from __future__ import annotations

import time
from collections.abc import Callable

DEFAULT_TIMEOUT = 20.0


async def until(
    check: Callable[[], object],
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "",
    interval: float = 0.005,
) -> None:
    """Wait on the reactor (checking every ``interval`` s) until ``check()`` is true."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    deadline = reactor.seconds() + timeout
    while not check():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        await deferLater(reactor, interval, lambda: None)


def until_blocking(
    check: Callable[[], object],
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "",
    interval: float = 0.01,
) -> None:
    """Block the calling thread (not the reactor's) until ``check()`` is true."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        time.sleep(interval)
