"""Knowing that the NATS server has processed what a nats-py client sent.

NATS answers a PING only after it has processed everything the connection sent before it:
publications are routed to the subscriptions that exist at that moment, and subscriptions
are in place for whatever any connection publishes next. A PING/PONG round trip is
therefore the protocol's acknowledgement, and the only one core NATS has.

nats-py's ``flush()`` is meant to be that round trip, but it writes its PING straight to the
socket, while ``publish()`` and ``subscribe()`` leave their commands in the client's pending
buffer for a flusher task that writes them on a later turn of the event loop. The PING
overtakes them, and its PONG says nothing about them: a subscriber that "flushed" after
subscribing may not be subscribed yet, and a publisher that "flushed" may have had nothing
processed (nats-server's trace shows ``PING`` before the ``SUB`` it was meant to follow, on
every call). ``fence`` lets that buffer reach the socket before the PING goes out.
"""

from __future__ import annotations

import asyncio
from typing import Any

import nats.errors

__all__ = ["FenceFailed", "LinkDown", "NoAnswer", "fence", "round_trip", "written"]

#: Turns of the event loop ``fence`` yields for nats-py's flusher before it starts waiting a
#: millisecond between looks (the flusher needs one or two turns, unless the socket is full).
_EAGER_TURNS = 8


class FenceFailed(Exception):
    """The server did not confirm; what was sent may or may not have been processed."""


class LinkDown(FenceFailed):
    """The client is not connected (it lost the connection, or is reconnecting)."""


class NoAnswer(FenceFailed):
    """No PONG within the timeout, though the client still believes it is connected."""


async def written(nc: Any, timeout: float) -> None:
    """Return once nats-py has written to the socket every command it was given before.

    Raises ``LinkDown`` if the client is not connected, ``NoAnswer`` after ``timeout``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    turns = 0
    # nats-py counts bytes waiting for its flusher here; it is zero once they are written
    while nc.pending_data_size:
        if not nc.is_connected:
            raise LinkDown("not connected to NATS")
        if loop.time() >= deadline:
            raise NoAnswer(f"nats-py did not write its buffer within {timeout}s")
        turns += 1
        await asyncio.sleep(0 if turns <= _EAGER_TURNS else 0.001)
    if not nc.is_connected:
        raise LinkDown("not connected to NATS")


async def round_trip(nc: Any, timeout: float) -> None:
    """PING, and return at the PONG: the server has processed what was *written* before.

    A PONG that comes after ``NoAnswer`` would find nats-py's waiter cancelled and stop its
    reader; a caller that gets ``NoAnswer`` should treat the connection as broken
    (``nc.force_reconnect()``).
    """
    if not nc.is_connected:
        raise LinkDown("not connected to NATS")
    try:
        await nc.flush(timeout=max(timeout, 0.001))
    except nats.errors.FlushTimeoutError:
        raise NoAnswer(f"no PONG from NATS within {timeout}s") from None
    except nats.errors.ConnectionClosedError:
        raise LinkDown("the NATS connection is closed") from None


async def fence(nc: Any, timeout: float) -> None:
    """Return once the server has processed every command ``nc`` was given before the call.

    Raises ``LinkDown`` if the client is not connected, ``NoAnswer`` after ``timeout``
    seconds without the server's answer (see ``round_trip``).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    await written(nc, timeout)
    # no await between the check in written() and the PING: nothing can slip in between
    await round_trip(nc, deadline - loop.time())
