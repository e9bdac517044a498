"""Many deadlines on one timer.

A call on the controller and a request on the agent each have a deadline, and nearly all
of them are met. A timer per deadline costs more than the rest of a call on the asyncio
reactor (each ``callLater`` and each ``cancel`` reschedules the loop's own timer), so
deadlines go on a heap instead: adding one is a heap push, and the single timer moves only
when a deadline comes earlier than the one it waits for. A deadline is never cancelled;
when it comes, its function checks whether the work is still pending (and does nothing if
not). The clock is injectable, so tests drive deadlines with ``task.Clock``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

__all__ = ["Deadlines"]


class Deadlines:
    """Call ``fn(*args)`` at ``when`` on ``clock`` (see the module doc)."""

    __slots__ = ("_heap", "_seq", "_timer", "clock")

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = 0
        self._timer: Any = None

    def __len__(self) -> int:
        return len(self._heap)

    def at(self, when: float, fn: Callable[..., Any], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, fn, args))
        timer = self._timer
        if timer is None or not timer.active():
            self._timer = self.clock.callLater(max(0.0, when - self.clock.seconds()), self._due)
        elif when < timer.getTime():
            timer.reset(max(0.0, when - self.clock.seconds()))

    def after(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        self.at(self.clock.seconds() + delay, fn, *args)

    def _due(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, fn, args = heapq.heappop(heap)
            fn(*args)
        if heap and self._timer is None:
            self._timer = self.clock.callLater(max(0.0, heap[0][0] - now), self._due)

    def clear(self) -> None:
        self._heap.clear()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
