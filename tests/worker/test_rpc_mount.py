"""The worker host's reverse-RPC mount: agents over the stream transport and over HTTP on
the front end, called through the Locator's ``rpc`` service like any Cocaine service."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.python import usage

from support.workerhost import short_tmpdir, start_host, wait_until
from txloom.rpc import Dispatcher
from txloom.rpc.agent import load_handlers
from txloom.rpc.codecs import codec_for, encode_value
from txloom.rpc.examples.echo import Echo
from txloom.rpc.transports.http_client import HttpClientTransport
from txloom.rpc.transports.stream import StreamClientTransport
from txloom.worker import errors
from txloom.worker.client import connect
from txloom.worker.rpc_service import RPC, build_controller
from txloom.worker.tap import Options


@pytest_twisted.ensureDeferred
async def test_agents_are_callable_through_the_locator() -> None:
    with short_tmpdir() as root:
        controller = build_controller(stream="tcp:0:interface=127.0.0.1", http=True)
        host = start_host(root, {}, http=True, rpc=controller)
        agents = []
        try:
            await wait_until(lambda: controller.transports[0].address is not None)
            port = controller.transports[0].address.port
            handlers = load_handlers(["txloom.rpc.examples.echo"])
            agents = [
                StreamClientTransport(f"tcp://127.0.0.1:{port}", "s1", Dispatcher(handlers)),
                HttpClientTransport(
                    f"longpoll+http://127.0.0.1:{host.http_address[1]}/rpc",
                    "h1",
                    Dispatcher(handlers),
                ),
            ]
            for agent in agents:
                await agent.start()
            await wait_until(lambda: len(controller.clients) == 2, what="both agents")
            rpc = await connect("rpc", host.locator_address)
            try:
                listed = await rpc.call("list")
                assert [(a[0], a[1]) for a in listed] == [(b"h1", b"longpoll"), (b"s1", b"stream")]
                payload = encode_value(Echo("hi"))
                answer = await rpc.call("call", "h1", "txloom.examples.Echo", payload, 5)
                assert codec_for(Echo).decode(answer) == Echo("hi")
                everyone = await rpc.call("call_all", "txloom.examples.Echo", payload)
                assert everyone == {b"h1": [True, payload], b"s1": [True, payload]}
                with pytest.raises(errors.ServiceError) as e:
                    await rpc.call("call", "nobody", "txloom.examples.Echo", payload)
                assert (e.value.category, e.value.code) == (RPC, 5)
                assert "not_found" in e.value.reason
                with pytest.raises(errors.ServiceError) as e:
                    await rpc.call("call", "s1", 7, payload)
                assert e.value.code == errors.BAD_ARGUMENTS
            finally:
                rpc.close()
        finally:
            for agent in agents:
                await agent.stop()
            await host.stopService()


def test_tap_options(tmp_path) -> None:
    (tmp_path / "apps").mkdir()
    options = Options()
    with pytest.raises(usage.UsageError, match="--rpc-http needs --http"):
        options.parseOptions(["--apps", str(tmp_path / "apps"), "--rpc-http"])
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    options = Options()
    options.parseOptions(
        ["--apps", str(tmp_path / "apps"), "--rpc", "tcp:0", "--rpc-token-file", str(token)]
    )
    assert (options["rpc"], options["rpc-token"]) == ("tcp:0", "s3cret")


@pytest_twisted.ensureDeferred
async def test_grpc_agents_join_the_host_with_a_token(tmp_path) -> None:
    from txloom.extensions import available
    from txloom.interfaces import IRPCTransportFactory

    with short_tmpdir() as root:
        controller = build_controller(grpc="tcp:0:interface=127.0.0.1", token="s3cret")
        host = start_host(root, {}, rpc=controller)
        agent = None
        try:
            grpc = controller.transports[0]
            await wait_until(lambda: grpc.port is not None)
            factory = available(IRPCTransportFactory)["grpc"]
            handlers = load_handlers(["txloom.rpc.examples.echo"])
            url = f"grpc://127.0.0.1:{grpc.port}"
            agent = factory.client(url, "g1", Dispatcher(handlers), "s3cret", None)
            await agent.start()
            await wait_until(lambda: "g1" in controller.clients, what="the gRPC agent")
            rpc = await connect("rpc", host.locator_address)
            try:
                assert [a[1] for a in await rpc.call("list")] == [b"grpc"]
                payload = encode_value(Echo("over grpc"))
                answer = await rpc.call("call", "g1", "txloom.examples.Echo", payload, 5)
                assert codec_for(Echo).decode(answer) == Echo("over grpc")
            finally:
                rpc.close()
        finally:
            if agent is not None:
                await agent.stop()
            await host.stopService()
