"""The bus node's own extension factories: the WebSocket mesh, static and local discovery,
the NATS bridge.

They are registered in ``twisted/plugins/txloom_extensions.py`` and found exactly as a
third-party package's factories are (``txloom.extensions``), so ``--discovery NAME`` and
``--bridge NAME`` choose between txloom's and anyone else's alike. Each factory imports its
implementation only when it builds one: loading the dropin must stay cheap. Each also
provides ``IPlugin``, without which Twisted's plugin loader does not collect it.

A factory gets the node's ``BusNodeConfig`` (what the node's own flags said) and its own
parsed options (``--discovery-option key=value`` words after ``--discovery NAME``); an
option it was given wins over the node-wide flag it stands in for.
"""

from __future__ import annotations

from typing import Any

from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

from txloom.interfaces import IBridgeFactory, IDiscoveryFactory, IMeshTransportFactory

__all__ = [
    "LocalDiscoveryFactory",
    "NatsBridgeFactory",
    "StaticPeersFactory",
    "WebSocketMeshFactory",
]


@implementer(IPlugin, IMeshTransportFactory)
class WebSocketMeshFactory:
    name = "websocket"
    description = "Grav-compatible WebSocket mesh (ws:// and wss://)"
    options = None

    def transport(self, bus: Any, config: Any, options: Any, reactor: Any) -> Any:
        from txloom.bus.mesh.mesh import WebSocketMesh  # noqa: PLC0415

        c = config
        return WebSocketMesh(
            bus,
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
            client_backlog_limit=c.client_backlog_limit,
            slow_client_policy=c.slow_client_policy,
            reconnect_initial=c.reconnect_initial,
            reconnect_max=c.reconnect_max,
            withdraw_timeout=c.withdraw_timeout,
            tls_trust_roots=c.tls_trust,
            reactor=reactor,
        )


class StaticPeersOptions(usage.Options):
    def __init__(self) -> None:
        super().__init__()
        self["peers"] = []

    def opt_peer(self, url: str) -> None:
        """A peer URL (repeatable), as --peer takes it."""
        from txloom.bus.mesh.urls import BadPeerURL, PeerURL  # noqa: PLC0415

        try:
            self["peers"].append(PeerURL.parse(url).url)
        except BadPeerURL as e:
            raise usage.UsageError(str(e)) from None


@implementer(IPlugin, IDiscoveryFactory)
class StaticPeersFactory:
    name = "static"
    description = "a fixed list of peers: every --peer URL, and peer=URL options"
    options = StaticPeersOptions

    def discovery(self, config: Any, options: Any, reactor: Any) -> Any:
        from txloom.bus.discovery.static import StaticPeers  # noqa: PLC0415

        extra = options["peers"] if options is not None else []
        return StaticPeers([*config.peers, *extra])


class LocalDiscoveryOptions(usage.Options):
    optParameters = [
        ["interval", None, None, "Seconds between announcements (default --discovery-interval)."],
        ["address", None, None, "GROUP:PORT (default --discovery-address)."],
        ["interface", None, None, "Interface address (default --discovery-interface)."],
    ]

    def postOptions(self) -> None:
        if self["interval"] is not None:
            try:
                self["interval"] = float(self["interval"])
            except ValueError:
                raise usage.UsageError("interval must be a number of seconds") from None
            if not self["interval"] > 0:
                raise usage.UsageError("interval must be positive")
        if self["address"] is not None:
            group, _, port = self["address"].rpartition(":")
            if not group or not port.isdigit() or not 0 < int(port) < 65536:
                raise usage.UsageError("address must be GROUP:PORT")


@implementer(IPlugin, IDiscoveryFactory)
class LocalDiscoveryFactory:
    name = "local"
    description = "Grav-compatible UDP multicast on the LAN"
    options = LocalDiscoveryOptions

    def discovery(self, config: Any, options: Any, reactor: Any) -> Any:
        from txloom.bus.discovery.multicast import LocalMulticastDiscovery  # noqa: PLC0415

        opts = options if options is not None else {}
        group, port = config.discovery_group, config.discovery_port
        if opts.get("address"):
            group, _, port_text = opts["address"].rpartition(":")
            port = int(port_text)
        return LocalMulticastDiscovery(
            group=group,
            port=port,
            interface=opts.get("interface") or config.discovery_interface,
            interval=opts.get("interval") or config.discovery_interval,
            reactor=reactor,
        )


class NatsBridgeOptions(usage.Options):
    optParameters = [
        ["url", None, None, "NATS server URL (default --nats)."],
        ["prefix", None, None, "Subject prefix (default --nats-prefix)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["types"] = []

    def opt_type(self, msg_type: str) -> None:
        """A message type to bridge (repeatable; added to every --bridge-type)."""
        from txloom.bus.bridge.subjects import valid_subject  # noqa: PLC0415

        if not valid_subject(msg_type):
            raise usage.UsageError(f"type {msg_type!r} is not a valid NATS subject")
        self["types"].append(msg_type)


@implementer(IPlugin, IBridgeFactory)
class NatsBridgeFactory:
    name = "nats"
    description = "NATS: one subject per bridged message type"
    options = NatsBridgeOptions

    def bridge(self, bus: Any, config: Any, options: Any, reactor: Any) -> Any:
        from txloom.bus.bridge.nats import NatsBridge  # noqa: PLC0415

        opts = options if options is not None else {"types": []}
        url = opts.get("url") or config.nats_url
        types = [*config.bridge_types, *opts["types"]]
        if not url or not types:
            raise usage.UsageError("--bridge nats needs a URL (--nats) and --bridge-type TYPE")
        prefix = opts.get("prefix")
        return NatsBridge(
            bus,
            url,
            types,
            subject_prefix=config.nats_prefix if prefix is None else prefix,
            reactor=reactor,
        )
