"""Attach a script to a running bus node: ``connect("ws://...")`` and use the handle as a pod.

    client = await connect("ws://127.0.0.1:8080/meta/message")
    client.on_type("job.done", print)
    reply = await client.send(Message.new("job.start", b"42")).wait_until(5.0)
    await client.close()

The handle is a pod on a small bus of the script's own, linked to the node by one WebSocket
connection that offers the ``txloom.bus.client`` subprotocol (see
``txloom.bus.mesh.clients``). On the node it is a pod as well: what the script sends
reaches the node's pods, its other clients and its mesh peers, and the script receives
everything the node's bus carries except its own messages. No ``--relay`` is involved, and
the node never takes a client for a mesh peer.

With ``reconnect=True`` a lost link is redialled with the mesh's backoff; messages sent
while it is down are not queued (they are lost). Without it, a lost link disconnects the
handle: waits fail with ``ConnectionClosed`` and ``send`` raises ``NoReceipt``. For asyncio
code, ``txloom.bus.aio.connect`` returns the same handle with asyncio futures.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet import defer, error
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

from txloom.bus.bus import Bus
from txloom.bus.errors import BusError
from txloom.bus.mesh import mesh as mesh_defaults
from txloom.bus.mesh.mesh import WebSocketMesh
from txloom.bus.mesh.urls import PeerURL
from txloom.bus.message import Message
from txloom.bus.pod import Handler, Pod, PodStats
from txloom.bus.receipt import MsgReceipt, WaitFunction

__all__ = ["CONNECT_TIMEOUT", "BusClient", "NodeUnreachable", "connect"]

#: Seconds ``connect`` waits for the node to accept the client.
CONNECT_TIMEOUT = 10.0


class NodeUnreachable(BusError, ConnectionError):
    """``connect`` could not attach to the node in time (down, wrong token, not txloom)."""


class BusClient:
    """A script's pod on a remote node (made by ``connect``); the ``Pod`` API, plus
    ``node_uuid``, ``linked`` and ``close``.

    ``bus`` is the script's own bus: more pods can join it (``client.bus.connect()``) and
    share the one link.
    """

    log = Logger()

    def __init__(
        self, bus: Bus, link: WebSocketMesh, pod: Pod, url: str, node_uuid: str, *, reconnect: bool
    ) -> None:
        self.bus = bus
        self.link = link
        self.pod = pod
        self.url = url
        #: The node this client is attached to.
        self.node_uuid = node_uuid
        self.reconnect = reconnect
        self._watch()

    # -- the Pod API -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.pod.connected

    @property
    def stats(self) -> PodStats:
        return self.pod.stats

    def on(self, fn: Handler | None) -> None:
        self.pod.on(fn)

    def on_type(self, msg_type: str | Iterable[str], fn: Handler) -> None:
        self.pod.on_type(msg_type, fn)

    def filter_type(self, msg_type: str, allow: bool) -> None:
        self.pod.filter_type(msg_type, allow)

    def filter_uuid(self, uuid: str, allow: bool) -> None:
        self.pod.filter_uuid(uuid, allow)

    def send(self, msg: Message) -> MsgReceipt:
        return self.pod.send(msg)

    def reply_to(self, msg: Message, reply: Message) -> MsgReceipt:
        return self.pod.reply_to(msg, reply)

    def wait_on(self, fn: WaitFunction | None = None) -> Deferred[Message]:
        return self.pod.wait_on(fn)

    def wait_until(
        self, timeout: float | None, fn: WaitFunction | None = None
    ) -> Deferred[Message]:
        return self.pod.wait_until(timeout, fn)

    def writable(self) -> Deferred[None]:
        return self.pod.writable()

    def when_disconnected(self) -> Deferred[str]:
        return self.pod.when_disconnected()

    # -- the link ----------------------------------------------------------------------------

    @property
    def linked(self) -> bool:
        """True while the connection to the node is up (it may be redialling)."""
        return self.link.is_connected(self.node_uuid)

    def close(self) -> Deferred[None]:
        """Detach from the node and disconnect the handle; fires once the link is closed."""
        return self.bus.stop()

    def disconnect(self) -> Deferred[None]:
        """``close`` (the name a pod has)."""
        return self.close()

    def _watch(self) -> None:
        conn = self.link.connection_to(self.node_uuid)
        if conn is not None:
            conn.closed.addCallback(self._lost)

    def _lost(self, _: object) -> None:
        if self.reconnect:
            self.log.info("lost the bus node at {url}; redialling", url=self.url)
            self.link.dial(self.url).addCallback(self._relinked)
            return
        if self.pod.connected:
            self.pod.disconnect(f"the link to {self.url} closed")
            self.bus.stop()

    def _relinked(self, node_uuid: str) -> None:
        self.node_uuid = node_uuid
        self._watch()

    def __repr__(self) -> str:
        return f"<BusClient {self.url} node={self.node_uuid} linked={self.linked}>"


def connect(
    url: str,
    *,
    token: str | None = None,
    reconnect: bool = False,
    timeout: float = CONNECT_TIMEOUT,
    reconnect_initial: float = mesh_defaults.RECONNECT_INITIAL,
    reconnect_max: float = mesh_defaults.RECONNECT_MAX,
    keepalive: float = mesh_defaults.KEEPALIVE_INTERVAL,
    max_message_size: int = mesh_defaults.MAX_MESSAGE_SIZE,
    tls_trust_roots: str | None = None,
    reactor: Any = None,
) -> Deferred[BusClient]:
    """Attach to the node serving ``url`` (``ws://HOST:PORT/PATH`` or ``wss://``).

    Fires with a ``BusClient`` once the node accepted it, or fails with ``NodeUnreachable``
    after ``timeout`` seconds. ``token`` is the node's shared token (``--token-file``).
    """
    return Deferred.fromCoroutine(
        _connect(
            PeerURL.parse(url).url,
            token=token,
            reconnect=reconnect,
            timeout=timeout,
            reactor=reactor,
            link_options={
                "reconnect_initial": reconnect_initial,
                "reconnect_max": reconnect_max,
                "keepalive": keepalive,
                "max_message_size": max_message_size,
                "tls_trust_roots": tls_trust_roots,
            },
        )
    )


async def _connect(
    url: str,
    *,
    token: str | None,
    reconnect: bool,
    timeout: float,
    reactor: Any,
    link_options: dict[str, Any],
) -> BusClient:
    bus = Bus(reactor=reactor)
    link = WebSocketMesh(bus, listen=None, token=token, as_client=True, **link_options)
    pod = bus.connect()
    dialled = link.dial(url)
    dialled.addTimeout(timeout, bus.reactor)
    try:
        node_uuid = await dialled
    except (defer.TimeoutError, error.TimeoutError, CancelledError):
        await bus.stop()
        raise NodeUnreachable(
            f"no bus node accepted this client at {url} within {timeout}s (is it up, is the "
            "token right, is it a txloom node?)"
        ) from None
    return BusClient(bus, link, pod, url, node_uuid, reconnect=reconnect)
