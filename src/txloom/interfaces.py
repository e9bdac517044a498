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


class IStorageBackend(Interface):
    """Where the store server keeps facts (``file`` and ``memory`` are txloom's own).

    The server hands a backend each fact twice over: its bytes (the compact JSON that
    replay and push send back verbatim) and its meta (id, store, transaction time). The
    backend owns sequence numbers: 1, 2, ... in commit order, stable across restarts.

    All methods are called on the reactor thread. Replay plans read committed bytes
    synchronously; everything that writes returns a Deferred.
    """

    name = Attribute("Short name for logs and stats, such as 'file' or 'memory'.")
    durable = Attribute("True when committed facts survive a restart of the process.")
    last_seq = Attribute("Sequence number of the newest committed fact (0 when empty).")
    fact_count = Attribute("How many facts a plain replay returns now.")

    def open():  # type: ignore[misc]
        """Recover and load; a Deferred that fires when appends and replays may begin."""

    def close():  # type: ignore[misc]
        """Finish queued writes, make them durable, release files; returns a Deferred."""

    def append(body, meta):  # type: ignore[misc]
        """Queue one fact; a Deferred firing with its sequence number once committed.

        "Committed" follows the backend's durability policy: with fsync ``always`` the
        fact is on stable storage when the Deferred fires. Facts are committed in the
        order ``append`` was called; a failure fails the Deferred with an exception.
        """

    def write_snapshot(facts):  # type: ignore[misc]
        """Replace the snapshot with ``facts`` (pairs of body and meta), atomically.

        A fact whose id the store already holds keeps that fact's sequence number; a new
        one takes the next. Queued behind earlier appends. Deferred fires with the count.
        """

    def compact():  # type: ignore[misc]
        """Fold the log into a compacted file and drop the old segments, atomically.

        Replay answers the same facts before and after. Deferred fires with a dict
        report (facts kept, bytes before and after).
        """

    def plan_replay():  # type: ignore[misc]
        """A ``ReplayPlan`` of every visible fact, by transaction time then arrival."""

    def plan_page(since, stores, limit, budget, scan_limit=None):  # type: ignore[misc]
        """A ``ReplayPlan`` of facts numbered above ``since``, in sequence order.

        ``stores`` (names, or None for all) filters; the page stops after ``limit``
        facts or before ``budget`` bytes; ``plan.next`` is where the next page starts.
        """

    def add_listener(listener):  # type: ignore[misc]
        """Call ``listener(committed)`` with each batch of newly committed facts.

        Each item has ``seq``, ``store`` and ``body``; batches come in sequence order,
        after the facts are visible to replay and before their writers are answered.
        """

    def remove_listener(listener):  # type: ignore[misc]
        """Stop calling ``listener``."""

    def when_idle():  # type: ignore[misc]
        """A Deferred that fires once nothing is queued or being written (for drains)."""


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
