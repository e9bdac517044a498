"""Local discovery: two nodes find each other by multicast on loopback, and static peers."""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from support.bus import Inbox, until, within
from txloom.bus import Message
from txloom.bus.discovery import LocalMulticastDiscovery, StaticPeers
from txloom.bus.node import BusNodeConfig, BusNodeService
from txloom.interfaces import IDiscovery
from txloom.wire.grav import Announcement

GROUP = "239.255.255.250"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def joined_or_skip(discovery: LocalMulticastDiscovery, ann: Announcement, found) -> None:
    try:
        await within(discovery.start(ann, found), 5)
    except OSError as e:  # the kernel refuses multicast here
        pytest.skip(f"multicast on loopback is not available: {e}")


def node(udp_port: int) -> BusNodeService:
    return BusNodeService(
        BusNodeConfig(
            listen="tcp:0:interface=127.0.0.1",
            discoveries=[("local", [])],
            discovery_port=udp_port,
            discovery_interface="127.0.0.1",
            discovery_interval=0.2,
            reconnect_initial=0.05,
            withdraw_timeout=0.5,
        )
    )


@pytest_twisted.ensureDeferred
async def test_two_nodes_find_each_other_by_multicast() -> None:
    port = free_udp_port()
    probe = LocalMulticastDiscovery(GROUP, port, "127.0.0.1", interval=60)
    await joined_or_skip(probe, Announcement("probe", 0, "/"), lambda url, uuid: None)
    await probe.stop()
    a, b = node(port), node(port)
    for service in (a, b):
        service.privilegedStartService()
        service.startService()
    try:
        assert a.mesh is not None and b.mesh is not None
        await within(a.mesh.wait_for_peers(1))
        await within(b.mesh.wait_for_peers(1))
        assert [p.node_uuid for p in a.mesh.peers] == [b.mesh.node_uuid]
        assert [p.node_uuid for p in b.mesh.peers] == [a.mesh.node_uuid]
        assert a.bus is not None and b.bus is not None
        inbox = Inbox(b.bus.connect())
        uuid = a.bus.connect().send(Message.new("found.you")).uuid
        await within(inbox.has(uuid))
        # discovery keeps announcing, but nothing more is dialled
        heard = a.discoveries[0].heard
        await until(lambda: a.discoveries[0].heard >= heard + 4, 5, "more announcements")
        assert len(a.mesh.peers) == len(b.mesh.peers) == 1
    finally:
        await a.stopService()
        await b.stopService()


@pytest_twisted.ensureDeferred
async def test_announcements_garbage_and_self_are_ignored() -> None:
    port = free_udp_port()
    found: list[tuple[str, str | None]] = []
    me = LocalMulticastDiscovery(GROUP, port, "127.0.0.1", interval=0.1)
    assert verifyObject(IDiscovery, me)
    await joined_or_skip(me, Announcement("me", 8080, "/meta/message"), lambda *a: found.append(a))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
            s.sendto(b"not json", (GROUP, port))
            s.sendto(b'{"uuid":"other","port":"9090","path":"/mesh"}', (GROUP, port))
        await until(lambda: found, 5, "the other node's announcement")
        await until(lambda: me.heard >= 3, 5, "own announcements")
        assert found[0] == ("ws://127.0.0.1:9090/mesh", "other")
        assert all(uuid == "other" for _, uuid in found)  # never itself
        assert me.ignored == 1
    finally:
        await me.stop()
        await me.stop()  # twice is fine


@pytest_twisted.ensureDeferred
async def test_static_peers_report_every_url_once() -> None:
    found: list[tuple[str, str | None]] = []
    static = StaticPeers(["ws://127.0.0.1:1/meta/message", "10.0.0.2:8080"])
    assert verifyObject(IDiscovery, static)
    await static.start(Announcement("me", 1, "/"), lambda *a: found.append(a))
    assert found == [
        ("ws://127.0.0.1:1/meta/message", None),
        ("ws://10.0.0.2:8080/meta/message", None),
    ]
    await static.stop()
