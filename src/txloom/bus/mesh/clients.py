"""Bus clients: scripts attached to a node, served on the node's mesh port.

A client is not a mesh peer. It offers the WebSocket subprotocol ``txloom.bus.client`` on
the upgrade request, which a node that serves clients answers in kind; the connection's
events then go to this hub instead of the mesh. Each client becomes a pod on the node's
bus, so what a client sends reaches the node's pods, its other clients and (through the
mesh pod) its mesh peers as the node's own message, and a client receives every message the
node's bus carries except its own. Grav's rules between full nodes (no relay) are untouched:
a client is one more local pod that happens to live in another process.

The frames are the Grav mesh's: the client says who it is with a Grav handshake, the node
answers with its own uuid, then every message is one binary frame of message JSON.

A slow client never holds up the bus: its pod's handler only writes, and what the client's
socket does not take waits in the connection's send window, bounded by
``CLIENT_BACKLOG_LIMIT`` bytes. Past it the node drops that client's copies (logged, with
the reason, and counted) or, with the ``disconnect`` policy, closes the client.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from txloom.bus.message import Message
from txloom.wire.grav import encode_message

if TYPE_CHECKING:
    from txloom.bus.mesh.mesh import WebSocketMesh
    from txloom.bus.mesh.peer import MeshConnection
    from txloom.bus.pod import Pod

__all__ = ["CLIENT_BACKLOG_LIMIT", "CLIENT_PROTOCOL", "ClientHub", "SlowClientPolicy"]

#: The WebSocket subprotocol a bus client offers; a node that serves clients selects it.
CLIENT_PROTOCOL = "txloom.bus.client"

#: Bytes a client may fall behind (while its socket is full) before the slow-client
#: policy applies. Smaller than a peer's backlog: a client is one script, not a node.
CLIENT_BACKLOG_LIMIT = 4 * 1024 * 1024

#: Close code for a client closed by the ``disconnect`` policy.
CLOSE_TOO_SLOW = 4008


class SlowClientPolicy(enum.Enum):
    """What a node does with a client that does not read what it is sent."""

    DROP = "drop"  # drop that client's copies, count them, log now and then
    DISCONNECT = "disconnect"  # close the client; it may reconnect


class ClientHub:
    """The clients of one node (made by its ``WebSocketMesh``).

    It takes a client connection's events, the calls ``IMeshHub`` names for a peer's; the
    connection reads its settings (timeouts, limits) from the mesh, as a peer's does.
    """

    log = Logger()

    def __init__(
        self,
        mesh: WebSocketMesh,
        *,
        backlog_limit: int = CLIENT_BACKLOG_LIMIT,
        slow_client_policy: SlowClientPolicy | str = SlowClientPolicy.DROP,
    ) -> None:
        if backlog_limit < 1:
            raise ValueError("the client backlog limit must be at least 1 byte")
        self.mesh = mesh
        self.backlog_limit = backlog_limit
        self.slow_client_policy = SlowClientPolicy(slow_client_policy)
        self.dropped = 0
        self._pods: dict[MeshConnection, Pod] = {}

    @property
    def clients(self) -> int:
        """Clients attached now."""
        return len(self._pods)

    def describe(self) -> dict[str, Any]:
        """For the node's status reply."""
        return {
            "attached": len(self._pods),
            "dropped": self.dropped,
            "policy": self.slow_client_policy.value,
        }

    # -- events from client connections ------------------------------------------------------

    def connection_made(self, conn: MeshConnection) -> None:
        self.mesh.connection_made(conn)

    def handshake_from(self, conn: MeshConnection, hs: Any) -> None:
        """A client said who it is: attach it as a pod on the node's bus."""
        try:
            pod = self.mesh.bus.connect()
        except RuntimeError:  # the node is stopping
            conn.send_reply(conn.session.refuse())
            conn.close(1000, "node stopping")
            return
        conn.send_reply(conn.session.accept())
        conn.node_uuid = hs.uuid
        pod.on(lambda msg: conn.send_payload(encode_message(msg)))
        self._pods[conn] = pod
        self.log.info(
            "bus client {client} attached from {address}; {count} clients",
            client=hs.uuid,
            address=conn.address,
            count=len(self._pods),
        )

    def reply_from(self, conn: MeshConnection, reply: Any) -> None:
        conn.close(1000, "a client does not answer handshakes")

    def message_from(self, conn: MeshConnection, fields: Any) -> None:
        pod = self._pods.get(conn)
        if pod is not None:
            self.mesh.bus.post(Message.from_fields(fields), pod)

    def foreign_from(self, conn: MeshConnection, data: bytes) -> None:
        pod = self._pods.get(conn)
        if pod is not None:
            self.mesh.bus.post(Message.foreign(data), pod)

    def peer_withdrew(self, conn: MeshConnection) -> None:
        """A client has no mesh to leave; it will close."""

    def dropped_for(self, conn: MeshConnection) -> None:
        self.dropped += 1
        pod = self._pods.get(conn)
        if pod is not None:
            pod.stats.dropped += 1
        if self.slow_client_policy is SlowClientPolicy.DISCONNECT:
            if conn.dropped == 1:
                self.log.warn(
                    "closing bus client {client} ({address}): it fell {limit} bytes behind",
                    client=conn.node_uuid,
                    address=conn.address,
                    limit=self.backlog_limit,
                )
                conn.close(CLOSE_TOO_SLOW, "client too slow")
            return
        n = conn.dropped
        if n & (n - 1) == 0:  # 1, 2, 4, ...: visible, never a flood
            self.log.warn(
                "bus client {client} ({address}) is not reading fast enough: {dropped} "
                "messages dropped for it (backlog over {limit} bytes)",
                client=conn.node_uuid,
                address=conn.address,
                dropped=n,
                limit=self.backlog_limit,
            )

    def connection_lost(self, conn: MeshConnection, reason: str) -> None:
        self.mesh.release(conn)
        pod = self._pods.pop(conn, None)
        if pod is None:
            return
        pod.disconnect()
        self.log.info(
            "bus client {client} left ({reason}); {count} clients",
            client=conn.node_uuid,
            reason=reason,
            count=len(self._pods),
        )

    def client_factory(self, dialer: Any) -> Any:
        raise TypeError("a node does not dial its clients")

    def park(self, node_uuid: str, dialer: Any) -> None:
        raise TypeError("a node does not dial its clients")
