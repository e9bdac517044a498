"""``Deadline``: one optional timeout that can be armed, re-armed and cancelled.

Every timeout option of nested streams is ``None`` (no deadline) or seconds; this keeps that
choice and the ``IDelayedCall`` bookkeeping in one place, on a clock that tests replace
with ``twisted.internet.task.Clock``. And ``no_delay`` for every connection's transport.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any


class Deadline:
    """Calls ``expired()`` once ``seconds`` pass after the last ``arm()`` (never if None)."""

    __slots__ = ("_call", "clock", "expired", "seconds")

    def __init__(self, clock: Any, seconds: float | None, expired: Callable[[], None]) -> None:
        self.clock = clock
        self.seconds = seconds
        self.expired = expired
        self._call: Any = None

    @property
    def armed(self) -> bool:
        return self._call is not None

    def arm(self) -> None:
        """Start (or restart) the countdown."""
        if self.seconds is None:
            return
        if self._call is not None and self._call.active():
            self._call.reset(self.seconds)
        else:
            self._call = self.clock.callLater(self.seconds, self._fire)

    def cancel(self) -> None:
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _fire(self) -> None:
        self._call = None
        self.expired()


def no_delay(transport: Any) -> None:
    """Turn Nagle off: announcements, attaches and last frames are small, and Nagle would
    hold each for the peer's delayed ACK (Twisted already joins one reactor turn's writes)."""
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        with contextlib.suppress(OSError):
            set_no_delay(True)
