"""A connection's bounded send queue, driven by the transport's flow control.

Shared by every protocol that must not let one slow peer buffer without bound: the bus
mesh and the reverse-RPC stream transport.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

__all__ = ["SendWindow"]


@implementer(IPushProducer)
class SendWindow:
    """What a connection may still write, and what waits while it may not.

    Registered as the transport's streaming producer: Twisted pauses it as soon as more than
    its buffer size waits to be written, and resumes it once everything went out. While
    paused, frames wait here in order (so the transport buffers at most about one buffer
    size); past ``limit`` waiting bytes ``offer`` refuses new frames and the owner decides
    (the mesh drops and counts them, reverse RPC closes the peer), so that a slow peer
    costs bounded memory and never holds up the others. ``resumed`` (optional) is called
    once everything queued went out and sending may go on.
    """

    __slots__ = ("_resumed", "_send", "limit", "paused", "queue", "queued_bytes")

    def __init__(self, send: Any, limit: int, resumed: Any = None) -> None:
        self._send = send
        self._resumed = resumed
        self.limit = limit
        self.paused = False
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0

    def offer(self, payload: bytes) -> bool:
        """Send now, or queue; False if it had to be dropped."""
        if not self.paused and not self.queue:
            self._send(payload)
            return True
        if self.queued_bytes + len(payload) > self.limit:
            return False
        self.queue.append(payload)
        self.queued_bytes += len(payload)
        return True

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        queue = self.queue
        while queue and not self.paused:  # sending may pause us again at once
            payload = queue.popleft()
            self.queued_bytes -= len(payload)
            self._send(payload)
        if not self.paused and self._resumed is not None:
            self._resumed()

    def stopProducing(self) -> None:
        self.paused = True
        self.queue.clear()
        self.queued_bytes = 0
