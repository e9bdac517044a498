"""``twistd busnode``: command-line options and the service they make.

    twistd -n busnode --listen tcp:8080 --peer ws://10.0.0.2:8080/meta/message
    twistd -n busnode --discovery local --belongs-to teamA --token-file /etc/txloom/mesh.token
    twistd -n busnode --nats nats://127.0.0.1:4222 --bridge-type orders.created --bridge-type a.b
    twistd -n busnode --discovery file --discovery-option path=/etc/txloom/peers

Other code (the all-in-one node) builds the same service with
``makeService(Options().parse(["--listen", "tcp:8081", "--discovery", "none"]))``.
"""

from __future__ import annotations

import re
import uuid as uuidlib
from collections.abc import Sequence
from pathlib import Path

from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from txloom import systemd
from txloom.bus.bridge.subjects import valid_subject
from txloom.bus.buffer import DEFAULT_REPLAY_SIZE
from txloom.bus.bus import DEFAULT_POD_QUEUE_LIMIT
from txloom.bus.mesh import mesh as mesh_defaults
from txloom.bus.mesh.clients import CLIENT_BACKLOG_LIMIT
from txloom.bus.mesh.urls import DEFAULT_PATH, BadPeerURL, PeerURL
from txloom.bus.node import BusNodeConfig, BusNodeService
from txloom.config import PluginOptions
from txloom.extensions import choose, describe, parse_options
from txloom.interfaces import IBridgeFactory, IDiscoveryFactory, IMeshTransportFactory
from txloom.shutdown import CleanExitOnSignal
from txloom.status.options import status_option, valid_status_endpoint
from txloom.status.site import StatusService
from txloom.wire.grav import MAX_HOPS

__all__ = ["Options", "makeService"]


def _positive(kind: type) -> object:
    def convert(text: str) -> object:
        value = kind(text)
        if value <= 0:
            raise ValueError(f"{text} is not positive")
        return value

    convert.__name__ = kind.__name__
    return convert


class Options(PluginOptions):
    config_section = "busnode"

    synopsis = "[options]"
    longdesc = (
        "Run a message bus node: an in-process bus of pods, meshed over WebSocket with other "
        "nodes (wire-compatible with Grav v0.5 nodes), found through static peers or LAN "
        "multicast, optionally bridged to NATS. Logs where it listens and every peer that "
        "joins or leaves; SIGTERM withdraws from the mesh and exits 0."
    )

    optParameters = [
        [
            "listen",
            "l",
            "tcp:8081:interface=127.0.0.1",
            "Endpoint to serve the mesh on (Twisted endpoint syntax; ssl:PORT:privateKey=K:"
            "certKey=C serves wss). The default listens on loopback only, on the all-in-one "
            "node's bus port; give tcp:PORT to accept other machines. 'none' runs without "
            "listening.",
        ],
        ["path", None, DEFAULT_PATH, "HTTP path of the mesh WebSocket."],
        ["uuid", None, None, "This node's uuid (default: a new random uuid at each start)."],
        [
            "belongs-to",
            "g",
            "*",
            "Group of this node. A dialling peer is accepted when its group equals ours or is '*'.",
        ],
        [
            "token-file",
            None,
            None,
            "File holding a shared token: peers must present it (Authorization: Bearer) and "
            "this node presents it when dialling. Default: no token.",
        ],
        [
            "transport",
            None,
            "websocket",
            "The mesh transport, by factory name.",
        ],
        [
            "discovery-interval",
            None,
            10.0,
            "Seconds between multicast announcements.",
            _positive(float),
        ],
        [
            "discovery-address",
            None,
            "239.255.255.250:9999",
            "Multicast group and port of local discovery.",
        ],
        [
            "discovery-interface",
            None,
            "0.0.0.0",
            "Address of the interface to multicast on (0.0.0.0: the system's choice).",
        ],
        [
            "hop-limit",
            None,
            mesh_defaults.DEFAULT_HOP_LIMIT,
            "With --relay: links a relayed message may cross.",
            int,
        ],
        [
            "handshake-timeout",
            None,
            mesh_defaults.HANDSHAKE_TIMEOUT,
            "Seconds a new connection has to complete the WebSocket and Grav handshakes.",
            _positive(float),
        ],
        [
            "keepalive",
            None,
            mesh_defaults.KEEPALIVE_INTERVAL,
            "Seconds between pings on idle connections (0: none).",
            float,
        ],
        [
            "reconnect-initial",
            None,
            mesh_defaults.RECONNECT_INITIAL,
            "First redial delay in seconds (it doubles per failure).",
            _positive(float),
        ],
        [
            "reconnect-max",
            None,
            mesh_defaults.RECONNECT_MAX,
            "Longest redial delay in seconds.",
            _positive(float),
        ],
        [
            "withdraw-timeout",
            None,
            mesh_defaults.WITHDRAW_TIMEOUT,
            "Seconds to wait for peers to acknowledge a withdraw on shutdown.",
            _positive(float),
        ],
        [
            "max-message-size",
            None,
            mesh_defaults.MAX_MESSAGE_SIZE,
            "Largest WebSocket message accepted from a peer, in bytes.",
            _positive(int),
        ],
        [
            "peer-backlog-limit",
            None,
            mesh_defaults.PEER_BACKLOG_LIMIT,
            "Bytes a slow peer may fall behind before its copies are dropped.",
            _positive(int),
        ],
        [
            "client-backlog-limit",
            None,
            CLIENT_BACKLOG_LIMIT,
            "Bytes a slow bus client may fall behind before the slow-client policy applies.",
            _positive(int),
        ],
        [
            "slow-client-policy",
            None,
            "drop",
            "'drop': drop (and log) what a slow bus client cannot take; 'disconnect': close it.",
        ],
        [
            "tls-trust",
            None,
            None,
            "Directory of PEM CA certificates trusted for wss:// peers (default: the system's).",
        ],
        [
            "replay-size",
            None,
            DEFAULT_REPLAY_SIZE,
            "Messages kept for pods that connect with replay.",
            int,
        ],
        [
            "pod-queue-limit",
            None,
            DEFAULT_POD_QUEUE_LIMIT,
            "Messages a slow pod may have queued before the slow-pod policy applies.",
            _positive(int),
        ],
        [
            "slow-pod-policy",
            None,
            "pause",
            "'pause': stop reading from peers and bridges until slow pods catch up; 'drop': "
            "drop and count what a slow pod cannot take.",
        ],
        ["nats", None, None, "NATS server URL to bridge to (e.g. nats://127.0.0.1:4222)."],
        [
            "nats-prefix",
            None,
            "",
            "Prefix of the NATS subjects (the subject of a message is PREFIX + its type).",
        ],
        status_option(),
    ]

    optFlags = [
        [
            "relay",
            None,
            "Forward messages from one peer to the others (loop-free: by uuid and hop count), "
            "so that a partial mesh reaches every node. Grav nodes do not relay.",
        ],
        ["log-messages", None, "Log one line per message the node carries."],
        ["no-status", None, "Do not answer txloom.node.status requests."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["peers"] = []
        self["bridge"] = []  # message types for the NATS bridge (--bridge-type)
        self["discoveries"] = []
        self["bridges"] = []
        self["transport-options"] = []
        # --help lists what is installed, from the factories found as Twisted plugins
        self.docs["discovery"] += " Installed: " + describe(IDiscoveryFactory) + "."
        self.docs["bridge"] += " Installed: " + describe(IBridgeFactory) + "."
        self.docs["transport"] += " Installed: " + describe(IMeshTransportFactory) + "."

    def opt_discovery(self, name: str) -> None:
        """A discovery to run, by name (repeatable); 'none' adds nothing."""
        if name != "none":
            self["discoveries"].append((name, []))

    def opt_discovery_option(self, word: str) -> None:
        """key=value for the --discovery named last (repeatable)."""
        if not self["discoveries"]:
            raise usage.UsageError("--discovery-option comes after the --discovery it sets")
        self["discoveries"][-1][1].append(word)

    def opt_bridge(self, name: str) -> None:
        """A bridge to run, by name (repeatable; 'nats' needs --nats and --bridge-type)."""
        self["bridges"].append((name, []))

    def opt_bridge_option(self, word: str) -> None:
        """key=value for the --bridge named last (repeatable)."""
        if not self["bridges"]:
            raise usage.UsageError("--bridge-option comes after the --bridge it sets")
        self["bridges"][-1][1].append(word)

    def opt_transport_option(self, word: str) -> None:
        """key=value for the --transport (repeatable)."""
        self["transport-options"].append(word)

    def opt_peer(self, url: str) -> None:
        """A peer to keep connected, ws://HOST:PORT/PATH or wss://... (repeatable)."""
        try:
            self["peers"].append(PeerURL.parse(url).url)
        except BadPeerURL as e:
            raise usage.UsageError(str(e)) from None

    opt_p = opt_peer

    def opt_bridge_type(self, msg_type: str) -> None:
        """A message type to bridge to and from NATS (repeatable; needs --nats)."""
        if not valid_subject(msg_type):
            raise usage.UsageError(
                f"--bridge-type {msg_type!r}: a bridged type must be a valid NATS subject "
                "(no spaces, '*' or '>', no empty tokens)"
            )
        self["bridge"].append(msg_type)

    def parse(self, args: Sequence[str]) -> Options:
        """Parse ``args`` (as the all-in-one node does) and return self."""
        self.parseOptions(list(args))
        return self

    def postOptions(self) -> None:
        self["status"] = valid_status_endpoint(self["status"])
        if self["listen"] == "none":
            self["listen"] = None
        else:
            try:
                from twisted.internet import reactor  # noqa: PLC0415

                serverFromString(reactor, self["listen"])
            except Exception as e:
                raise usage.UsageError(f"--listen {self['listen']!r}: {e}") from None
        if not self["path"].startswith("/"):
            raise usage.UsageError("--path must start with /")
        if self["uuid"] is not None:
            try:
                uuidlib.UUID(self["uuid"])
            except ValueError:
                raise usage.UsageError(f"--uuid {self['uuid']!r} is not a uuid") from None
        self._check_extensions()
        group, _, port = self["discovery-address"].rpartition(":")
        if not group or not port.isdigit() or not 0 < int(port) < 65536:
            raise usage.UsageError("--discovery-address must be GROUP:PORT")
        self["discovery-group"], self["discovery-port"] = group, int(port)
        if self["slow-client-policy"] not in ("drop", "disconnect"):
            raise usage.UsageError("--slow-client-policy must be 'drop' or 'disconnect'")
        if self["slow-pod-policy"] not in ("pause", "drop"):
            raise usage.UsageError("--slow-pod-policy must be 'pause' or 'drop'")
        if not 1 <= self["hop-limit"] <= MAX_HOPS:
            raise usage.UsageError(f"--hop-limit must be within 1..{MAX_HOPS}")
        if not self["keepalive"] >= 0:
            raise usage.UsageError("--keepalive must be 0 (no pings) or a positive number")
        if self["replay-size"] < 0:
            raise usage.UsageError("--replay-size must not be negative")
        self["token"] = None
        if self["token-file"] is not None:
            try:
                token = Path(self["token-file"]).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as e:
                raise usage.UsageError(f"--token-file: {e}") from None
            if not token:
                raise usage.UsageError(f"--token-file {self['token-file']} is empty")
            self["token"] = token
        nats_words = [w for name, words in self["bridges"] if name == "nats" for w in words]
        nats_on = bool(self["nats"]) or any(name == "nats" for name, _ in self["bridges"])
        if self["bridge"] and not nats_on:
            raise usage.UsageError("--bridge-type needs --nats URL")
        if nats_on and not (self["nats"] or any(w.startswith("url=") for w in nats_words)):
            raise usage.UsageError("--bridge nats needs --nats URL")
        if nats_on and not (self["bridge"] or any(w.startswith("type=") for w in nats_words)):
            raise usage.UsageError("--nats needs at least one --bridge-type TYPE")
        if self["nats"]:
            if not re.fullmatch(r"(nats|tls)://[^\s/]+", self["nats"]):
                raise usage.UsageError("--nats must look like nats://HOST:PORT")
            if self["nats-prefix"] and not valid_subject(self["nats-prefix"] + "x"):
                raise usage.UsageError("--nats-prefix must be subject tokens ending in '.'")

    def _check_extensions(self) -> None:
        """Every chosen extension is installed and its options parse (one line if not)."""
        checks = [
            (
                IMeshTransportFactory,
                "--transport",
                [(self["transport"], self["transport-options"])],
            ),
            (IDiscoveryFactory, "--discovery", self["discoveries"]),
            (IBridgeFactory, "--bridge", self["bridges"]),
        ]
        for interface, flag, chosen in checks:
            names = [name for name, _ in chosen]
            for name, words in chosen:
                if names.count(name) > 1:
                    raise usage.UsageError(f"{flag} {name} is given twice")
                factory = choose(interface, name, flag)
                parse_options(factory, words, f"{flag}-option")

    def config(self) -> BusNodeConfig:
        return BusNodeConfig(
            listen=self["listen"],
            path=self["path"],
            node_uuid=self["uuid"],
            belongs_to=self["belongs-to"],
            token=self["token"],
            peers=list(self["peers"]),
            discoveries=[(name, list(words)) for name, words in self["discoveries"]],
            discovery_interval=self["discovery-interval"],
            discovery_group=self["discovery-group"],
            discovery_port=self["discovery-port"],
            discovery_interface=self["discovery-interface"],
            relay=self["relay"],
            hop_limit=self["hop-limit"],
            handshake_timeout=self["handshake-timeout"],
            keepalive=self["keepalive"],
            reconnect_initial=self["reconnect-initial"],
            reconnect_max=self["reconnect-max"],
            withdraw_timeout=self["withdraw-timeout"],
            max_message_size=self["max-message-size"],
            peer_backlog_limit=self["peer-backlog-limit"],
            client_backlog_limit=self["client-backlog-limit"],
            slow_client_policy=self["slow-client-policy"],
            tls_trust=self["tls-trust"],
            replay_size=self["replay-size"],
            pod_queue_limit=self["pod-queue-limit"],
            slow_pod_policy=self["slow-pod-policy"],
            nats_url=self["nats"],
            bridge_types=list(self["bridge"]),
            nats_prefix=self["nats-prefix"],
            log_messages=self["log-messages"],
            status=not self["no-status"],
            transport=(self["transport"], list(self["transport-options"])),
            bridges=[(name, list(words)) for name, words in self["bridges"]],
        )


def makeService(options: Options) -> BusNodeService:
    """The bus node service for ``twistd busnode`` (and for the all-in-one node).

    SIGTERM withdraws from the mesh, closes every connection and exits 0.
    """
    node = BusNodeService(options.config(), exit_on_failure=True)
    CleanExitOnSignal(node.reactor).setServiceParent(node)
    systemd.ready_when()
    if options["status"]:
        from txloom.status.bus import watch_bus  # noqa: PLC0415 - only when asked for

        StatusService(options["status"], [watch_bus(node)]).setServiceParent(node)
    return node
