"""Nested-stream services hosted next to the apps: ``twistd workerhost --streams ENDPOINT``.

``StreamMount`` is a child service of the ``WorkerHost``: it runs one ``StreamServer`` for
every stream service it was given (``{name: source_func}``, chosen by the name in each
request's hello) and registers each name with the host's Locator at the server's address,
so clients find them through ``LocatorResolver`` exactly as they find apps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from zope.interface import implementer

from txloom.interfaces import IReplyChannel, IService
from txloom.streams import StreamServer
from txloom.wire.cocaine import HeaderEntry
from txloom.worker import errors
from txloom.worker.host import listen_now

__all__ = ["StreamMount", "StreamServiceEntry"]

#: Version the Locator reports for a nested-stream service.
STREAM_SERVICE_VERSION = 1


@implementer(IService)
class StreamServiceEntry:
    """A stream service as the Locator lists it: a name and an address, no Cocaine methods."""

    version = STREAM_SERVICE_VERSION
    graph: dict[int, Any] = {}

    def __init__(self, name: str) -> None:
        self.name = name

    def invoke(
        self, method: int, args: list[Any], headers: tuple[HeaderEntry, ...], reply: IReplyChannel
    ) -> None:
        reply.error(
            errors.DISPATCH,
            errors.UNKNOWN_METHOD,
            f"{self.name} is a nested-streams service: connect with txloom.streams",
        )


class StreamMount(Service):
    """Serves stream services on one endpoint and publishes them in the Locator."""

    log = Logger()

    def __init__(
        self,
        host: Any,
        endpoint: str,
        services: Mapping[str, Callable[[bytes, dict[str, str]], Any]],
        **options: Any,
    ) -> None:
        self.host = host
        self.services = dict(services)
        self.server = StreamServer(self.services, endpoint=endpoint, **options)
        self.ready: Deferred[None] = Deferred()

    def startService(self) -> None:
        """Listen now (TCP and TLS listens complete at once) and publish; a port that cannot
        be had is a ``HostError``, which ``twistd workerhost`` turns into one line and exit 1."""
        super().startService()
        port = listen_now(self.server.listen(), f"{self.server.options.endpoint} (streams)")
        self._publish(port)

    def _publish(self, port: Any) -> None:
        host, number = self.server.address  # type: ignore[misc]
        if host in ("0.0.0.0", ""):
            host = self.host.service_host
        elif host == "::":
            host = "::1"
        for name in self.services:
            self.host.locator.register(StreamServiceEntry(name), [(host, number)])
        self.log.info(
            "stream services listening on tcp:{host}:{port}: {names}",
            host=host,
            port=number,
            names=", ".join(sorted(self.services)),
        )
        self.ready.callback(None)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        for name in self.services:
            self.host.locator.unregister(name)
        await self.server.stopService()
        for source_func in self.services.values():  # those holding clients release them
            stop = getattr(source_func, "stop", None)
            if stop is not None:
                await maybeDeferred(stop)
