"""txloom's message bus: pods on an in-process bus, meshed between nodes (Grav-compatible).

    >>> bus = Bus()
    >>> inbox = bus.connect()
    >>> inbox.on_type("greeting", lambda msg: print(msg.data))
    >>> bus.connect().send(Message.new("greeting", b"hello"))

The networking parts live in subpackages that import only when used: ``txloom.bus.mesh``
(WebSocket mesh), ``txloom.bus.discovery`` (static peers, LAN multicast),
``txloom.bus.bridge`` (NATS) and ``txloom.bus.tap`` (the ``twistd busnode`` plugin).
"""

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

__all__ = [
    "DEFAULT_MSG_TYPE",
    "DEFAULT_POD_QUEUE_LIMIT",
    "DEFAULT_REPLAY_SIZE",
    "MAX_FAILURES",
    "WEBSOCKET_MSG_TYPE",
    "Bus",
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
    "Pod",
    "PodStats",
    "SlowPodPolicy",
    "TransportNotConfigured",
    "WaitTimeout",
    "new_uuid",
]
