"""Stream services hosted by a running worker host, found through its Locator; ``facts``."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from support.store import running_server, tcp_address
from support.workerhost import short_tmpdir, start_host
from txloom.facts_streams import FactsServiceFactory
from txloom.interfaces import IAddressResolver
from txloom.store.client import StoreClient
from txloom.store.fact import Fact
from txloom.streams import NoEndpoint, RequestRefused, Source, StreamClient
from txloom.worker.stream_mount import StreamMount
from txloom.worker.stream_resolver import LocatorResolver


@pytest_twisted.ensureDeferred
async def test_discovery_through_the_locator_of_a_running_host() -> None:
    with short_tmpdir() as root:
        host = start_host(root, {})
        mount = StreamMount(
            host,
            "tcp:0:interface=127.0.0.1",
            {"numbers": lambda body, tags: [Source(b"n", [b"%d" % i for i in range(int(body))])]},
        )
        mount.setServiceParent(host)
        await mount.ready
        try:
            resolver = LocatorResolver(host.locator_address)
            assert verifyObject(IAddressResolver, resolver)
            (endpoint,) = await resolver.resolve("numbers")
            assert endpoint == f"tcp:host=127.0.0.1:port={mount.server.address[1]}"
            client = StreamClient(resolver)
            assert await client.post("numbers", b"3").collect() == [(b"n", [b"0", b"1", b"2"])]
            assert await resolver.resolve("nonesuch") == []
            with pytest.raises(NoEndpoint):
                await client.post("nonesuch", b"").collect()
            # to Cocaine clients it is a service with no methods
            _, version, graph = host.locator.resolve("numbers")
            assert graph == {} and version == 1
        finally:
            await host.stopService()
        assert "numbers" not in host.locator.services


@pytest_twisted.ensureDeferred
async def test_facts_service_streams_each_store_in_order(tmp_path) -> None:
    async with running_server(tmp_path, backend="memory") as store_server:
        address = tcp_address(store_server)
        writer = StoreClient(f"tcp:{address}").start()
        try:
            for i in range(30):
                for store in ("a", "b", "c"):
                    await writer.write_fact(Fact.build(store=store, key=f"k{i}", value={"i": i}))
        finally:
            await writer.stop()
        factory = FactsServiceFactory()
        options = factory.options()
        options.parseOptions(["--store", f"tcp:{address}", "--page", "7"])
        with short_tmpdir() as root:
            host = start_host(root, {})
            mount = StreamMount(
                host, "tcp:0:interface=127.0.0.1", {"facts": factory.source_function(options)}
            )
            mount.setServiceParent(host)
            await mount.ready
            try:
                client = StreamClient(LocatorResolver(host.locator_address), frame_buffer=4)
                request = client.post("facts", b"a\nc\n")
                a = await request.next_source()
                c = await request.next_source()
                assert (a.header, c.header) == (b"a", b"c")
                # c is read to the end while a waits: each store paced by its own reader
                c_facts = [Fact.from_dict(json.loads(f)) async for f in c]
                a_facts = [Fact.from_dict(json.loads(f)) async for f in a]
                for store, facts in (("a", a_facts), ("c", c_facts)):
                    assert [f.store for f in facts] == [store] * 30
                    assert [f.value["i"] for f in facts] == list(range(30))
                assert await request.next_source() is None
                with pytest.raises(RequestRefused, match="UTF-8"):
                    await client.post("facts", b"\xff").collect()
            finally:
                await host.stopService()


def test_workerhost_stream_options(tmp_path) -> None:
    from twisted.python import usage

    from txloom.worker.tap import Options

    def parse(*words: str) -> Options:
        options = Options()
        options.parseOptions(["--apps", str(tmp_path), *words])
        return options

    with pytest.raises(usage.UsageError, match="needs at least one --stream-service"):
        parse("--streams", "tcp:0")
    with pytest.raises(usage.UsageError, match="needs --streams"):
        parse("--stream-service", "facts")
    with pytest.raises(usage.UsageError, match="not installed"):
        parse("--streams", "tcp:0", "--stream-service", "nonesuch")
    options = parse("--streams", "tcp:0", "--stream-service", "facts store=tcp:127.0.0.1:1")
    ((factory, settings),) = options["stream-services"]
    assert factory.name == "facts" and settings["store"] == "tcp:127.0.0.1:1"


@pytest_twisted.ensureDeferred
async def test_streams_port_in_use_is_a_host_error() -> None:
    import socket

    from txloom.worker.host import HostError

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with short_tmpdir() as root:
            host = start_host(root, {})
            try:
                endpoint = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
                mount = StreamMount(host, endpoint, {"x": lambda b, t: []})
                with pytest.raises(HostError, match="streams"):
                    mount.startService()
                assert "x" not in host.locator.services
            finally:
                await host.stopService()
    finally:
        taken.close()
