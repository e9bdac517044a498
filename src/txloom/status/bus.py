"""What the status site reports about a bus node (``twistd busnode --status``).

Per peer (labelled by its node uuid): messages sent to it, received from it, relayed on
from it and dropped for it; per pod: its queue depth; and the node's bus, mesh and NATS
bridge counters. All of it is read at scrape time from counters the node keeps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from txloom.status.metrics import ServerCollector, counter, gauge
from txloom.status.site import Watch

if TYPE_CHECKING:
    from txloom.bus.node import BusNodeService

__all__ = ["watch_bus"]

_PEER = ("peer",)

#: Bridge counters (``NatsBridge.describe()``) exported as ``txloom_bus_bridge_<name>_total``.
BRIDGE_COUNTERS = {
    "published": "Messages published to NATS and confirmed.",
    "resent": "Messages sent to NATS again after a reconnect.",
    "received": "Messages taken from NATS onto the bus.",
    "duplicates": "Messages seen twice and dropped.",
    "dropped": "Messages dropped by the bridge.",
    "oversize": "Messages too large for NATS.",
    "rejected": "Messages NATS refused.",
}


def watch_bus(node: BusNodeService) -> Watch:
    """The bus node's metrics and readiness checks."""

    def gather() -> list[Metric]:
        bus, mesh = node.bus, node.mesh
        if bus is None or mesh is None:
            return []
        # another mesh transport may not count per peer or keep mesh stats
        connections = getattr(mesh, "peer_connections", None)
        peers = sorted(connections().items()) if connections is not None else []
        mesh_stats = getattr(mesh, "stats", None)
        families = [
            gauge("txloom_bus_peers", "Peers connected.", len(peers)),
            gauge("txloom_bus_pods", "Pods on the node's bus.", len(bus.pods)),
            counter("txloom_bus_messages", "Messages the bus carried.", bus.stats.messages),
            counter("txloom_bus_dropped", "Pod copies dropped (slow pods).", bus.stats.dropped),
            counter("txloom_bus_pauses", "Times slow pods paused the bus.", bus.stats.pauses),
            gauge("txloom_bus_paused", "1 while slow pods hold the bus paused.", int(bus.paused)),
            counter(
                "txloom_bus_mesh_duplicates",
                "Messages seen twice.",
                getattr(mesh_stats, "duplicates", 0),
            ),
            counter(
                "txloom_bus_mesh_foreign",
                "Frames that were not messages.",
                getattr(mesh_stats, "foreign", 0),
            ),
            gauge(
                "txloom_bus_pod_queue_depth",
                "Messages waiting for each pod's handler.",
                labels=("pod",),
                samples={(str(pod.id),): pod.queued for pod in bus.pods},
            ),
        ]
        for name, attribute, text in (
            ("txloom_bus_peer_messages_out", "sent", "Messages sent to the peer."),
            ("txloom_bus_peer_messages_in", "received", "Messages received from the peer."),
            ("txloom_bus_peer_messages_relayed", "relayed", "Messages relayed on from the peer."),
            ("txloom_bus_peer_messages_dropped", "dropped", "Messages dropped for a slow peer."),
        ):
            families.append(
                counter(
                    name,
                    text,
                    labels=_PEER,
                    samples={(uuid,): getattr(conn, attribute, 0) for uuid, conn in peers},
                )
            )
        bridge = node.bridge
        if bridge is not None:
            described = bridge.describe()
            families.append(
                gauge(
                    "txloom_bus_bridge_connected",
                    "1 while NATS is connected.",
                    int(bool(described.get("connected"))),
                )
            )
            families.append(
                gauge(
                    "txloom_bus_bridge_unconfirmed",
                    "Messages NATS has not confirmed.",
                    described.get("unconfirmed", 0),
                )
            )
            for key, text in BRIDGE_COUNTERS.items():
                families.append(counter(f"txloom_bus_bridge_{key}", text, described.get(key, 0)))
        return families

    def listening() -> str | None:
        mesh = node.mesh
        if node.config.listen is None:
            return None
        listening = mesh is not None and getattr(mesh, "port", None) is not None
        return None if listening else "not listening"

    def bridged() -> str | None:
        if node.bridge is None:
            return None
        return None if node.bridge.describe().get("connected") else "bridge not connected"

    return Watch(
        "bus",
        [ServerCollector(gather, node.reactor)],
        {"listening": listening, "bridge": bridged},
    )
