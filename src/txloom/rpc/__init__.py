"""Reverse RPC: a controller calls functions on the agents connected to it.

::

    controller: [transport] <-> Clients    <- callers (call / call_all / list)
    agent:      [transport] <-> Dispatcher -> HandlerRegistry -> handlers

Transports only move the four messages of ``txloom.wire.rpc``; ``Clients`` and
``Dispatcher`` hold every rule of a call, so they behave the same on every transport.
See docs/rpc.md.
"""

from txloom.rpc.clients import (
    DEFAULT_MAX_PENDING,
    DEFAULT_TIMEOUT,
    AgentInfo,
    AgentJoined,
    AgentLeft,
    Clients,
)
from txloom.rpc.codecs import Raw, rpc_type, type_name_of
from txloom.rpc.dispatcher import Dispatcher
from txloom.rpc.errors import (
    Cancelled,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    NotFound,
    RPCError,
    Unauthenticated,
    Unavailable,
)
from txloom.rpc.handlers import HandlerRegistry

__all__ = [
    "DEFAULT_MAX_PENDING",
    "DEFAULT_TIMEOUT",
    "AgentInfo",
    "AgentJoined",
    "AgentLeft",
    "Cancelled",
    "Clients",
    "DeadlineExceeded",
    "Dispatcher",
    "HandlerRegistry",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "RPCError",
    "Raw",
    "Unauthenticated",
    "Unavailable",
    "rpc_type",
    "type_name_of",
]
