"""Bridges from a bus to a distributed broker (NATS), behind ``IBridgeTransport``.

``txloom.bus.bridge.nats`` imports the NATS client; import it only when bridging.
"""
