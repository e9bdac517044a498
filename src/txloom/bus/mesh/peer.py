"""One mesh connection: Autobahn's WebSocket protocol glued to a ``GravSession``.

The protocol classes are thin: frames go into the sans-I/O session, its events go to the
mesh, which makes every decision (accept, refuse, duplicate, relay). What lives here is what
belongs to one socket: the handshake deadline, the withdraw words, and the send window that
keeps a slow peer from buffering without bound.
"""

from __future__ import annotations

import hmac
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from autobahn.exception import Disconnected
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from txloom.bus.mesh.clients import CLIENT_PROTOCOL
from txloom.sendwindow import SendWindow
from txloom.wire.errors import RemoteProtocolError
from txloom.wire.grav import WITHDRAW, WITHDRAW_ACK, Handshake, HandshakeReply
from txloom.wire.grav_session import (
    ForeignFrame,
    GravSession,
    MessageFrame,
    Role,
    SessionState,
    Withdraw,
    WithdrawAck,
)

if TYPE_CHECKING:
    from txloom.bus.mesh.dialer import PeerDialer
    from txloom.bus.mesh.mesh import WebSocketMesh

__all__ = ["MeshClientFactory", "MeshConnection", "MeshServerFactory"]

#: WebSocket close codes used by the mesh. Applications may only send 1000 and 3000-4999;
#: the reason text says more.
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 4002
#: A txloom node closes with this when it stops (after its WITHDRAW): unlike a Grav node
#: that withdrew and stays up, it is worth redialling, since it refuses nothing once back.
CLOSE_NODE_STOPPING = 4001
CLOSE_GOING_AWAY = CLOSE_NODE_STOPPING

#: Header a txloom node adds to its upgrade request, so that the node it dials knows which
#: rule settles a mutual dial (see ``txloom.bus.mesh.mesh``). Grav nodes ignore it.
TXLOOM_HEADER = "X-Txloom-Mesh"


class MeshConnection:
    """What both directions share (mixed in before Autobahn's protocol class)."""

    # Not ``log``: Autobahn's classes use that name for their own (txaio) logger, whose
    # debug chatter would otherwise go to the node's log.
    peer_log = Logger()
    role: Role
    mesh: WebSocketMesh
    dialer: PeerDialer | None = None

    def _mesh_init(self, mesh: WebSocketMesh) -> None:
        self.mesh = mesh
        #: Where this connection's events go: the mesh, or its ``ClientHub`` for a client.
        self.hub: Any = mesh
        self.session = GravSession(
            self.role, mesh.node_uuid, mesh.belongs_to, max_frame_size=mesh.max_message_size
        )
        self.window = SendWindow(self._send_binary, mesh.peer_backlog_limit, self._send_due_pong)
        #: The latest ping not answered while the peer was not reading (see ``onPing``).
        self._pong_due: bytes | None = None
        #: The peer's node uuid once registered with the mesh.
        self.node_uuid: str | None = None
        #: Set when the mesh keeps another connection to the same node instead of this one.
        self.superseded = False
        self.withdraw_acked: Deferred[None] | None = None
        self.closed: Deferred[None] = Deferred()
        self.dropped = 0
        #: Messages sent to, received from, and relayed on from this peer (for metrics).
        self.sent = 0
        self.received = 0
        self.relayed = 0
        #: The peer closed because it stops (not merely withdrew): redial it.
        self.peer_stopped = False
        #: The dialling side is a txloom node (seen on inbound connections only).
        self.peer_speaks_txloom = False
        self._deadline: Any = None
        self._noted_foreign = False
        mesh.connection_made(self)

    # -- identity ----------------------------------------------------------------------------

    @property
    def address(self) -> str:
        try:
            peer = self.transport.getPeer()  # type: ignore[attr-defined]
            return f"{peer.host}:{peer.port}"
        except Exception:
            return "?"

    @property
    def direction(self) -> str:
        return "outbound" if self.role is Role.DIALLER else "inbound"

    @property
    def peer_left_mesh(self) -> bool:
        """The peer withdrew and stays away: not to be redialled until it shows up again."""
        return self.session.peer_withdrawn and not self.peer_stopped

    @property
    def handshaked(self) -> bool:
        return self.session.state is SessionState.OPEN

    def __repr__(self) -> str:
        return f"<MeshConnection {self.direction} {self.address} node={self.node_uuid}>"

    # -- Autobahn callbacks ------------------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[misc]
        # Autobahn sets TCP_NODELAY before it has read its own option, so it never takes
        # effect; without it every small frame waits for Nagle and delayed ACKs (~40 ms).
        with suppress(Exception):
            self.transport.setTcpNoDelay(True)  # type: ignore[attr-defined]
        self.transport.registerProducer(self.window, True)  # type: ignore[attr-defined]

    def onOpen(self) -> None:
        self._deadline = self.mesh.reactor.callLater(
            self.mesh.handshake_timeout, self._handshake_timed_out
        )
        if self.role is Role.DIALLER:
            if self.mesh.as_client and self.websocket_protocol_in_use != CLIENT_PROTOCOL:  # type: ignore[attr-defined]
                # a Grav node (or a txloom node without clients) would take it for a peer
                self.peer_log.error(
                    "{address} does not serve bus clients (a Grav node, or a txloom node "
                    "older than bus clients); closing",
                    address=self.address,
                )
                self.close(CLOSE_NORMAL, "not a client")
                return
            self.sendMessage(self.session.handshake(), isBinary=True)  # type: ignore[attr-defined]

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self.session
        session.receive_data(payload, isBinary)
        try:
            event = session.next_event()
        except RemoteProtocolError as e:  # before the session is open: a bad handshake
            self._cancel_deadline()
            self.peer_log.warn(
                "{direction} mesh connection {address}: bad handshake ({error}); closing",
                direction=self.direction,
                address=self.address,
                error=str(e),
            )
            self.session.closed()
            self.close(CLOSE_PROTOCOL_ERROR, "bad handshake")
            return
        kind = type(event)
        if kind is MessageFrame:
            self.hub.message_from(self, event.fields)  # type: ignore[union-attr]
        elif kind is ForeignFrame:
            self._foreign(event)  # type: ignore[arg-type]
        elif kind is Handshake:
            self._cancel_deadline()
            self.hub.handshake_from(self, event)  # type: ignore[arg-type]
        elif kind is HandshakeReply:
            self._cancel_deadline()
            self.hub.reply_from(self, event)  # type: ignore[arg-type]
        elif kind is Withdraw:
            self._send_text(WITHDRAW_ACK)
            self.hub.peer_withdrew(self)
        elif kind is WithdrawAck:
            acked = self.withdraw_acked
            if acked is not None and not acked.called:
                acked.callback(None)

    def onPing(self, payload: bytes) -> None:
        """Answer a ping, unless the peer is not reading what we write.

        A peer that sends pings and never reads would otherwise make us buffer a pong per
        ping without bound. While the socket is full only the latest ping is remembered,
        and answered once the peer has read the rest (RFC 6455 5.5.3 allows answering only
        the most recent ping), so a ping flood costs one pong's worth of memory.
        """
        if self.window.paused:
            self._pong_due = payload
            return
        super().onPing(payload)  # type: ignore[misc]

    def _send_due_pong(self) -> None:
        payload, self._pong_due = self._pong_due, None
        if payload is not None and self.state == self.STATE_OPEN:  # type: ignore[attr-defined]
            self.sendPong(payload)  # type: ignore[attr-defined]

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._cancel_deadline()
        self.session.closed()
        why = reason or getattr(self, "wasNotCleanReason", None) or f"close code {code}"
        if getattr(self, "remoteCloseCode", None) == CLOSE_NODE_STOPPING:
            self.peer_stopped = True
        self.hub.connection_lost(self, str(why))
        if self.withdraw_acked is not None and not self.withdraw_acked.called:
            self.withdraw_acked.callback(None)
        if not self.closed.called:
            self.closed.callback(None)

    # -- sending -----------------------------------------------------------------------------

    def send_payload(self, payload: bytes) -> None:
        """One message frame; dropped (and counted) while the peer is over its backlog."""
        if not self.window.offer(payload):
            self.dropped += 1
            self.hub.dropped_for(self)

    def _send_binary(self, payload: bytes) -> None:
        with suppress(Disconnected):
            self.sendMessage(payload, isBinary=True)  # type: ignore[attr-defined]

    def _send_text(self, words: bytes) -> None:
        with suppress(Disconnected):
            self.sendMessage(words, isBinary=False)  # type: ignore[attr-defined]

    def send_withdraw(self) -> Deferred[None]:
        """Send WITHDRAW; the Deferred fires on WITHDRAW ACK or when the connection ends."""
        self.withdraw_acked = Deferred()
        self._send_text(WITHDRAW)
        return self.withdraw_acked

    def send_reply(self, data: bytes) -> None:
        with suppress(Disconnected):
            self.sendMessage(data, isBinary=True)  # type: ignore[attr-defined]

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        try:
            self.sendClose(code, reason[:120] or None)  # type: ignore[attr-defined]
        except Exception as e:
            self.peer_log.warn(
                "cannot close {conn} cleanly ({error}); dropping it", conn=self, error=e
            )
            self.dropConnection(abort=True)  # type: ignore[attr-defined]

    # -- flow control for the bus (the mesh pauses reading while the bus is paused) ------------

    def pause_reading(self) -> None:
        self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resume_reading(self) -> None:
        self.transport.resumeProducing()  # type: ignore[attr-defined]

    # -- internals ---------------------------------------------------------------------------

    def _foreign(self, event: ForeignFrame) -> None:
        if not self._noted_foreign:
            self._noted_foreign = True
            self.peer_log.info(
                "peer {node} ({address}) sent a frame that is not a message ({reason}); "
                "delivering it as websocket.message (noted once per connection)",
                node=self.node_uuid,
                address=self.address,
                reason=event.reason,
            )
        self.hub.foreign_from(self, event.data)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _handshake_timed_out(self) -> None:
        self._deadline = None
        if self.handshaked:
            return
        self.peer_log.warn(
            "{direction} mesh connection {address}: no Grav handshake within {timeout}s; closing",
            direction=self.direction,
            address=self.address,
            timeout=self.mesh.handshake_timeout,
        )
        self.session.closed()
        self.close(CLOSE_PROTOCOL_ERROR, "handshake timeout")
        # a peer that ignores the close frame is dropped by Autobahn's close timeout


class MeshServerProtocol(MeshConnection, WebSocketServerProtocol):
    role = Role.LISTENER

    def connectionMade(self) -> None:
        self._mesh_init(self.factory.mesh)  # type: ignore[attr-defined]
        super().connectionMade()

    def onConnect(self, request: ConnectionRequest) -> str | None:
        mesh = self.mesh
        if request.path != mesh.path:
            raise ConnectionDeny(ConnectionDeny.NOT_FOUND, f"the mesh is at {mesh.path}")
        if mesh.token is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {mesh.token}".encode()):
                self.peer_log.warn(
                    "refused mesh connection from {address}: missing or wrong token",
                    address=self.address,
                )
                raise ConnectionDeny(401, "a valid mesh token is required")
        if mesh.withdrawn:
            raise ConnectionDeny(503, "this node has withdrawn from the mesh")
        self.peer_speaks_txloom = TXLOOM_HEADER.lower() in request.headers
        if CLIENT_PROTOCOL in request.protocols and mesh.clients is not None:
            self.hub = mesh.clients
            self.window.limit = mesh.clients.backlog_limit
            return CLIENT_PROTOCOL  # type: ignore[return-value]
        return None


class MeshClientProtocol(MeshConnection, WebSocketClientProtocol):
    role = Role.DIALLER

    def connectionMade(self) -> None:
        self._mesh_init(self.factory.mesh)  # type: ignore[attr-defined]
        self.dialer = self.factory.dialer  # type: ignore[attr-defined]
        super().connectionMade()


class _PreciseCall:
    __slots__ = ("_call",)

    def __init__(self, call: Any) -> None:
        self._call = call

    def cancel(self) -> None:
        if self._call.active():
            self._call.cancel()


class PreciseTimer:
    """Stands in for Autobahn's batched timer, which rounds every deadline down to a whole
    second (so a 0.5 s handshake timeout can fire at once, and a 2 s close timeout after 1
    s). Mesh connections are few; exact timers cost nothing here."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def call_later(self, delay: float, func: Any, *args: Any, **kwargs: Any) -> _PreciseCall:
        return _PreciseCall(self.reactor.callLater(delay, func, *args, **kwargs))


def _options(mesh: WebSocketMesh) -> dict[str, Any]:
    return {
        "maxFramePayloadSize": mesh.max_message_size,
        "maxMessagePayloadSize": mesh.max_message_size,
        "openHandshakeTimeout": mesh.handshake_timeout,
        "closeHandshakeTimeout": mesh.close_timeout,
        "autoPingInterval": mesh.keepalive,
        "autoPingTimeout": mesh.keepalive / 2 if mesh.keepalive else 0,
        "tcpNoDelay": True,
    }


class MeshServerFactory(WebSocketServerFactory):
    protocol = MeshServerProtocol
    noisy = False

    def __init__(self, mesh: WebSocketMesh) -> None:
        super().__init__()
        self.mesh = mesh
        self._batched_timer = PreciseTimer(mesh.reactor)
        self.setProtocolOptions(webStatus=False, **_options(mesh))


class MeshClientFactory(WebSocketClientFactory):
    protocol = MeshClientProtocol
    noisy = False

    def __init__(self, mesh: WebSocketMesh, dialer: PeerDialer) -> None:
        headers = {} if mesh.as_client else {TXLOOM_HEADER: "1"}
        if mesh.token:
            headers["Authorization"] = f"Bearer {mesh.token}"
        protocols = [CLIENT_PROTOCOL] if mesh.as_client else None
        super().__init__(url=dialer.url.url, headers=headers, protocols=protocols)
        self.mesh = mesh
        self.dialer = dialer
        self._batched_timer = PreciseTimer(mesh.reactor)
        self.setProtocolOptions(**_options(mesh))
