"""Every extension point of txloom, in one place.

Each interface states a contract that txloom's own implementations meet and that a user's
implementation must meet to be plugged in instead: storage backends for the store server,
transports and discovery for the bus, transports for reverse RPC, address resolvers and
source services for nested streams. Implementations declare themselves with
``@implementer`` and are checked with ``zope.interface.verify`` in the tests.

Methods that may wait on I/O return a ``Deferred`` (or are ``async def`` and wrapped with
``Deferred.fromCoroutine`` by the caller); that is written in each docstring.

The file is divided into one section per capability.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

# =============================================================================================
# Shared
# =============================================================================================


class IRunnable(Interface):
    """Something with a lifetime that a service starts and stops (a transport, a bridge)."""

    def start():  # type: ignore[misc]
        """Begin work; returns a Deferred that fires when ready (or fails with the reason)."""

    def stop():  # type: ignore[misc]
        """Stop work and release resources; returns a Deferred that fires when done.

        Calling ``stop`` twice, or before ``start`` finished, is allowed.
        """


# =============================================================================================
# Store server (txloom.store)
# =============================================================================================


# =============================================================================================
# Worker host (txloom.worker)
# =============================================================================================


# =============================================================================================
# Reverse RPC (txloom.rpc) -- see docs/rpc.md once built
# =============================================================================================


class IRPCPeer(Interface):
    """The server's handle on one connected client, whatever transport carries it.

    The client registry and the dispatcher see only this; a transport (stream, heartbeat
    polling, long-poll) creates one per client session and feeds it the client's messages.
    """

    name = Attribute("The name the client gave in its hello (unique among connected clients).")

    def send_request(request_id, type_name, timeout_ms, payload):  # type: ignore[misc]
        """Queue ``{"request": {...}}`` for the client; never blocks, bounded per client."""

    def send_cancel(request_id):  # type: ignore[misc]
        """Queue ``{"cancel": request_id}`` for the client."""

    def close(reason):  # type: ignore[misc]
        """Drop the client (replaced by a newer connection, or shut down)."""


class IRPCServerTransport(IRunnable):
    """Accepts clients and reports their hellos and responses to a client registry."""


class IRPCClientTransport(IRunnable):
    """Carries a client's hello and responses up and the server's requests down."""


# =============================================================================================
# Nested streams (txloom.streams) -- see docs/streams.md once built
# =============================================================================================


class IAddressResolver(Interface):
    """Turns a service address (vAddr) into the endpoints that serve it.

    Implementations: a static map, the worker host's Locator, the bus.
    """

    def resolve(address):  # type: ignore[misc]
        """Return a Deferred firing with a list of client endpoint strings (may be empty)."""


# =============================================================================================
# Bus node (txloom.bus)
# =============================================================================================
