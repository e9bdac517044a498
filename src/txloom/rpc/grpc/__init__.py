"""Reverse RPC over gRPC, on the seed system's own wire (``aperture.rpc.v1.Coordinator``).

A real aperture agent can join a txloom controller through ``GrpcServerTransport``, and a
txloom agent can join an aperture controller through ``GrpcClientTransport``. The
protobuf messages are generated from ``proto/aperture/rpc/v1/rpc.proto`` and checked in
(``proto/regen.sh`` regenerates them); ``messages`` translates them to txloom's four
messages, so ``Clients`` and ``Dispatcher`` see no difference from the other transports.
"""

from txloom.rpc.grpc.client import GrpcClientTransport
from txloom.rpc.grpc.server import GrpcPeer, GrpcServerTransport

__all__ = ["GrpcClientTransport", "GrpcPeer", "GrpcServerTransport"]
