"""The gRPC transport as an installed extension: found by name, built from options, and
both its ends talking over TLS with a token."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.python import usage
from zope.interface.verify import verifyObject

from support.certs import self_signed_certificate
from support.rpc_grpc import RecordingDispatcher, RecordingRegistry
from support.waiting import until
from txloom.extensions import available, parse_options
from txloom.interfaces import IRPCTransportFactory
from txloom.rpc.grpc.address import parse_listen
from txloom.wire.rpc import Request, Response


def test_the_grpc_factory_is_an_installed_extension() -> None:
    factory = available(IRPCTransportFactory)["grpc"]
    assert verifyObject(IRPCTransportFactory, factory)
    assert factory.schemes == ("grpc", "grpcs")
    options = parse_options(factory, ["listen=tcp:0", "hello-timeout=2"], "--rpc-grpc-option")
    assert options is not None and options["hello-timeout"] == 2.0
    defaults = parse_options(factory, [], "--rpc-grpc-option")
    assert defaults is not None
    assert parse_listen(defaults["listen"]).address == "127.0.0.1:7301"  # loopback by default
    for bad in (["hello-timeout=0"], ["tls-cert=c.pem"], ["asyncio=sometimes"], ["nope=1"]):
        with pytest.raises(usage.UsageError):
            parse_options(factory, bad, "--rpc-grpc-option")


@pytest.mark.parametrize("runner", ["same", "thread"])
@pytest_twisted.ensureDeferred
async def test_txloom_agent_and_controller_over_tls_with_a_token(
    runner: str, tmp_path: Path
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    factory = available(IRPCTransportFactory)["grpc"]
    registry = RecordingRegistry(token="t0k")
    server_options = parse_options(
        factory,
        [f"listen=ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}", f"asyncio={runner}"],
        "--rpc-grpc-option",
    )
    server = factory.server(registry, server_options)
    await server.start()
    dispatcher = RecordingDispatcher()
    client_options = parse_options(
        factory, ["reconnect-initial=0.05", f"asyncio={runner}"], "--rpc-grpc-option"
    )
    url = f"grpcs://127.0.0.1:{server.port}?ca={cert}&server_name=localhost"
    agent = factory.client(url, "secure", dispatcher, "t0k", client_options)
    intruder = factory.client(url, "intruder", RecordingDispatcher(), "wrong", client_options)
    await agent.start()
    await intruder.start()
    try:
        await until(lambda: "secure" in registry.peers, what="the TLS hello")
        registry.peers["secure"].send_request(Request(0, "test.Echo", 1000, b"over tls"))
        await until(lambda: registry.responses, what="the response")
        assert registry.responses == [("secure", Response(0, b"over tls"))]
        await until(lambda: intruder.sessions >= 2, what="the refused agent retrying")
        assert "intruder" not in registry.peers
    finally:
        await intruder.stop()
        await agent.stop()
        await server.stop()
    await until(lambda: registry.departures, what="the departure at stop")
