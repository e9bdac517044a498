"""Reverse-RPC transports: each only moves the four messages of ``txloom.wire.rpc``.

``stream`` (any Twisted stream endpoint: TCP, Unix, TLS), ``heartbeat`` and ``longpoll``
(HTTP, as ``twisted.web`` resources). Each is built by an ``IRPCTransportFactory`` found as
a Twisted plugin (``txloom.rpc.transports.factories``).
"""
