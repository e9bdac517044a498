"""A whole bus node as a Twisted service: bus, mesh, discovery, bridge and the operator pods.

``BusNodeService`` is what ``twistd busnode`` runs and what the all-in-one node embeds. It
binds its port in ``privilegedStartService`` (so a low port works before privileges are
dropped, and so that a port that cannot be bound stops the start with one readable line),
starts discovery and the bridge in ``startService``, and on ``stopService`` withdraws from
the mesh and stops everything through ``Bus.stop``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from txloom import __version__
from txloom.bus.buffer import DEFAULT_REPLAY_SIZE
from txloom.bus.bus import DEFAULT_POD_QUEUE_LIMIT, Bus, SlowPodPolicy
from txloom.bus.discovery.static import StaticPeers
from txloom.bus.mesh import mesh as mesh_defaults
from txloom.bus.mesh.mesh import WebSocketMesh
from txloom.bus.mesh.urls import DEFAULT_PATH
from txloom.bus.status import MessageLog, StatusResponder
from txloom.shutdown import StartFailed, stop_and_exit
from txloom.wire.grav import Announcement

__all__ = ["BusNodeConfig", "BusNodeService", "NodeStartError"]


class NodeStartError(StartFailed):
    """The node cannot start (its port is taken, say); the message is one readable line."""


@dataclass
class BusNodeConfig:
    """Everything ``twistd busnode`` can be told, with the spec's defaults."""

    listen: str | None = "tcp:8080"
    path: str = DEFAULT_PATH
    node_uuid: str | None = None
    belongs_to: str = "*"
    token: str | None = None
    peers: list[str] = field(default_factory=list)
    discovery: str = "none"  # or "local"
    discovery_interval: float = 10.0
    discovery_group: str = "239.255.255.250"
    discovery_port: int = 9999
    discovery_interface: str = "0.0.0.0"
    relay: bool = False
    hop_limit: int = mesh_defaults.DEFAULT_HOP_LIMIT
    handshake_timeout: float = mesh_defaults.HANDSHAKE_TIMEOUT
    keepalive: float = mesh_defaults.KEEPALIVE_INTERVAL
    reconnect_initial: float = mesh_defaults.RECONNECT_INITIAL
    reconnect_max: float = mesh_defaults.RECONNECT_MAX
    withdraw_timeout: float = mesh_defaults.WITHDRAW_TIMEOUT
    max_message_size: int = mesh_defaults.MAX_MESSAGE_SIZE
    peer_backlog_limit: int = mesh_defaults.PEER_BACKLOG_LIMIT
    tls_trust: str | None = None
    replay_size: int = DEFAULT_REPLAY_SIZE
    pod_queue_limit: int = DEFAULT_POD_QUEUE_LIMIT
    slow_pod_policy: str = SlowPodPolicy.PAUSE.value
    nats_url: str | None = None
    bridge_types: list[str] = field(default_factory=list)
    nats_prefix: str = ""
    log_messages: bool = False
    status: bool = True


class BusNodeService(MultiService):
    """One bus node (see the module doc)."""

    log = Logger()

    def __init__(
        self, config: BusNodeConfig, reactor: Any = None, *, exit_on_failure: bool = False
    ) -> None:
        super().__init__()
        self.config = config
        #: Under twistd, a failure that stops the node also ends the process with status 1.
        self.exit_on_failure = exit_on_failure
        if reactor is None:
            from twisted.internet import reactor as default_reactor  # noqa: PLC0415

            reactor = default_reactor
        self.reactor = reactor
        self.bus: Bus | None = None
        self.mesh: WebSocketMesh | None = None
        self.discoveries: list[Any] = []
        self.bridge: Any = None
        self._listening: Deferred[None] | None = None

    # -- building ----------------------------------------------------------------------------

    def _build(self) -> None:
        c = self.config
        self.bus = Bus(
            reactor=self.reactor,
            replay_size=c.replay_size,
            pod_queue_limit=c.pod_queue_limit,
            slow_pod_policy=c.slow_pod_policy,
        )
        self.mesh = WebSocketMesh(
            self.bus,
            listen=c.listen,
            path=c.path,
            node_uuid=c.node_uuid,
            belongs_to=c.belongs_to,
            token=c.token,
            relay=c.relay,
            hop_limit=c.hop_limit,
            handshake_timeout=c.handshake_timeout,
            keepalive=c.keepalive,
            max_message_size=c.max_message_size,
            peer_backlog_limit=c.peer_backlog_limit,
            reconnect_initial=c.reconnect_initial,
            reconnect_max=c.reconnect_max,
            withdraw_timeout=c.withdraw_timeout,
            tls_trust_roots=c.tls_trust,
        )
        if c.status:
            StatusResponder(self.bus, self.describe)
        if c.log_messages:
            MessageLog(self.bus)
        if c.peers:
            self.discoveries.append(StaticPeers(c.peers))
        if c.discovery == "local":
            from txloom.bus.discovery.multicast import LocalMulticastDiscovery  # noqa: PLC0415

            self.discoveries.append(
                LocalMulticastDiscovery(
                    group=c.discovery_group,
                    port=c.discovery_port,
                    interface=c.discovery_interface,
                    interval=c.discovery_interval,
                    reactor=self.reactor,
                )
            )
        if c.nats_url:
            from txloom.bus.bridge.nats import NatsBridge  # noqa: PLC0415

            self.bridge = NatsBridge(
                self.bus,
                c.nats_url,
                c.bridge_types,
                subject_prefix=c.nats_prefix,
                reactor=self.reactor,
            )

    def describe(self) -> dict[str, Any]:
        """What the status responder answers."""
        assert self.bus is not None and self.mesh is not None
        return {
            "node": self.mesh.node_uuid,
            "group": self.mesh.belongs_to,
            "version": __version__,
            "port": self.mesh.listening_port,
            "withdrawn": self.mesh.withdrawn,
            "peers": [
                {"node": p.node_uuid, "direction": p.direction, "address": p.address}
                for p in self.mesh.peers
            ],
            "pods": len(self.bus.pods),
            "bus": {**self.bus.stats.as_dict(), "paused": self.bus.paused},
            "mesh": self.mesh.stats.as_dict(),
            "bridge": self.bridge.describe() if self.bridge is not None else None,
        }

    # -- service lifetime --------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        self._listen()
        super().privilegedStartService()

    def _listen(self) -> None:
        if self._listening is not None:
            return
        self._build()
        assert self.mesh is not None
        d = self.mesh.start()
        self._listening = d
        problem: list[Failure] = []
        d.addErrback(problem.append)
        if problem:
            raise NodeStartError(
                f"busnode: cannot listen on {self.config.listen}: {problem[0].getErrorMessage()}"
            )
        if not d.called:  # an endpoint that listens asynchronously
            d.addErrback(self._fatal, f"cannot listen on {self.config.listen}")

    def startService(self) -> None:
        self._listen()
        super().startService()
        assert self.mesh is not None and self.bus is not None
        for discovery in self.discoveries:
            self.bus.attach(discovery)
            d = discovery.start(self._announcement(), self.mesh.found)
            d.addErrback(self._discovery_failed, discovery)
        if self.bridge is not None:
            self.bus.attach(self.bridge)
            self.bridge.start().addErrback(self._fatal, "the NATS bridge failed")
        self.reactor.callWhenRunning(self._ready)

    def _ready(self) -> None:
        # logged once the reactor runs (signal handlers are in place from here on)
        assert self.mesh is not None
        c = self.config
        self.log.info(
            "bus node {node} ready: {peers} static peers, discovery {discovery}, relay {relay}"
            "{bridge}",
            node=self.mesh.node_uuid,
            peers=len(c.peers),
            discovery=c.discovery,
            relay="on" if c.relay else "off",
            bridge=f", bridging {len(c.bridge_types)} types to {c.nats_url}" if c.nats_url else "",
        )

    def _announcement(self) -> Announcement:
        assert self.mesh is not None
        return Announcement(self.mesh.node_uuid, self.mesh.listening_port or 0, self.mesh.path)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self.bus is None:
            return Deferred.fromCoroutine(_nothing())
        self.log.info("bus node stopping: withdrawing from the mesh")
        d = self.bus.stop()
        d.addCallback(self._stopped_gracefully)
        return d

    def _stopped_gracefully(self, _: object) -> None:
        self.log.info("bus node stopped")

    def _discovery_failed(self, failure: Failure, discovery: object) -> None:
        self.log.error(
            "discovery {discovery} failed: {error}; the node runs without it",
            discovery=type(discovery).__name__,
            error=failure.getErrorMessage(),
        )

    def _fatal(self, failure: Failure, what: str) -> None:
        self.log.failure("busnode: {what}; stopping", failure, what=what)
        if self.exit_on_failure:
            stop_and_exit(self.reactor, 1)
        elif self.reactor.running:
            self.reactor.stop()


async def _nothing() -> None:
    return None
