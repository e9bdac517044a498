"""The errors of the bus, named as Grav names them so that users of both recognise them."""

from __future__ import annotations

__all__ = [
    "BusError",
    "ConnectionClosed",
    "MsgNotWanted",
    "NoReceipt",
    "NodeUUIDMismatch",
    "TransportNotConfigured",
    "WaitTimeout",
]


class BusError(Exception):
    """Base of every error the bus raises."""


class ConnectionClosed(BusError):
    """The pod (or the peer connection) was closed while something waited on it."""


class NodeUUIDMismatch(BusError):
    """A peer answered with a node uuid other than the one discovery announced for it."""


class MsgNotWanted(BusError):
    """Raised (or returned) by a wait function: not the message I wait for, keep waiting."""


class NoReceipt(BusError):
    """``send`` on a disconnected pod: the message was not sent, there is nothing to wait on."""


class TransportNotConfigured(BusError):
    """A mesh operation (dial, withdraw) on a bus that has no mesh transport."""


class WaitTimeout(BusError, TimeoutError):
    """``wait_until`` saw no wanted message within its timeout."""
