"""Keeping a configured or discovered peer connected: dial, and redial with backoff.

Grav dials a peer once and forgets it when the connection drops; a dialer here keeps
trying with exponential backoff (with jitter, so that a restarted mesh does not redial in
lockstep) until it is stopped. A dialer whose node is already connected the other way
round *parks*: it makes no attempts until that connection ends, so two nodes that list
each other as peers settle on one connection instead of fighting. A peer that said WITHDRAW
left the mesh on purpose: its dialer waits, making no attempts, until discovery announces
the peer again or the peer dials in.
"""

from __future__ import annotations

import enum
import random
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.logger import Logger
from twisted.python.failure import Failure

from txloom.bus.mesh.urls import PeerURL

if TYPE_CHECKING:
    from txloom.bus.mesh.mesh import WebSocketMesh
    from txloom.bus.mesh.peer import MeshConnection

__all__ = [
    "BACKOFF_FACTOR",
    "CONNECT_TIMEOUT",
    "DISCOVERED_GIVE_UP",
    "DialerState",
    "PeerDialer",
]

#: Each failed attempt multiplies the delay by this (up to the mesh's ``reconnect_max``).
BACKOFF_FACTOR = 2.0

#: Seconds a TCP (or TLS) connection attempt may take.
CONNECT_TIMEOUT = 10.0

#: A peer found by discovery that fails this many attempts in a row is forgotten (its
#: dialer stops); if it is still there, its next announcement brings it back. Configured
#: peers are never given up.
DISCOVERED_GIVE_UP = 8


class DialerState(enum.Enum):
    IDLE = "idle"  # made, not started
    CONNECTING = "connecting"  # an attempt is under way
    CONNECTED = "connected"  # its connection is the node's link to the peer
    WAITING = "waiting"  # the next attempt is scheduled
    PARKED = "parked"  # the peer is linked through another connection
    WITHDRAWN = "withdrawn"  # the peer left the mesh; wait for discovery or its dial
    STOPPED = "stopped"


_IDLE_STATES = (DialerState.STOPPED, DialerState.PARKED, DialerState.WITHDRAWN)


class PeerDialer:
    """Keeps one peer URL connected for its mesh."""

    log = Logger()

    def __init__(self, mesh: WebSocketMesh, url: PeerURL, node_uuid: str | None = None) -> None:
        self.mesh = mesh
        self.url = url
        #: The node discovery announced at the URL; a different node there is not dialled.
        self.expected_uuid = node_uuid
        #: The node at the URL, as last learned from its handshake.
        self.node_uuid = node_uuid
        self.state = DialerState.IDLE
        self.failures = 0
        self.connection: MeshConnection | None = None
        self._retry: Any = None
        self._attempt_d: Deferred[Any] | None = None
        self._first: list[Deferred[str]] = []

    def __repr__(self) -> str:
        return f"<PeerDialer {self.url} {self.state} node={self.node_uuid}>"

    # -- control -----------------------------------------------------------------------------

    def start(self) -> None:
        if self.state is DialerState.IDLE:
            self._attempt()

    def stop(self) -> None:
        self.state = DialerState.STOPPED
        self._cancel_retry()
        if self._attempt_d is not None:
            self._attempt_d.cancel()
        for d in self._drain_first():
            d.cancel()

    def when_connected(self) -> Deferred[str]:
        """Fires with the node uuid the next time this dialer's handshake succeeds."""
        d: Deferred[str] = Deferred()
        if self.state is DialerState.CONNECTED and self.node_uuid is not None:
            d.callback(self.node_uuid)
        else:
            self._first.append(d)
        return d

    def park(self, node_uuid: str) -> None:
        """``node_uuid`` is connected through another connection: wait for it to end."""
        self.node_uuid = node_uuid
        self._cancel_retry()
        if self.state is not DialerState.STOPPED:
            self.state = DialerState.PARKED
            self.failures = 0
            self.mesh.park(node_uuid, self)
            for d in self._drain_first():
                d.callback(node_uuid)

    def unpark(self) -> None:
        """The other connection ended: dial again soon."""
        if self.state is DialerState.PARKED:
            self._schedule(self._delay(0))

    def peer_withdrew(self) -> None:
        """The peer left the mesh: make no attempts until ``revive`` or ``park``."""
        if self.state is not DialerState.STOPPED:
            self._cancel_retry()
            self.state = DialerState.WITHDRAWN
            self.log.info(
                "peer {node} at {url} withdrew; not redialling it until it is announced "
                "again or dials in",
                node=self.node_uuid,
                url=str(self.url),
            )

    def revive(self) -> None:
        """Discovery announced the withdrawn peer again: dial it now."""
        if self.state is DialerState.WITHDRAWN:
            self.failures = 0
            self.state = DialerState.WAITING
            self._attempt()

    # -- events from the connection ----------------------------------------------------------

    def opened(self, conn: MeshConnection, node_uuid: str) -> None:
        self.node_uuid = node_uuid
        self.connection = conn
        self.state = DialerState.CONNECTED
        self.failures = 0
        for d in self._drain_first():
            d.callback(node_uuid)

    def lost(self, conn: MeshConnection, reason: str) -> None:
        if conn is self.connection:
            self.connection = None
        if self.state in _IDLE_STATES:
            return
        if conn.peer_left_mesh:
            self.peer_withdrew()
            return
        if self.state is DialerState.CONNECTED:
            self.log.info(
                "lost peer {node} at {url} ({reason}); redialling",
                node=self.node_uuid,
                url=str(self.url),
                reason=reason,
            )
            self._schedule(self._delay(0))
            return
        self._failed(reason)

    # -- internals ---------------------------------------------------------------------------

    def _attempt(self) -> None:
        self._retry = None
        if self.state in _IDLE_STATES:
            return
        self.state = DialerState.CONNECTING
        mesh = self.mesh
        endpoint = clientFromString(
            mesh.reactor, self.url.endpoint(CONNECT_TIMEOUT, mesh.tls_trust_roots)
        )
        d = endpoint.connect(mesh.client_factory(self))
        self._attempt_d = d
        d.addCallbacks(self._tcp_connected, self._tcp_failed)

    def _tcp_connected(self, conn: MeshConnection) -> None:
        self._attempt_d = None
        self.connection = conn

    def _tcp_failed(self, failure: Failure) -> None:
        self._attempt_d = None
        if self.state is DialerState.STOPPED:
            return
        self._failed(failure.getErrorMessage())

    def _failed(self, reason: str) -> None:
        self.failures += 1
        if self.expected_uuid is not None and self.failures >= DISCOVERED_GIVE_UP:
            self.log.info(
                "giving up on discovered peer {node} at {url} after {n} failed attempts "
                "({reason}); it is dialled again if it announces itself",
                node=self.expected_uuid,
                url=str(self.url),
                n=self.failures,
                reason=reason,
            )
            self.stop()
            return
        delay = self._delay(self.failures)
        if self.failures & (self.failures - 1) == 0:  # 1, 2, 4, ...: visible, never a flood
            self.log.warn(
                "cannot connect to peer {url} ({reason}); attempt {attempt}, retrying in "
                "{delay:.1f}s",
                url=str(self.url),
                reason=reason,
                attempt=self.failures,
                delay=delay,
            )
        self._schedule(delay)

    def _delay(self, failures: int) -> float:
        mesh = self.mesh
        base = min(
            mesh.reconnect_max, mesh.reconnect_initial * BACKOFF_FACTOR ** max(0, failures - 1)
        )
        return base * (0.75 + random.random() / 2)

    def _schedule(self, delay: float) -> None:
        self._cancel_retry()
        if self.state is DialerState.STOPPED:
            return
        self.state = DialerState.WAITING
        self._retry = self.mesh.reactor.callLater(delay, self._attempt)

    def _cancel_retry(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    def _drain_first(self) -> list[Deferred[str]]:
        waiting, self._first = self._first, []
        return waiting
