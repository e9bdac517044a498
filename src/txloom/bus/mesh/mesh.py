"""The WebSocket mesh: this node's peers, and every message between them and the bus.

The mesh is a pod on the bus. Whatever the bus delivers to it (messages from local pods, or
from a bridge) it writes to every peer, encoded once. Whatever a peer sends goes to the bus
through that pod, so the self-filter keeps it from going straight back out (Grav does not
relay). With relay switched on, a peer's message is also forwarded to the other peers
with its hop count raised, so a partial mesh still reaches every node; every node drops
a uuid it has already seen, which makes delivery exactly once per node even when a
message arrives by two paths.

Connections are unique per node, and a connection that completed its handshake is never
dropped for a newcomer: a second connection from a node already connected is refused (as a
Grav node refuses it), and a dial answered by a node already connected the other way round
is closed. The one case that needs a rule is two nodes dialling each other at once, when
each has accepted the other's dial before its own was answered. A Grav node then keeps the
connection it accepted and closes its own dial, so txloom keeps its own dial to match; two
txloom nodes (they recognise each other by a header on the upgrade request) both keep the
connection dialled by the node with the smaller uuid. Either way both sides keep the same
connection without talking about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from txloom.bus.errors import NodeUUIDMismatch
from txloom.bus.mesh.clients import CLIENT_BACKLOG_LIMIT, ClientHub, SlowClientPolicy
from txloom.bus.mesh.dialer import DialerState, PeerDialer
from txloom.bus.mesh.peer import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    MeshClientFactory,
    MeshConnection,
    MeshServerFactory,
)
from txloom.bus.mesh.urls import DEFAULT_PATH, PeerURL
from txloom.bus.message import Message, new_uuid
from txloom.bus.once import Once
from txloom.bus.seen import DEFAULT_SEEN_CAPACITY, SeenSet
from txloom.interfaces import IMeshHub, IMeshTransport
from txloom.wire.grav import MAX_HOPS, Handshake, HandshakeReply, MessageFields, encode_message
from txloom.wire.grav import groups_match as _groups_match

if TYPE_CHECKING:
    from txloom.bus.bus import Bus

__all__ = [
    "CLOSE_TIMEOUT",
    "DEFAULT_HOP_LIMIT",
    "HANDSHAKE_TIMEOUT",
    "KEEPALIVE_INTERVAL",
    "MAX_MESSAGE_SIZE",
    "PEER_BACKLOG_LIMIT",
    "RECONNECT_INITIAL",
    "RECONNECT_MAX",
    "WITHDRAW_TIMEOUT",
    "MeshStats",
    "PeerInfo",
    "WebSocketMesh",
]

#: Seconds a new connection has to finish the WebSocket upgrade and the Grav handshake.
HANDSHAKE_TIMEOUT = 10.0
#: Seconds between WebSocket pings on an idle connection (0 disables them); a peer that
#: does not answer within half of it is dropped.
KEEPALIVE_INTERVAL = 30.0
#: Seconds to wait for a peer's close frame before dropping the TCP connection.
CLOSE_TIMEOUT = 2.0
#: Largest WebSocket message accepted from a peer (a larger one fails the connection).
MAX_MESSAGE_SIZE = 16 * 1024 * 1024
#: Bytes a peer may fall behind while its socket is full before its copies are dropped.
PEER_BACKLOG_LIMIT = 16 * 1024 * 1024
#: First redial delay in seconds, and the most it grows to.
RECONNECT_INITIAL = 0.5
RECONNECT_MAX = 30.0
#: Seconds ``withdraw`` waits for every peer's WITHDRAW ACK.
WITHDRAW_TIMEOUT = 2.0
#: Links a relayed message may cross (only with relay on).
DEFAULT_HOP_LIMIT = 8


@dataclass(frozen=True, slots=True)
class PeerInfo:
    node_uuid: str
    direction: str
    address: str
    belongs_to: str
    withdrawn: bool


class MeshStats:
    """Mesh counters, for logs, status replies and tests."""

    __slots__ = ("dropped", "duplicates", "foreign", "received", "relayed", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self.duplicates = 0
        self.relayed = 0
        self.foreign = 0
        self.dropped = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


@implementer(IMeshTransport, IMeshHub, IPushProducer)
class WebSocketMesh:
    """Grav-compatible mesh transport over Autobahn's Twisted WebSocket."""

    log = Logger()

    def __init__(
        self,
        bus: Bus,
        *,
        listen: str | None = "tcp:8081:interface=127.0.0.1",
        path: str = DEFAULT_PATH,
        node_uuid: str | None = None,
        belongs_to: str = "*",
        token: str | None = None,
        relay: bool = False,
        hop_limit: int = DEFAULT_HOP_LIMIT,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        keepalive: float = KEEPALIVE_INTERVAL,
        close_timeout: float = CLOSE_TIMEOUT,
        max_message_size: int = MAX_MESSAGE_SIZE,
        peer_backlog_limit: int = PEER_BACKLOG_LIMIT,
        reconnect_initial: float = RECONNECT_INITIAL,
        reconnect_max: float = RECONNECT_MAX,
        withdraw_timeout: float = WITHDRAW_TIMEOUT,
        tls_trust_roots: str | None = None,
        seen_capacity: int = DEFAULT_SEEN_CAPACITY,
        client_backlog_limit: int = CLIENT_BACKLOG_LIMIT,
        slow_client_policy: SlowClientPolicy | str = SlowClientPolicy.DROP,
        as_client: bool = False,
        reactor: IReactorTime | None = None,
    ) -> None:
        if not path.startswith("/"):
            raise ValueError(f"mesh path {path!r} must start with /")
        if not keepalive >= 0:
            raise ValueError("keepalive must be 0 (no pings) or positive")
        if not 1 <= hop_limit <= MAX_HOPS:
            raise ValueError(f"hop limit must be within 1..{MAX_HOPS}")
        self.bus = bus
        self.reactor: Any = reactor if reactor is not None else bus.reactor
        self.listen = listen
        self.path = path
        self.node_uuid = node_uuid or new_uuid()
        self.belongs_to = belongs_to
        self.token = token
        self.relay = relay
        self.hop_limit = hop_limit
        self.handshake_timeout = handshake_timeout
        self.keepalive = keepalive
        self.close_timeout = close_timeout
        self.max_message_size = max_message_size
        self.peer_backlog_limit = peer_backlog_limit
        self.reconnect_initial = reconnect_initial
        self.reconnect_max = reconnect_max
        self.withdraw_timeout = withdraw_timeout
        self.tls_trust_roots = tls_trust_roots
        #: This mesh is a bus client's link to one node (``txloom.bus.client``), not a node.
        self.as_client = as_client
        #: The scripts attached to this node (``None`` for a client's own link).
        self.clients = (
            None
            if as_client
            else ClientHub(
                self, backlog_limit=client_backlog_limit, slow_client_policy=slow_client_policy
            )
        )
        self.stats = MeshStats()
        self.withdrawn = False
        #: The listening port once started (``None`` without ``listen``).
        self.port: Any = None
        self._peers: dict[str, MeshConnection] = {}
        self._connections: set[MeshConnection] = set()
        self._targets: tuple[MeshConnection, ...] = ()
        self._dialers: dict[str, PeerDialer] = {}
        self._parked: dict[str, list[PeerDialer]] = {}
        self._watchers: list[tuple[int, Deferred[None]]] = []
        self._seen = SeenSet(seen_capacity)
        self._reading_paused = False
        self._stop_once = Once(self._stop)
        self._pod = bus.connect()
        self._pod.on(self._from_bus)
        self._post = bus.post
        bus.attach(self, mesh=True)
        bus.register_producer(self)

    # =========================================================================================
    # Lifetime
    # =========================================================================================

    def start(self) -> Deferred[None]:
        """Listen (if configured); fires once the port is bound."""
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        if self.listen is None:
            return
        endpoint = serverFromString(self.reactor, self.listen)
        self.port = await endpoint.listen(MeshServerFactory(self))
        address = self.port.getHost()
        host = getattr(address, "host", "?")
        scheme = "wss" if self.listen.split(":", 1)[0] in ("ssl", "tls") else "ws"
        self.log.info(
            "bus node {node} (group {group}) listening on tcp:{host}:{port} "
            "({scheme}://{host}:{port}{path})",
            node=self.node_uuid,
            group=self.belongs_to,
            host=host,
            port=getattr(address, "port", "?"),
            scheme=scheme,
            path=self.path,
        )

    @property
    def listening_port(self) -> int | None:
        return getattr(self.port.getHost(), "port", None) if self.port is not None else None

    def stop(self) -> Deferred[None]:
        """Withdraw, stop dialling and listening, close every connection."""
        return self._stop_once()

    async def _stop(self) -> None:
        if not self.withdrawn:
            await self.withdraw()
        for dialer in list(self._dialers.values()):
            dialer.stop()
        if self.port is not None:
            await self.port.stopListening()
        closing = [c.closed for c in self._connections if not c.closed.called]
        for conn in list(self._connections):
            conn.close(CLOSE_GOING_AWAY, "node stopping")
        if closing:
            done = DeferredList(closing, consumeErrors=True)
            done.addTimeout(self.close_timeout + 1, self.reactor)
            try:
                await done
            except DeferredTimeout:
                for conn in list(self._connections):
                    conn.dropConnection(abort=True)  # type: ignore[attr-defined]
        self.bus.unregister_producer(self)
        self._pod.disconnect()

    def withdraw(self) -> Deferred[None]:
        """Say WITHDRAW to every peer and wait (up to ``withdraw_timeout``) for the acks.

        Afterwards the node dials no one and refuses new connections; peers stop sending
        to it. Messages from local pods are still sent until the mesh stops.
        """
        return Deferred.fromCoroutine(self._withdraw())

    async def _withdraw(self) -> None:
        if self.withdrawn:
            return
        self.withdrawn = True
        for dialer in list(self._dialers.values()):
            dialer.stop()
        conns = [c for c in self._peers.values() if c.handshaked]
        if not conns:
            return
        self.log.info("withdrawing from the mesh ({count} peers)", count=len(conns))
        acks = DeferredList([c.send_withdraw() for c in conns], consumeErrors=True)
        acks.addTimeout(self.withdraw_timeout, self.reactor)
        try:
            await acks
        except DeferredTimeout:
            self.log.warn(
                "not every peer acknowledged the withdraw within {timeout}s",
                timeout=self.withdraw_timeout,
            )

    # =========================================================================================
    # Peers
    # =========================================================================================

    def dial(self, url: str, node_uuid: str | None = None) -> Deferred[str]:
        """Keep the node at ``url`` connected; fires with its uuid once connected.

        Dialling a URL already being dialled returns the existing dialer's next connection.
        """
        target = PeerURL.parse(url)
        dialer = self._dialers.get(target.url)
        dialer = self._dialer_for(PeerURL.parse(url), node_uuid)
        if dialer.node_uuid is not None and dialer.node_uuid in self._peers:
            return succeed(dialer.node_uuid)
        return dialer.when_connected()

    def _dialer_for(self, target: PeerURL, node_uuid: str | None) -> PeerDialer:
        dialer = self._dialers.get(target.url)
        if dialer is None or dialer.state is DialerState.STOPPED:
            dialer = PeerDialer(self, target, node_uuid)
            self._dialers[target.url] = dialer
            if not self.withdrawn:
                dialer.start()
        return dialer

    def found(self, url: str, node_uuid: str | None = None) -> None:
        """Discovery's callback: dial ``url`` unless it is this node or already connected.

        A peer that withdrew is dialled again only from here (discovery announced it once
        more) or when it dials in itself.
        """
        if self.withdrawn or node_uuid == self.node_uuid:
            return
        if node_uuid is not None and node_uuid in self._peers:
            return
        target = PeerURL.parse(url)
        existing = self._dialers.get(target.url)
        if existing is not None and existing.state is DialerState.WITHDRAWN:
            self.log.info("peer {node} at {url} announced again", node=node_uuid, url=target.url)
            existing.revive()
            return
        if existing is not None and existing.state is not DialerState.STOPPED:
            return
        self.log.info("discovered peer {node} at {url}", node=node_uuid or "?", url=target.url)
        self._dialer_for(target, node_uuid)

    @property
    def dialers(self) -> dict[str, PeerDialer]:
        """The peer URLs this node keeps connected, and where each one stands."""
        return dict(self._dialers)

    def is_connected(self, node_uuid: str) -> bool:
        return node_uuid in self._peers

    def connection_to(self, node_uuid: str) -> MeshConnection | None:
        """The connection that links this node to ``node_uuid``, if any."""
        return self._peers.get(node_uuid)

    @property
    def peers(self) -> list[PeerInfo]:
        out = []
        for uuid, conn in self._peers.items():
            peer = conn.session.peer
            out.append(
                PeerInfo(
                    uuid,
                    conn.direction,
                    conn.address,
                    peer.belongs_to if peer is not None else "",
                    conn.session.peer_withdrawn,
                )
            )
        return out

    def peer_connections(self) -> dict[str, MeshConnection]:
        """Each registered peer's connection by node uuid (status and metrics read them)."""
        return dict(self._peers)

    def wait_for_peers(self, count: int) -> Deferred[None]:
        """Fires once at least ``count`` peers are connected."""
        d: Deferred[None] = Deferred()
        if len(self._peers) >= count:
            d.callback(None)
        else:
            self._watchers.append((count, d))
        return d

    def _notify(self) -> None:
        ready = [(n, d) for n, d in self._watchers if len(self._peers) >= n]
        if ready:
            self._watchers = [(n, d) for n, d in self._watchers if len(self._peers) < n]
            for _, d in ready:
                d.callback(None)

    def connection_made(self, conn: MeshConnection) -> None:
        self._connections.add(conn)
        if self._reading_paused:
            conn.pause_reading()

    def client_factory(self, dialer: PeerDialer) -> MeshClientFactory:
        return MeshClientFactory(self, dialer)

    def park(self, node_uuid: str, dialer: PeerDialer) -> None:
        parked = self._parked.setdefault(node_uuid, [])
        if dialer not in parked:
            parked.append(dialer)

    # =========================================================================================
    # Handshakes (called by connections)
    # =========================================================================================

    def handshake_from(self, conn: MeshConnection, hs: Handshake) -> None:
        """A dialling peer said who it is: accept, or refuse and close."""
        reason = None
        if self.withdrawn:
            reason = "this node has withdrawn"
        elif hs.uuid == self.node_uuid:
            reason = "it is this node"
        elif not _groups_match(self.belongs_to, hs.belongs_to):
            reason = f"its group {hs.belongs_to!r} does not match ours ({self.belongs_to!r})"
        elif hs.uuid in self._peers:
            reason = "it is already connected"  # never drop a working link for a newcomer
        if reason is not None:
            duplicate = reason == "it is already connected"
            (self.log.info if duplicate else self.log.warn)(
                "refused node {node} from {address}: {reason}",
                node=hs.uuid,
                address=conn.address,
                reason=reason,
            )
            conn.send_reply(conn.session.refuse())
            conn.close(CLOSE_NORMAL, "refused")
            return
        conn.send_reply(conn.session.accept())
        self._register(conn, hs.uuid, hs.belongs_to)

    def reply_from(self, conn: MeshConnection, reply: HandshakeReply) -> None:
        """The node we dialled answered."""
        dialer = conn.dialer
        if not reply.accept:
            if reply.uuid and reply.uuid in self._peers:
                if dialer is not None:
                    dialer.park(reply.uuid)
            else:
                self.log.warn(
                    "node {node} at {address} refused this node (group {group!r}, or it withdrew)",
                    node=reply.uuid or "?",
                    address=conn.address,
                    group=self.belongs_to,
                )
            conn.close(CLOSE_NORMAL, "refused")
            return
        problem = None
        if reply.uuid == self.node_uuid:
            problem = "it is this node"
        elif dialer is not None and dialer.expected_uuid not in (None, reply.uuid):
            error = NodeUUIDMismatch(
                f"{dialer.url} answered as {reply.uuid}, not {dialer.expected_uuid}"
            )
            problem = str(error)
        if problem is not None:
            self.log.warn(
                "dropping connection to {address}: {problem}", address=conn.address, problem=problem
            )
            if dialer is not None:
                dialer.stop()
            conn.close(CLOSE_NORMAL, "wrong node")
            return
        existing = self._peers.get(reply.uuid)
        if existing is not None:
            if not self._keeps_new_dial(existing, reply.uuid):
                conn.superseded = True
                if dialer is not None:
                    dialer.park(reply.uuid)
                conn.close(CLOSE_NORMAL, "already connected")
                return
            self._supersede(existing)
        self._register(conn, reply.uuid, reply.belongs_to)
        if dialer is not None:
            dialer.opened(conn, reply.uuid)

    def _keeps_new_dial(self, existing: MeshConnection, node_uuid: str) -> bool:
        """Our dial to ``node_uuid`` was accepted although ``existing`` links us already.

        If ``existing`` is our own earlier dial, the new one is the newcomer. Otherwise the
        two nodes dialled each other at once and each accepted the other's dial first (see
        the module doc): against a Grav node keep our dial (it closes its own), between two
        txloom nodes keep the dial of the smaller uuid.
        """
        if existing.direction == "outbound":
            return False
        if existing.peer_speaks_txloom:
            return self.node_uuid < node_uuid
        return True

    def _supersede(self, conn: MeshConnection) -> None:
        """Stop using ``conn`` in favour of a new connection to the same node.

        Messages still arriving on it are delivered (the uuid check drops any copy).
        """
        conn.superseded = True
        if conn.node_uuid is not None and self._peers.get(conn.node_uuid) is conn:
            del self._peers[conn.node_uuid]
        self._retarget()
        if conn.dialer is not None and conn.node_uuid is not None:
            conn.dialer.park(conn.node_uuid)
        conn.close(CLOSE_NORMAL, "duplicate connection")

    def _register(self, conn: MeshConnection, node_uuid: str, group: str) -> None:
        conn.node_uuid = node_uuid
        self._peers[node_uuid] = conn
        self._retarget()
        if conn.direction == "inbound":  # a withdrawn peer that dials in is back
            for dialer in self._dialers.values():
                if dialer.state is DialerState.WITHDRAWN and dialer.node_uuid == node_uuid:
                    dialer.park(node_uuid)
        self.log.info(
            "peer {node} joined ({direction}, {address}, group {group}); {count} peers",
            node=node_uuid,
            direction=conn.direction,
            address=conn.address,
            group=group,
            count=len(self._peers),
        )
        self._notify()

    def release(self, conn: MeshConnection) -> None:
        """``conn`` (a peer's or a client's) ended: stop pausing and closing it."""
        self._connections.discard(conn)

    def connection_lost(self, conn: MeshConnection, reason: str) -> None:
        self.release(conn)
        node = conn.node_uuid
        if node is not None and self._peers.get(node) is conn:
            del self._peers[node]
            self._retarget()
            self.log.info(
                "peer {node} left ({reason}); {count} peers",
                node=node,
                reason=reason,
                count=len(self._peers),
            )
            for dialer in self._parked.pop(node, []):
                if conn.peer_left_mesh:
                    dialer.peer_withdrew()
                else:
                    dialer.unpark()
        elif node is None and not conn.superseded:
            self.log.info(
                "{direction} mesh connection {address} closed before joining: {reason}",
                direction=conn.direction,
                address=conn.address,
                reason=reason,
            )
        if conn.dialer is not None:
            conn.dialer.lost(conn, reason)

    def peer_withdrew(self, conn: MeshConnection) -> None:
        self.log.info("peer {node} withdrew from the mesh", node=conn.node_uuid)
        self._retarget()

    def _retarget(self) -> None:
        self._targets = tuple(
            c
            for c in self._peers.values()
            if c.handshaked and not c.session.peer_withdrawn and not c.superseded
        )

    # =========================================================================================
    # Messages
    # =========================================================================================

    def _from_bus(self, msg: Message) -> None:
        """The mesh pod's handler: a local message goes to every peer."""
        self._seen.add(msg.uuid)
        targets = self._targets
        if not targets:
            return
        payload = encode_message(msg)
        for conn in targets:
            conn.send_payload(payload)
            conn.sent += 1
        self.stats.sent += 1

    def message_from(self, conn: MeshConnection, fields: MessageFields) -> None:
        # A message with no uuid (Go reads "{}" as one) cannot be told from another: it is
        # delivered every time and never relayed.
        if fields.uuid and not self._seen.add(fields.uuid):
            self.stats.duplicates += 1
            return
        self.stats.received += 1
        conn.received += 1
        msg = Message.from_fields(fields)
        self._post(msg, self._pod)
        if self.relay and fields.uuid and fields.hops + 1 < self.hop_limit:
            others = [c for c in self._targets if c is not conn]
            if others:
                payload = encode_message(msg, fields.hops + 1)
                for other in others:
                    other.send_payload(payload)
                    other.sent += 1
                conn.relayed += 1
                self.stats.relayed += 1

    def foreign_from(self, conn: MeshConnection, data: bytes) -> None:
        self.stats.foreign += 1
        self._post(Message.foreign(data), self._pod)

    def dropped_for(self, conn: MeshConnection) -> None:
        self.stats.dropped += 1
        n = conn.dropped
        if n & (n - 1) == 0:
            self.log.warn(
                "peer {node} is not reading fast enough: {dropped} messages dropped for it "
                "(backlog over {limit} bytes)",
                node=conn.node_uuid,
                dropped=n,
                limit=self.peer_backlog_limit,
            )

    # =========================================================================================
    # IPushProducer: the bus pauses reading from peers while a local pod is over its limit
    # =========================================================================================

    def pauseProducing(self) -> None:
        self._reading_paused = True
        for conn in self._connections:
            conn.pause_reading()

    def resumeProducing(self) -> None:
        self._reading_paused = False
        for conn in self._connections:
            conn.resume_reading()

    def stopProducing(self) -> None:
        self.pauseProducing()
