"""The Locator: resolves a service name to its endpoints, version and method graph.

Every service of the host (the Locator itself, ``logging``, one per app) listens on its own
TCP port; the Locator is the one well-known address (default port 10053).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
        self.services: dict[str, tuple[list[list[Any]], int, dict]] = {}

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

    def unregister(self, name: str) -> None:
        self.services.pop(name, None)

    def resolve(self, name: str) -> tuple[list[list[Any]], int, dict] | None:
        return self.services.get(name)

    def invoke(
        self,
        method: int,
        args: list[Any],
        headers: tuple[HeaderEntry, ...],
        reply: IReplyChannel,
    ) -> None:
        if method == SERVICES:
            reply.value(sorted(self.services))
            return
        if method == RELOAD:
            self._reload(reply)
            return
        if len(args) != 1 or not isinstance(args[0], bytes):
            reply.error(errors.DISPATCH, errors.BAD_ARGUMENTS, "resolve takes [name]")
            return
        found = self.services.get(args[0].decode("utf-8", "replace"))
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
