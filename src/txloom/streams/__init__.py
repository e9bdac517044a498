"""Nested streams: post one request, receive many sources, each a flow-controlled stream.

See docs/streams.md. ``StreamServer`` serves a source function; ``StreamClient`` posts to
a service address resolved through an ``IAddressResolver``.
"""

from txloom.streams.balance import choose_endpoint, rendezvous
from txloom.streams.channel import SourceMeta, SourceStream
from txloom.streams.client import RequestStream, StreamClient
from txloom.streams.errors import (
    ConnectionLostEarly,
    NoEndpoint,
    RequestRefused,
    StreamError,
    StreamTimeout,
)
from txloom.streams.resolvers import StaticResolver
from txloom.streams.server import StreamServer
from txloom.streams.source import Source

__all__ = [
    "ConnectionLostEarly",
    "NoEndpoint",
    "RequestRefused",
    "RequestStream",
    "Source",
    "SourceMeta",
    "SourceStream",
    "StaticResolver",
    "StreamClient",
    "StreamError",
    "StreamServer",
    "StreamTimeout",
    "choose_endpoint",
    "rendezvous",
]
