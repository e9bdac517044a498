"""``StaticResolver``: service addresses from a fixed map (configuration, tests)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

from txloom.interfaces import IAddressResolver, IAddressResolverFactory

__all__ = ["StaticResolver", "StaticResolverFactory", "StaticResolverOptions", "parse_map"]


@implementer(IAddressResolver)
class StaticResolver:
    """Resolves each service address to the endpoint strings it was given."""

    def __init__(self, services: Mapping[str, Sequence[str]]) -> None:
        self.services = {name: list(endpoints) for name, endpoints in services.items()}

    def resolve(self, address: str) -> Deferred[list[str]]:
        return succeed(list(self.services.get(address, ())))


def parse_map(words: Sequence[str]) -> dict[str, list[str]]:
    """``["search=tcp:host:7410", "search=tcp:other:7410"]`` -> ``{"search": [both]}``."""
    services: dict[str, list[str]] = {}
    for word in words:
        name, eq, endpoint = word.partition("=")
        if not name or not eq or not endpoint:
            raise usage.UsageError(f"service {word!r}: expected NAME=ENDPOINT")
        services.setdefault(name, []).append(endpoint)
    return services


class StaticResolverOptions(usage.Options):
    """``service=NAME=ENDPOINT`` words, repeatable."""

    def __init__(self) -> None:
        super().__init__()
        self["services"] = []

    def opt_service(self, value: str) -> None:
        """NAME=ENDPOINT (repeatable; several endpoints for one name are balanced)."""
        self["services"].append(value)

    def postOptions(self) -> None:
        self["map"] = parse_map(self["services"])


@implementer(IPlugin, IAddressResolverFactory)
class StaticResolverFactory:
    name = "static"
    description = "a fixed map (service=NAME=ENDPOINT, repeatable)"
    options = StaticResolverOptions

    def resolver(self, options: usage.Options | None) -> StaticResolver:
        return StaticResolver(options["map"] if options is not None else {})
