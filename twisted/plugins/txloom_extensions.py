"""txloom's own extensions, found by ``txloom.extensions`` exactly as a third-party
package's would be: one factory instance per extension, nothing else.

Each factory imports its implementation only when it builds one, so loading this dropin
stays cheap. Sections follow ``txloom.interfaces``.
"""

# Store server: IStorageBackendFactory
from txloom.store.factories import (
    FileBackendFactory,
    JetStreamBackendFactory,
    MemoryBackendFactory,
)

file_backend = FileBackendFactory()
memory_backend = MemoryBackendFactory()
jetstream_backend = JetStreamBackendFactory()

# Worker host: IWorkerLauncherFactory
from txloom.worker.launchers import ProcessLauncherFactory  # noqa: E402

process_launcher = ProcessLauncherFactory()

# Reverse RPC: IRPCTransportFactory
from txloom.rpc.grpc.factory import GrpcTransportFactory  # noqa: E402
from txloom.rpc.transports.factories import (  # noqa: E402
    HeartbeatTransportFactory,
    LongPollTransportFactory,
    StreamTransportFactory,
)

rpc_grpc = GrpcTransportFactory()
rpc_stream = StreamTransportFactory()
rpc_heartbeat = HeartbeatTransportFactory()
rpc_longpoll = LongPollTransportFactory()

# Nested streams: IAddressResolverFactory, IStreamServiceFactory
from txloom.facts_streams import FactsServiceFactory  # noqa: E402
from txloom.streams.resolvers import StaticResolverFactory  # noqa: E402
from txloom.worker.stream_resolver import LocatorResolverFactory  # noqa: E402

streams_static = StaticResolverFactory()
streams_locator = LocatorResolverFactory()
streams_facts = FactsServiceFactory()

# Bus node: IDiscoveryFactory, IMeshTransportFactory, IBridgeFactory

from txloom.bus.factories import (  # noqa: E402 (one section per capability)
    LocalDiscoveryFactory,
    NatsBridgeFactory,
    StaticPeersFactory,
    WebSocketMeshFactory,
)

bus_mesh_websocket = WebSocketMeshFactory()
bus_discovery_static = StaticPeersFactory()
bus_discovery_local = LocalDiscoveryFactory()
bus_bridge_nats = NatsBridgeFactory()
