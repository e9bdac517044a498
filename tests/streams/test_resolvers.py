"""Resolvers and stream services are found as Twisted plugins and meet their interfaces."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.python import usage
from zope.interface.verify import verifyObject

from txloom import extensions
from txloom.interfaces import IAddressResolver, IAddressResolverFactory, IStreamServiceFactory
from txloom.streams import StaticResolver


def test_built_in_factories_are_plugins() -> None:
    resolvers = extensions.available(IAddressResolverFactory)
    assert {"static", "locator"} <= set(resolvers)
    for factory in resolvers.values():
        assert verifyObject(IAddressResolverFactory, factory)
    assert "facts" in extensions.available(IStreamServiceFactory)


@pytest_twisted.ensureDeferred
async def test_static_resolver_from_the_command_line_words() -> None:
    factory = extensions.choose(IAddressResolverFactory, "static", "--resolver")
    words = ["service=a=tcp:h1:1", "service=a=tcp:h2:2", "service=b=tcp:h3:3"]
    resolver = factory.resolver(extensions.parse_options(factory, words, "--resolver"))
    assert verifyObject(IAddressResolver, resolver)
    assert await resolver.resolve("a") == ["tcp:h1:1", "tcp:h2:2"]
    assert await resolver.resolve("c") == []
    with pytest.raises(usage.UsageError, match="NAME=ENDPOINT"):
        extensions.parse_options(factory, ["service=nonsense"], "--resolver")


def test_locator_resolver_factory_builds_a_resolver() -> None:
    factory = extensions.choose(IAddressResolverFactory, "locator", "--resolver")
    options = extensions.parse_options(factory, ["locator=127.0.0.1:1"], "--resolver")
    assert verifyObject(IAddressResolver, factory.resolver(options))


def test_static_resolver_is_an_address_resolver() -> None:
    assert verifyObject(IAddressResolver, StaticResolver({}))
