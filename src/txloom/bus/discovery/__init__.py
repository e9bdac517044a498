"""Finding peers: static lists and Grav-compatible LAN multicast (both ``IDiscovery``)."""

from txloom.bus.discovery.static import StaticPeers

__all__ = ["StaticPeers"]
