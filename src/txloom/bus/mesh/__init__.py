"""The Grav-compatible WebSocket mesh between bus nodes."""

from txloom.bus.mesh.dialer import PeerDialer
from txloom.bus.mesh.mesh import (
    DEFAULT_HOP_LIMIT,
    HANDSHAKE_TIMEOUT,
    MAX_MESSAGE_SIZE,
    MeshStats,
    PeerInfo,
    WebSocketMesh,
)
from txloom.bus.mesh.urls import DEFAULT_PATH, DEFAULT_PORT, BadPeerURL, PeerURL

__all__ = [
    "DEFAULT_HOP_LIMIT",
    "DEFAULT_PATH",
    "DEFAULT_PORT",
    "HANDSHAKE_TIMEOUT",
    "MAX_MESSAGE_SIZE",
    "BadPeerURL",
    "MeshStats",
    "PeerDialer",
    "PeerInfo",
    "PeerURL",
    "WebSocketMesh",
]
