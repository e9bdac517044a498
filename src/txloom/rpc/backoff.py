"""How long an agent waits before it reconnects: exponential backoff with jitter.

Delays grow from ``RECONNECT_INITIAL`` by ``RECONNECT_FACTOR`` per failed attempt up to
``RECONNECT_MAX`` (the spec's 0.5 s to 10 s), and each is shortened by a random part of up
to ``RECONNECT_JITTER`` of itself, so that the agents of a restarted controller do not all
come back in the same instant. The policy has ``ClientService``'s shape (attempt number in,
seconds out), so every client transport reconnects the same way, on an injectable clock.
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = [
    "RECONNECT_FACTOR",
    "RECONNECT_INITIAL",
    "RECONNECT_JITTER",
    "RECONNECT_MAX",
    "reconnect_policy",
]

#: Seconds before the first reconnect attempt (spec default).
RECONNECT_INITIAL = 0.5

#: Longest wait between attempts (spec default).
RECONNECT_MAX = 10.0

#: Each failed attempt multiplies the delay by this.
RECONNECT_FACTOR = 2.0

#: Up to this fraction of each delay is taken off at random.
RECONNECT_JITTER = 0.25


def reconnect_policy(
    initial: float = RECONNECT_INITIAL,
    maximum: float = RECONNECT_MAX,
    factor: float = RECONNECT_FACTOR,
    jitter: float = RECONNECT_JITTER,
    rand: Callable[[], float] = random.random,
) -> Callable[[int], float]:
    """``policy(failures)``: seconds to wait after ``failures`` failed attempts in a row
    (``ClientService`` passes 1 after the first failure)."""
    if initial <= 0 or maximum < initial or factor < 1 or not 0 <= jitter < 1:
        raise ValueError("reconnect: need 0 < initial <= maximum, factor >= 1, 0 <= jitter < 1")

    def policy(attempt: int) -> float:
        try:
            delay = min(maximum, initial * factor ** max(0, attempt - 1))
        except OverflowError:
            delay = maximum
        return delay * (1.0 - jitter * rand())

    return policy
