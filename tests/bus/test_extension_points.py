"""The bus node's extension points: every shipped implementation meets its whole contract,
the factories are found as Twisted plugins, and a node runs on extensions handed in."""

from __future__ import annotations

from collections.abc import Callable

import pytest_twisted
from twisted.internet.defer import Deferred, succeed
from twisted.plugin import IPlugin
from zope.interface import implementer
from zope.interface.verify import verifyObject

from support.bus import Inbox, within
from txloom.bus import Bus, Message
from txloom.bus.bridge.nats import NatsBridge
from txloom.bus.discovery.multicast import LocalMulticastDiscovery
from txloom.bus.discovery.static import StaticPeers
from txloom.bus.mesh import WebSocketMesh
from txloom.bus.node import BusNodeConfig, BusNodeService
from txloom.extensions import available
from txloom.interfaces import (
    IBridgeFactory,
    IBridgeTransport,
    IDiscovery,
    IDiscoveryFactory,
    IMeshHub,
    IMeshTransport,
    IMeshTransportFactory,
)
from txloom.wire.grav import Announcement


def test_every_shipped_implementation_meets_its_whole_contract() -> None:
    bus = Bus()
    mesh = WebSocketMesh(bus, listen=None)
    assert verifyObject(IMeshTransport, mesh)
    assert verifyObject(IMeshHub, mesh)
    assert verifyObject(IDiscovery, StaticPeers(["ws://127.0.0.1:1/meta/message"]))
    assert verifyObject(IDiscovery, LocalMulticastDiscovery())
    assert verifyObject(IBridgeTransport, NatsBridge(bus, "nats://127.0.0.1:1", ["a.b"]))


def test_builtin_factories_are_found_as_plugins_and_build_what_they_promise() -> None:
    transports = available(IMeshTransportFactory)
    discoveries = available(IDiscoveryFactory)
    bridges = available(IBridgeFactory)
    assert "websocket" in transports
    assert {"static", "local"} <= set(discoveries)
    assert "nats" in bridges
    for interface, found in [
        (IMeshTransportFactory, transports),
        (IDiscoveryFactory, discoveries),
        (IBridgeFactory, bridges),
    ]:
        for factory in found.values():
            assert verifyObject(interface, factory)
            assert IPlugin.providedBy(factory)
    config = BusNodeConfig(listen=None, peers=["ws://127.0.0.1:1/meta/message"])
    config.nats_url, config.bridge_types = "nats://127.0.0.1:1", ["a.b"]
    bus = Bus()
    assert verifyObject(IMeshTransport, transports["websocket"].transport(bus, config, None, None))
    assert verifyObject(IDiscovery, discoveries["static"].discovery(config, None, None))
    assert verifyObject(IDiscovery, discoveries["local"].discovery(config, None, None))
    assert verifyObject(IBridgeTransport, bridges["nats"].bridge(bus, config, None, None))


@implementer(IDiscovery)
class ListedPeers:
    """A discovery handed in by hand: reports one URL once started."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.announced: Announcement | None = None

    def start(
        self, announcement: Announcement, found: Callable[[str, str | None], None]
    ) -> Deferred[None]:
        self.announced = announcement
        found(self.url, None)
        return succeed(None)

    def stop(self) -> Deferred[None]:
        return succeed(None)


@implementer(IBridgeTransport)
class LoopbackBridge:
    """A bridge handed in by hand: what it is told to inject goes into the bus through the
    public ``Bus.post``, from its own pod."""

    message_types = ("bridged",)

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.pod = bus.connect()
        self.started = False

    def inject(self, msg: Message) -> None:
        self.bus.post(msg, self.pod)

    def start(self) -> Deferred[None]:
        self.started = True
        return succeed(None)

    def stop(self) -> Deferred[None]:
        return succeed(None)

    def describe(self) -> dict:
        return {"started": self.started}


@pytest_twisted.ensureDeferred
async def test_a_node_runs_on_a_mesh_discovery_and_bridge_handed_in() -> None:
    other = WebSocketMesh(Bus(), listen="tcp:0:interface=127.0.0.1")
    await other.start()
    other_in = Inbox(other.bus.connect())
    bus = Bus()
    mesh = WebSocketMesh(bus, listen="tcp:0:interface=127.0.0.1")
    url = f"ws://127.0.0.1:{other.listening_port}/meta/message"
    discovery, bridge = ListedPeers(url), LoopbackBridge(bus)
    assert verifyObject(IDiscovery, discovery) and verifyObject(IBridgeTransport, bridge)
    node = BusNodeService(
        BusNodeConfig(), bus=bus, transports=[mesh], discoveries=[discovery], bridges=[bridge]
    )
    node.privilegedStartService()
    node.startService()
    try:
        assert node.mesh is mesh and bridge.started
        await within(mesh.wait_for_peers(1))
        assert discovery.announced is not None and discovery.announced.uuid == mesh.node_uuid
        bridge.inject(Message.new("bridged", b"from elsewhere"))
        got = await within(other_in.count(1))
        assert got[0].data == b"from elsewhere"
        assert node.describe()["bridges"] == [{"started": True}]
    finally:
        await node.stopService()
        await other.bus.stop()


def test_the_python_examples_of_the_bus_section_of_extending_md_run() -> None:
    import re
    import textwrap
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "extending.md").read_text()
    section = text.split("## Bus discovery and bridges", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks
    scope: dict = {}
    for block in blocks:
        exec(compile(textwrap.dedent(block), "extending.md", "exec"), scope)
    node = scope["node"]
    assert node.mesh is scope["mesh"] and node.bridges == []
    assert [d.urls for d in node.discoveries] == [["ws://10.0.0.2:8080/meta/message"]]
