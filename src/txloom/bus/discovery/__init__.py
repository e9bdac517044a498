"""Finding peers: static lists and Grav-compatible LAN multicast (both ``IDiscovery``)."""

from txloom.bus.discovery.multicast import LocalMulticastDiscovery
from txloom.bus.discovery.static import StaticPeers

__all__ = ["LocalMulticastDiscovery", "StaticPeers"]
