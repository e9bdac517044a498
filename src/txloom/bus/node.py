"""A whole bus node as a Twisted service: bus, mesh, discovery, bridge and the operator pods.

``BusNodeService`` is what ``twistd busnode`` runs and what the all-in-one node embeds. Its
extensions are handed in (``bus=``, ``transports=``, ``discoveries=``, ``bridges=``) or,
when not, built from its config by name through the factories installed as Twisted plugins
(``IMeshTransportFactory``, ``IDiscoveryFactory``, ``IBridgeFactory``). It binds its port
in ``privilegedStartService`` (so a low port works before privileges are
dropped, and so that a port that cannot be bound stops the start with one readable line),
starts discovery and the bridge in ``startService``, and on ``stopService`` withdraws from
the mesh and stops everything through ``Bus.stop``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from txloom import __version__
from txloom.bus.buffer import DEFAULT_REPLAY_SIZE
from txloom.bus.bus import DEFAULT_POD_QUEUE_LIMIT, Bus, SlowPodPolicy
from txloom.bus.mesh import mesh as mesh_defaults
from txloom.bus.mesh.clients import CLIENT_BACKLOG_LIMIT, SlowClientPolicy
from txloom.bus.mesh.urls import DEFAULT_PATH
from txloom.bus.status import MessageLog, StatusResponder
from txloom.extensions import choose, parse_options
from txloom.interfaces import IBridgeFactory, IDiscoveryFactory, IMeshTransportFactory
from txloom.shutdown import StartFailed, stop_and_exit
from txloom.wire.grav import Announcement

#: An extension chosen by name, with the ``key=value`` words that configure it.
Choice = tuple[str, list[str]]

__all__ = ["BusNodeConfig", "BusNodeService", "NodeStartError"]


class NodeStartError(StartFailed):
    """The node cannot start (its port is taken, say); the message is one readable line."""


@dataclass
class BusNodeConfig:
    """Everything ``twistd busnode`` can be told, with the spec's defaults."""

    listen: str | None = "tcp:8081:interface=127.0.0.1"
    path: str = DEFAULT_PATH
    node_uuid: str | None = None
    belongs_to: str = "*"
    token: str | None = None
    peers: list[str] = field(default_factory=list)
    #: Discoveries by factory name (``local``, ``file``, ...); ``--peer`` adds ``static``.
    discoveries: list[Choice] = field(default_factory=list)
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
    client_backlog_limit: int = CLIENT_BACKLOG_LIMIT
    slow_client_policy: str = SlowClientPolicy.DROP.value
    tls_trust: str | None = None
    replay_size: int = DEFAULT_REPLAY_SIZE
    pod_queue_limit: int = DEFAULT_POD_QUEUE_LIMIT
    slow_pod_policy: str = SlowPodPolicy.PAUSE.value
    nats_url: str | None = None
    bridge_types: list[str] = field(default_factory=list)
    nats_prefix: str = ""
    log_messages: bool = False
    status: bool = True
    #: The mesh transport's factory name, and bridges by factory name (``--nats`` adds
    #: ``nats``).
    transport: Choice = ("websocket", [])
    bridges: list[Choice] = field(default_factory=list)

    @property
    def discovery(self) -> str:
        """The discoveries chosen, for logs (``none`` when only static peers)."""
        return ", ".join(name for name, _ in self.discoveries) or "none"

    def discovery_choices(self) -> list[Choice]:
        """Every discovery to build: the chosen ones, plus ``static`` for ``--peer``."""
        chosen = list(self.discoveries)
        if self.peers and all(name != "static" for name, _ in chosen):
            chosen.insert(0, ("static", []))
        return chosen

    def bridge_choices(self) -> list[Choice]:
        """Every bridge to build: the chosen ones, plus ``nats`` for ``--nats``."""
        chosen = list(self.bridges)
        if self.nats_url and all(name != "nats" for name, _ in chosen):
            chosen.append(("nats", []))
        return chosen


class BusNodeService(MultiService):
    """One bus node (see the module doc)."""

    log = Logger()

    def __init__(
        self,
        config: BusNodeConfig,
        reactor: Any = None,
        *,
        exit_on_failure: bool = False,
        bus: Bus | None = None,
        transports: Sequence[Any] | None = None,
        discoveries: Sequence[Any] | None = None,
        bridges: Sequence[Any] | None = None,
    ) -> None:
        """``transports`` (``IMeshTransport``; the first one is the node's mesh) and
        ``bridges`` (``IBridgeTransport``) are built on ``bus``, which must then be given;
        ``discoveries`` (``IDiscovery``) report to the mesh. Whatever is not given is built
        from ``config`` by factory name when the service starts."""
        super().__init__()
        if bus is None and (transports is not None or bridges is not None):
            raise ValueError("transports and bridges handed in need the bus they are on (bus=)")
        self.config = config
        #: Under twistd, a failure that stops the node also ends the process with status 1.
        self.exit_on_failure = exit_on_failure
        if reactor is None:
            from twisted.internet import reactor as default_reactor  # noqa: PLC0415

            reactor = default_reactor
        self.reactor = reactor
        self.bus: Bus | None = bus
        self.transports: list[Any] | None = list(transports) if transports is not None else None
        self.discoveries: list[Any] | None = list(discoveries) if discoveries is not None else None
        self.bridges: list[Any] | None = list(bridges) if bridges is not None else None
        self._listening: Deferred[None] | None = None

    @property
    def mesh(self) -> Any:
        """The node's mesh transport (the first transport), once built."""
        return self.transports[0] if self.transports else None

    @property
    def bridge(self) -> Any:
        """The first bridge, if any (the status reply's ``bridge``)."""
        return self.bridges[0] if self.bridges else None

    # -- building ----------------------------------------------------------------------------

    def _build(self) -> None:
        c = self.config
        if self.bus is None:
            self.bus = Bus(
                reactor=self.reactor,
                replay_size=c.replay_size,
                pod_queue_limit=c.pod_queue_limit,
                slow_pod_policy=c.slow_pod_policy,
            )
        bus, reactor = self.bus, self.reactor
        if self.transports is None:
            name, words = c.transport
            factory = choose(IMeshTransportFactory, name, "--transport")
            options = parse_options(factory, words, "--transport-option")
            self.transports = [factory.transport(bus, c, options, reactor)]
        if not self.transports:
            raise ValueError("a bus node needs a mesh transport")
        if c.status:
            StatusResponder(bus, self.describe)
        if c.log_messages:
            MessageLog(bus)
        if self.discoveries is None:
            self.discoveries = []
            for name, words in c.discovery_choices():
                factory = choose(IDiscoveryFactory, name, "--discovery")
                options = parse_options(factory, words, "--discovery-option")
                self.discoveries.append(factory.discovery(c, options, reactor))
        if self.bridges is None:
            self.bridges = []
            for name, words in c.bridge_choices():
                factory = choose(IBridgeFactory, name, "--bridge")
                options = parse_options(factory, words, "--bridge-option")
                self.bridges.append(factory.bridge(bus, c, options, reactor))

    def describe(self) -> dict[str, Any]:
        """What the status responder answers."""
        assert self.bus is not None and self.mesh is not None
        clients = getattr(self.mesh, "clients", None)  # a transport may serve no clients
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
            "clients": clients.describe() if clients is not None else None,
            "bridge": self.bridge.describe() if self.bridge is not None else None,
            "bridges": [b.describe() for b in self.bridges or ()],
        }

    # -- service lifetime --------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        self._listen()
        super().privilegedStartService()

    def _listen(self) -> None:
        if self._listening is not None:
            return
        try:
            self._build()
        except (usage.UsageError, ValueError) as e:
            raise NodeStartError(f"busnode: {e}") from None
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
        for transport in self.transports or ():
            self.bus.attach(transport)
        for discovery in self.discoveries or ():
            self.bus.attach(discovery)
            d = discovery.start(self._announcement(), self.mesh.found)
            d.addErrback(self._discovery_failed, discovery)
        for bridge in self.bridges or ():
            self.bus.attach(bridge)
            bridge.start().addErrback(self._fatal, f"the bridge {type(bridge).__name__} failed")
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
            bridge="".join(f", bridge {type(b).__name__}" for b in self.bridges or ()),
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
