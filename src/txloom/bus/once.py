"""Stopping things once, however many callers ask (the bus, the mesh)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet.defer import Deferred

__all__ = ["Once"]


class Once:
    """Runs ``work`` (a coroutine function that does not fail) on the first call only;
    every call gets its own Deferred that fires when that single run has finished."""

    __slots__ = ("_run", "_work")

    def __init__(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._work = work
        self._run: Deferred[None] | None = None

    @property
    def started(self) -> bool:
        return self._run is not None

    def __call__(self) -> Deferred[None]:
        if self._run is None:
            self._run = Deferred.fromCoroutine(self._work())
        d: Deferred[None] = Deferred()
        self._run.addCallback(lambda _: d.callback(None))
        return d
