"""Three real ``twistd busnode`` processes meshed on loopback, and peers written by hand.

A message is made to originate on a node from outside: a hand-written peer asks node 0 for
its status, and node 0's status responder answers with a *local* message, which node 0
sends to every peer. Every node logs each message it carries (``--log-messages``), which is
how the test sees what reached the pods of each node.
"""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest

from support.bus_peer import TEXT, RawGravPeer, message_json
from support.processes import ChildProcess, free_port, twistd

pytestmark = pytest.mark.slow

FAST = (
    "--reconnect-initial=0.1",
    "--reconnect-max=0.5",
    "--handshake-timeout=1",
    "--withdraw-timeout=0.5",
    "--log-messages",
)
STAMP = "2026-11-22T01:39:07.078658+00:00"


class NodeProcess:
    def __init__(self, cwd: Path, port: int, peers: list[int], *extra: str) -> None:
        self.port = port
        urls = [f"--peer=ws://127.0.0.1:{p}/meta/message" for p in peers]
        self.args = (f"--listen=tcp:{port}:interface=127.0.0.1", *urls, *FAST, *extra)
        self.cwd = cwd
        self.proc: ChildProcess | None = None
        self.uuid = ""

    def start(self) -> NodeProcess:
        self.proc = twistd("busnode", *self.args, cwd=self.cwd).start()
        return self

    def ready(self) -> NodeProcess:
        assert self.proc is not None
        match = self.proc.wait_for(rf"bus node (\S+) .*listening on tcp:127\.0\.0\.1:{self.port}")
        self.uuid = match.group(1)
        self.proc.wait_for(r"bus node \S+ ready")
        return self

    def carried(self, uuid: str) -> int:
        """How many times this node's pods saw message ``uuid``."""
        assert self.proc is not None
        return sum(1 for line in self.proc.output.splitlines() if "bus message " in line
                   and f" {uuid} " in line)  # fmt: skip

    def wait_carried(self, uuid: str, timeout: float = 10) -> None:
        assert self.proc is not None
        self.proc.wait_for(rf"bus message \S+ {re.escape(uuid)} ", timeout)

    def wait_peers(self, uuids: list[str], start: int = 0, timeout: float = 15) -> None:
        assert self.proc is not None
        for uuid in uuids:
            self.proc.wait_for(rf"peer {uuid} joined", timeout, start)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()


def ask_status(peer: RawGravPeer, n: int) -> str:
    """Send a status request as a hand-written message; return the uuid of node's reply."""
    request = f"00000000-0000-4000-8000-{n:012d}"
    peer.send_frame(message_json(request, "txloom.node.status", b"", STAMP))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        msg = peer.recv_json()
        if msg["meta"]["response_to"] == request:
            assert msg["meta"]["msg_type"] == "txloom.node.status.reply"
            return msg["meta"]["uuid"]
    raise AssertionError("no status reply")


@pytest.fixture
def mesh3(tmp_path: Path):
    ports = [free_port() for _ in range(3)]
    nodes = [
        NodeProcess(tmp_path, ports[i], [p for j, p in enumerate(ports) if j != i])
        for i in range(3)
    ]
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.ready()
        for node in nodes:
            node.wait_peers([n.uuid for n in nodes if n is not node])
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def settled_peer(node: NodeProcess, others: list[NodeProcess], n0: int = 1) -> RawGravPeer:
    """A hand-written peer on ``node``, once a reply from it reaches every other node
    (the mesh has settled on one connection per pair)."""
    peer = RawGravPeer(node.port, timeout=10)
    ack = json.loads(peer.handshake("99999999-0000-4000-8000-000000000001"))
    assert ack == {"accept": True, "uuid": node.uuid, "belongsTo": "*", "interests": []}
    n = n0
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        reply = ask_status(peer, n)
        n += 1
        try:
            for other in others:
                other.wait_carried(reply, 2)
            return peer
        except AssertionError:
            continue
    raise AssertionError("the mesh did not settle")


def test_full_mesh_delivers_exactly_once_and_survives_a_restart(mesh3: list[NodeProcess]) -> None:
    a, b, c = mesh3
    with settled_peer(a, [b, c]) as peer:
        status = None
        first = ask_status(peer, 100)
        fence = ask_status(peer, 101)
        for node in (b, c):
            node.wait_carried(fence)
            assert node.carried(first) == 1, node.proc.tail() if node.proc else ""
            assert node.carried(fence) == 1
        assert a.carried(first) == 1  # a's own pods see it once as well

        # the status reply says who a is connected to
        peer.send_frame(message_json("00000000-0000-4000-8000-000000000200",
                                     "txloom.node.status", b"", STAMP))  # fmt: skip
        while status is None:
            msg = peer.recv_json()
            if msg["meta"]["response_to"].endswith("200"):
                import base64

                status = json.loads(base64.b64decode(msg["payload"]["data"]))
        assert status["node"] == a.uuid
        assert {p["node"] for p in status["peers"]} >= {b.uuid, c.uuid}

    # kill b hard and restart it on the same port: a and c redial, delivery resumes
    assert b.proc is not None and a.proc is not None and c.proc is not None
    old_b = b.uuid
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait()
    a.proc.wait_for(rf"peer {old_b} left")
    c.proc.wait_for(rf"peer {old_b} left")
    a_mark, c_mark = len(a.proc.lines), len(c.proc.lines)
    b.start().ready()
    assert b.uuid != old_b
    a.wait_peers([b.uuid], a_mark)
    c.wait_peers([b.uuid], c_mark)
    b.wait_peers([a.uuid, c.uuid])
    with settled_peer(a, [b, c], 300) as peer:
        again = ask_status(peer, 400)
        fence = ask_status(peer, 401)
        for node in (b, c):
            node.wait_carried(fence)
            assert node.carried(again) == 1
    # SIGTERM: every node withdraws and exits 0; the others see it withdraw
    assert c.proc.terminate() == 0
    a.proc.wait_for(rf"peer {c.uuid} withdrew")


def test_wire_conversation_refusal_garbage_and_silence(tmp_path: Path) -> None:
    port = free_port()
    node = NodeProcess(tmp_path, port, []).start().ready()
    try:
        assert node.proc is not None
        # a group that does not match is refused with Grav's exact refusal, then closed
        with RawGravPeer(port) as stranger:
            answer = stranger.handshake("77777777-0000-4000-8000-000000000001", "teamB")
            assert answer == (
                b'{"accept":false,"uuid":"' + node.uuid.encode()
                + b'","belongsTo":"","interests":null}'
            )  # fmt: skip
            assert stranger.wait_closed() == 1000
        node.proc.wait_for(r"refused node 77777777-.* its group 'teamB' does not match")

        # a peer that upgrades but never says who it is: closed after the timeout, logged
        with RawGravPeer(port) as silent:
            started = time.monotonic()
            assert silent.wait_closed() == 4002
            assert time.monotonic() - started < 5
        node.proc.wait_for(r"no Grav handshake within 1\.0s; closing")

        # garbage: frames that are not messages are delivered as websocket.message; broken
        # framing closes only that connection; the node keeps serving
        with RawGravPeer(port) as peer:
            peer.handshake("88888888-0000-4000-8000-000000000001")
            peer.send_frame(b"\x00\x01garbage", TEXT)
            peer.send_frame(b'{"meta":{"uuid":"x","timestamp":"bad"}}')
            node.proc.wait_for(r"bus message websocket\.message ")
            peer.send_raw(b"\x8f\x05hello")  # unmasked, reserved opcode
            assert peer.wait_closed() != 1000
        with RawGravPeer(port) as again:
            ack = json.loads(again.handshake("88888888-0000-4000-8000-000000000002"))
            assert ack["accept"] is True
        assert node.proc.proc is not None and node.proc.proc.poll() is None
        assert node.proc.terminate() == 0
        assert "Traceback" not in node.proc.output
    finally:
        node.stop()
