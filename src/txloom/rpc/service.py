"""The controller as a Twisted service: a ``Clients`` and the transports that feed it.

Add it to any ``MultiService``; it starts its server transports with the service and
stops them (dropping every agent, whose calls fail with ``cancelled``) when the service
stops. HTTP transports are served from ``resource`` (the ``/rpc/`` directory: mount it in
a ``twisted.web`` tree) unless they were given their own ``listen`` endpoint.

    clients = Clients(token=token)
    controller = RpcControllerService(clients, [
        StreamServerTransport(clients, "tcp:7300"),
        HttpServerTransport(clients, "longpoll"),
    ])
    controller.setServiceParent(application)
    root.putChild(b"rpc", controller.resource)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.web.resource import Resource

from txloom.rpc.clients import Clients

__all__ = ["RpcControllerService"]


class RpcControllerService(Service):
    """Runs ``transports`` (``IRPCServerTransport``) for ``clients``."""

    log = Logger()
    name = "rpc"

    def __init__(self, clients: Clients, transports: Iterable[Any] = ()) -> None:
        self.clients = clients
        self.transports = list(transports)
        #: The ``/rpc/`` directory: one child per HTTP transport (``heartbeat``, ``poll``).
        self.resource = Resource()
        for transport in self.transports:
            leaf = getattr(transport, "resource", None)
            if leaf is not None:
                self.resource.putChild(transport.path, leaf)

    @property
    def has_http(self) -> bool:
        return bool(self.resource.children)

    def startService(self) -> Deferred[Any]:  # type: ignore[override]
        super().startService()
        started = [transport.start() for transport in self.transports]
        d = DeferredList(started, fireOnOneErrback=True, consumeErrors=True)

        def failed(failure: Any) -> Any:
            self.log.error("an RPC transport did not start: {e}", e=failure.value.subFailure)
            return failure.value.subFailure

        return d.addCallbacks(lambda _: None, failed)

    def stopService(self) -> Deferred[Any]:  # type: ignore[override]
        super().stopService()
        self.clients.close_all("controller stopping")
        return DeferredList([t.stop() for t in self.transports]).addCallback(lambda _: None)
