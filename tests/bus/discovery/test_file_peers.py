"""The static-file discovery of the example distribution txloom-extras: peers listed in a
file, re-read when it changes. Unit tests on a Clock with real files, then end to end: a
``twistd busnode`` that finds it by name as an installed plugin."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.python import usage
from txloom_extras.filepeers import MAX_FILE_SIZE, FilePeers, FilePeersFactory
from zope.interface.verify import verifyObject

from support.bus import within
from support.processes import free_port, twistd
from txloom.bus import Bus, Message
from txloom.bus.mesh import WebSocketMesh
from txloom.extensions import available, parse_options
from txloom.interfaces import IDiscovery, IDiscoveryFactory
from txloom.wire.grav import Announcement

A = "ws://10.0.0.1:8080/meta/message"
B = "ws://10.0.0.2:8080/meta/message"
ME = Announcement("11111111-0000-4000-8000-000000000000", 8080, "/meta/message")


def watch(path: Path) -> tuple[FilePeers, Clock, list[str]]:
    clock, found = Clock(), []
    peers = FilePeers(str(path), interval=1.0, reactor=clock)
    peers.start(ME, lambda url, node: found.append(url))
    return peers, clock, found


def test_peers_are_read_at_start_and_again_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "peers"
    path.write_text(f"# the mesh\n{A}\n\n  {A}  # twice\n10.0.0.3:8080\nnot a url\n")
    peers, clock, found = watch(path)
    assert verifyObject(IDiscovery, peers)
    assert found == [A, "ws://10.0.0.3:8080/meta/message"]  # the bad line is skipped
    clock.advance(5)
    assert peers.readings == 1  # unchanged: not read again
    replacement = tmp_path / "peers.new"
    replacement.write_text(f"{B}\n")
    os.replace(replacement, path)  # as editors save: a new file renamed over the old
    clock.advance(1)
    assert peers.readings == 2
    assert found[-1] == B and peers.peers == [B]
    peers.stop()
    path.write_text(f"{A}\n{B}\n")
    clock.advance(5)
    assert peers.readings == 2  # stopped: no more looks


def test_a_missing_or_oversized_file_gives_no_peers_until_it_is_fixed(tmp_path: Path) -> None:
    path = tmp_path / "peers"
    peers, clock, found = watch(path)
    assert found == [] and peers.peers == []
    path.write_bytes(b"#" * (MAX_FILE_SIZE + 1))
    clock.advance(1)
    assert peers.readings == 0
    path.write_text(f"{A}\n")
    clock.advance(1)
    assert found == [A]
    path.unlink()
    clock.advance(1)
    assert peers.peers == []


def test_the_factory_is_installed_and_checks_its_options() -> None:
    factory = available(IDiscoveryFactory)["file"]
    assert isinstance(factory, FilePeersFactory)
    assert verifyObject(IDiscoveryFactory, factory)
    with pytest.raises(usage.UsageError, match="path=FILE is required"):
        parse_options(factory, [], "--discovery-option")
    with pytest.raises(usage.UsageError, match="interval must be positive"):
        parse_options(factory, ["path=x", "interval=0"], "--discovery-option")
    options = parse_options(factory, ["path=x", "interval=0.5"], "--discovery-option")
    assert factory.discovery(None, options, Clock()).interval == 0.5


@pytest_twisted.ensureDeferred
async def test_twistd_busnode_finds_peers_written_to_the_file_later(tmp_path: Path) -> None:
    other = WebSocketMesh(Bus(), listen="tcp:0:interface=127.0.0.1")
    await other.start()
    path = tmp_path / "peers"
    path.write_text("# nobody yet\n")
    port = free_port()
    node = twistd(
        "busnode",
        f"--listen=tcp:{port}:interface=127.0.0.1",
        "--discovery=file",
        f"--discovery-option=path={path}",
        "--discovery-option=interval=0.05",
        cwd=tmp_path,
    ).start()
    try:
        await node.when(r"peers file .*: 0 peers")
        path.write_text(f"ws://127.0.0.1:{other.listening_port}/meta/message\n")
        await within(other.wait_for_peers(1), 20)
        # the link works: the node answers a status request sent over the mesh
        receipt = other.bus.connect().send(Message.new("txloom.node.status"))
        reply = await within(receipt.wait_until(10, lambda m: m), 20)
        status = json.loads(reply.data)
        assert [p["node"] for p in status["peers"]] == [other.node_uuid]
        assert node.terminate() == 0
        assert "Traceback" not in node.output
    finally:
        node.kill()
        await other.bus.stop()
