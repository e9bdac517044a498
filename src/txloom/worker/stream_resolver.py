"""Nested-stream service addresses resolved through a worker host's Locator.

``txloom.streams`` knows only ``IAddressResolver``; this implementation of it lives with
the worker host, so that the streams package never imports worker code. A stream server
mounted on the host (``twistd workerhost --streams ENDPOINT``, see ``stream_mount``)
registers each of its services with the Locator; a client anywhere resolves them here::

    client = StreamClient(LocatorResolver("127.0.0.1:10053"))
"""

from __future__ import annotations

from typing import Any

from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import Deferred
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

from txloom.interfaces import IAddressResolver, IAddressResolverFactory

#: The Locator's well-known port (``txloom.worker.locator``; repeated to keep this cheap).
DEFAULT_LOCATOR_PORT = 10053

__all__ = ["DEFAULT_TEMPLATE", "LocatorResolver", "LocatorResolverFactory", "endpoint_string"]

#: How a (host, port) from the Locator becomes a client endpoint string.
DEFAULT_TEMPLATE = "tcp:host={host}:port={port}"


def endpoint_string(host: str, port: int, template: str = DEFAULT_TEMPLATE) -> str:
    """``template`` filled in; an IPv6 host has its colons escaped for the endpoint parser."""
    if isIPv6Address(host):
        host = host.replace(":", "\\:")
    return template.format(host=host, port=port)


@implementer(IAddressResolver)
class LocatorResolver:
    """Asks the Locator at ``locator`` for a service's endpoints (one connection per ask)."""

    def __init__(
        self,
        locator: str | tuple[str, int] = ("127.0.0.1", DEFAULT_LOCATOR_PORT),
        template: str = DEFAULT_TEMPLATE,
        reactor: Any = None,
    ) -> None:
        self.locator = locator
        self.template = template
        self.reactor = reactor

    def resolve(self, address: str) -> Deferred[list[str]]:
        return Deferred.fromCoroutine(self._resolve(address))

    async def _resolve(self, address: str) -> list[str]:
        # imported here: the dropin that names this module's factory must stay cheap
        from txloom.worker.client import LocatorClient  # noqa: PLC0415
        from txloom.worker.errors import ServiceError  # noqa: PLC0415

        client = LocatorClient(self.locator, self.reactor)
        await client.connect()
        try:
            endpoints, _version, _graph = await client.resolve(address)
        except ServiceError:
            return []  # not registered: no endpoint, which the stream client reports
        finally:
            client.close()
        return [endpoint_string(host, port, self.template) for host, port in endpoints]


class LocatorResolverOptions(usage.Options):
    optParameters = [
        ["locator", None, f"127.0.0.1:{DEFAULT_LOCATOR_PORT}", "The Locator's HOST:PORT."],
        ["template", None, DEFAULT_TEMPLATE, "Endpoint string made of {host} and {port}."],
    ]


@implementer(IPlugin, IAddressResolverFactory)
class LocatorResolverFactory:
    name = "locator"
    description = "a worker host's Locator (locator=HOST:PORT)"
    options = LocatorResolverOptions

    def resolver(self, options: usage.Options | None) -> LocatorResolver:
        if options is None:
            options = LocatorResolverOptions()
            options.parseOptions([])
        return LocatorResolver(options["locator"], options["template"])
