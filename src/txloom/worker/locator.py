"""The Locator: resolves a service name to its endpoints, version and method graph.

Every service of the host (the Locator itself, ``logging``, one per app) listens on its own
TCP port; the Locator is the one well-known address (default port 10053). In a cluster
(``workerhost --cluster``) it also answers for the services of the other hosts
(``remote``), its own coming first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.logger import Logger
from zope.interface import implementer

from txloom.interfaces import IReplyChannel, IService
from txloom.wire.cocaine import HeaderEntry
from txloom.worker import errors
from txloom.worker.dispatch import PRIMITIVE, TERMINAL, graph_to_wire

#: The Locator's default TCP port and the version it reports.
DEFAULT_LOCATOR_PORT = 10053
LOCATOR_VERSION = 3

RESOLVE = 0
#: txloom's addition (not a Cocaine method id): the names of every published service, so
#: that an operator's tool can list the apps without knowing them first.
SERVICES = 16
#: txloom's addition: re-read the host's apps directory (as SIGHUP does); the reply maps
#: ``added``/``changed``/``removed``/``unchanged``/``failed`` to app names.
RELOAD = 17


Resolved = tuple[list[list[Any]], int, dict]


class RemoteServices(Protocol):
    """Services published by other hosts (``txloom.worker.cluster.HostCluster``)."""

    def resolve(self, name: str) -> Resolved | None: ...

    def names(self) -> set[str]: ...


@implementer(IService)
class Locator:
    """The name service of one host."""

    log = Logger()
    name = "locator"
    version = LOCATOR_VERSION
    graph = {
        RESOLVE: ("resolve", TERMINAL, PRIMITIVE),
        SERVICES: ("services", TERMINAL, PRIMITIVE),
        RELOAD: ("reload", TERMINAL, PRIMITIVE),
    }

    def __init__(self, reload: Callable[[], dict[str, list[str]]] | None = None) -> None:
        #: The host's reload; raises ``ReloadError`` when it changes nothing.
        self.reload = reload
        #: name -> (endpoints, version, wire graph)
        self.services: dict[str, Resolved] = {}
        #: Where names this host does not publish are looked up (None: not in a cluster).
        self.remote: RemoteServices | None = None
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every register and unregister (the cluster republishes
        the host's entry)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                self.log.failure("locator change listener failed")

    def register(self, service: IService, endpoints: list[tuple[str, int]]) -> None:
        self.services[service.name] = (
            [[host, port] for host, port in endpoints],
            service.version,
            graph_to_wire(service.graph),
        )
        self.log.info(
            "locator: {name} (version {version}) at {endpoints}",
            name=service.name,
            version=service.version,
            endpoints=", ".join(f"{h}:{p}" for h, p in endpoints),
        )
        self._changed()

    def unregister(self, name: str) -> None:
        if self.services.pop(name, None) is not None:
            self._changed()

    def resolve(self, name: str) -> Resolved | None:
        """This host's service ``name``, else another host's, else None."""
        found = self.services.get(name)
        if found is None and self.remote is not None:
            found = self.remote.resolve(name)
        return found

    def names(self) -> list[str]:
        """Every service this Locator resolves, sorted."""
        names = set(self.services)
        if self.remote is not None:
            names |= self.remote.names()
        return sorted(names)

    def invoke(
        self,
        method: int,
        args: list[Any],
        headers: tuple[HeaderEntry, ...],
        reply: IReplyChannel,
    ) -> None:
        if method == SERVICES:
            reply.value(self.names())
            return
        if method == RELOAD:
            self._reload(reply)
            return
        if len(args) != 1 or not isinstance(args[0], bytes):
            reply.error(errors.DISPATCH, errors.BAD_ARGUMENTS, "resolve takes [name]")
            return
        found = self.resolve(args[0].decode("utf-8", "replace"))
        if found is None:
            reply.error(errors.LOCATOR, errors.SERVICE_NOT_AVAILABLE, "service is not available")
            return
        reply.value(*found)

    def _reload(self, reply: IReplyChannel) -> None:
        from txloom.worker.reload import ReloadError  # noqa: PLC0415 - reload imports manifests

        if self.reload is None:
            reply.error(errors.DISPATCH, errors.NOT_IMPLEMENTED, "this host cannot reload")
            return
        try:
            reply.value(self.reload())
        except ReloadError as e:
            reply.error(errors.ENGINE, errors.RELOAD_REFUSED, str(e))
