"""txloom's message bus: pods on an in-process bus, meshed between nodes (Grav-compatible).

    >>> bus = Bus()
    >>> inbox = bus.connect()
    >>> inbox.on_type("greeting", lambda msg: print(msg.data))
    >>> bus.connect().send(Message.new("greeting", b"hello"))

A script attaches to a running node as a client with ``connect("ws://HOST:PORT/PATH")``
(``txloom.bus.client``; ``txloom.bus.aio.connect`` for asyncio code).

The networking parts live in subpackages that import only when used: ``txloom.bus.mesh``
(WebSocket mesh), ``txloom.bus.discovery`` (static peers, LAN multicast),
``txloom.bus.bridge`` (NATS) and ``txloom.bus.tap`` (the ``twistd busnode`` plugin).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from txloom.bus.buffer import DEFAULT_REPLAY_SIZE, MsgBuffer
from txloom.bus.bus import (
    DEFAULT_POD_QUEUE_LIMIT,
    MAX_FAILURES,
    Bus,
    BusStats,
    SlowPodPolicy,
)
from txloom.bus.errors import (
    BusError,
    ConnectionClosed,
    MsgNotWanted,
    NodeUUIDMismatch,
    NoReceipt,
    TransportNotConfigured,
    WaitTimeout,
)
from txloom.bus.filter import MessageFilter
from txloom.bus.message import DEFAULT_MSG_TYPE, WEBSOCKET_MSG_TYPE, Message, new_uuid
from txloom.bus.pod import Pod, PodStats
from txloom.bus.receipt import MsgReceipt

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from txloom.bus.client import BusClient


def connect(url: str, **options: Any) -> Deferred[BusClient]:
    """Attach to a running node as a client: ``txloom.bus.client.connect`` (imported on
    first use, so that ``import txloom.bus`` stays free of the WebSocket stack)."""
    from txloom.bus.client import connect as connect_client  # noqa: PLC0415

    return connect_client(url, **options)


def __getattr__(name: str) -> Any:
    if name in ("BusClient", "NodeUnreachable"):
        from txloom.bus import client  # noqa: PLC0415

        return getattr(client, name)
    raise AttributeError(f"module 'txloom.bus' has no attribute {name!r}")


__all__ = [
    "DEFAULT_MSG_TYPE",
    "DEFAULT_POD_QUEUE_LIMIT",
    "DEFAULT_REPLAY_SIZE",
    "MAX_FAILURES",
    "WEBSOCKET_MSG_TYPE",
    "Bus",
    "BusClient",
    "BusError",
    "BusStats",
    "ConnectionClosed",
    "Message",
    "MessageFilter",
    "MsgBuffer",
    "MsgNotWanted",
    "MsgReceipt",
    "NoReceipt",
    "NodeUUIDMismatch",
    "NodeUnreachable",
    "Pod",
    "PodStats",
    "SlowPodPolicy",
    "TransportNotConfigured",
    "WaitTimeout",
    "connect",
    "new_uuid",
]
