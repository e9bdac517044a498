"""txloom's RPC transports are found as Twisted plugins and chosen by URL scheme."""

from __future__ import annotations

import pytest
from twisted.python import usage
from zope.interface.verify import verifyObject

from txloom.extensions import available, parse_options
from txloom.interfaces import IRPCClientTransport, IRPCServerTransport, IRPCTransportFactory
from txloom.rpc import Clients, Dispatcher, HandlerRegistry
from txloom.rpc.transports.factories import factory_for_url


def test_stream_factory_builds_both_ends() -> None:
    factory = available(IRPCTransportFactory)["stream"]
    assert verifyObject(IRPCTransportFactory, factory)
    options = parse_options(factory, ["listen=tcp:0", "hello-timeout=3"], "--rpc-option")
    server = factory.server(Clients(), options)
    assert verifyObject(IRPCServerTransport, server)
    assert (server.listen, server.hello_timeout) == ("tcp:0", 3.0)
    client = factory.client("tcp://h:1", "a", Dispatcher(HandlerRegistry()), None, None)
    assert verifyObject(IRPCClientTransport, client)
    with pytest.raises(usage.UsageError):
        parse_options(factory, ["hello-timeout=-1"], "--rpc-option")


def test_urls_choose_the_transport() -> None:
    assert factory_for_url("tcp://h:1").name == "stream"
    assert factory_for_url("unix:///x").name == "stream"
    with pytest.raises(usage.UsageError, match="no RPC transport"):
        factory_for_url("gopher://h:1")


def test_http_factories_and_schemes() -> None:
    factories = available(IRPCTransportFactory)
    assert {"stream", "heartbeat", "longpoll", "grpc"} <= set(factories)
    assert factory_for_url("heartbeat+http://h:1/rpc").name == "heartbeat"
    assert factory_for_url("http://h:1/rpc").name == "longpoll"
    heartbeat = factories["heartbeat"]
    options = parse_options(heartbeat, ["interval=0.5"], "--rpc-option")
    server = heartbeat.server(Clients(), options)
    assert verifyObject(IRPCServerTransport, server)
    assert (server.name, server.interval, server.path) == ("heartbeat", 0.5, b"heartbeat")
    client = factories["longpoll"].client(
        "http://h:1/rpc", "a", Dispatcher(HandlerRegistry()), None, None
    )
    assert verifyObject(IRPCClientTransport, client)
    assert client.target == b"http://h:1/rpc/poll"
