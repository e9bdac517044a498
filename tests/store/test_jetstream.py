"""``--backend jetstream`` as users run it: real ``twistd storeserver`` processes in front of
one stream on a real three-node NATS cluster, with a node and a server killed mid-run."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import nats
import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.python import usage

from support.nats import (  # noqa: F401
    JetStreamServer,
    NatsCluster,
    jetstream_server,
    nats_cluster,
    on_loop,
)
from support.processes import ChildProcess, twistd
from support.waiting import until
from txloom.store import Fact
from txloom.store.client import StoreClient
from txloom.store.errors import StoreError
from txloom.store.fact import encode_fact, meta_of, normalize_fact
from txloom.store.factories import JetStreamOptions, jetstream_backend
from txloom.store.tap import Options


def test_nats_options_go_with_the_jetstream_backend_and_nothing_else(tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError, match="--nats goes with --backend jetstream"):
        Options().parseOptions(["--nats", "nats://127.0.0.1:4222"])
    with pytest.raises(usage.UsageError, match="0 is not positive"):
        Options().parseOptions(["--backend", "jetstream", "--replicas", "0"])
    options = Options()
    options.parseOptions(
        ["--backend", "jetstream", "--nats", "nats://h1:4222, nats://h2:4222", "--replicas", "3"]
    )
    words = options.config.backend_options
    assert (words["servers"], words["replicas"]) == (["nats://h1:4222", "nats://h2:4222"], 3)


def test_without_the_jetstream_backend_nothing_loads_nats() -> None:
    code = (
        "import sys\n"
        "from txloom.store.tap import Options, makeService\n"
        "options = Options()\n"
        "options.parseOptions(['--data', 'unused'])\n"
        "makeService(options)\n"
        "assert 'nats' not in sys.modules, 'nats was imported'\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]


def record(fact_id: str, t: float, store: str):
    fact = normalize_fact({"id": fact_id, "store": store, "transaction_time": t})
    return encode_fact(fact), meta_of(fact)


def backend_on(server: JetStreamServer, prefix: str):
    options = JetStreamOptions()
    options.parseOptions(["--nats", server.url, "--prefix", prefix])
    return jetstream_backend(reactor, options)


def replayed(backend) -> list[bytes]:
    plan = backend.plan_replay()
    try:
        return [body for batch in plan.batches() for body in batch]
    finally:
        plan.close()


@pytest_twisted.ensureDeferred
async def test_two_backends_on_one_stream_see_each_others_facts_and_snapshots(
    jetstream_server: JetStreamServer,  # noqa: F811
) -> None:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    a, b = backend_on(jetstream_server, prefix), backend_on(jetstream_server, prefix)
    await a.open()
    await b.open()
    try:
        heard: list[int] = []
        b.add_listener(lambda batch: heard.extend(c.seq for c in batch))
        writes = [
            (a if i % 2 else b).append(*record(f"f{i}", float(i), "odd" if i % 2 else "even"))
            for i in range(40)
        ]
        numbers = await defer.gatherResults(writes)
        assert sorted(numbers) == list(range(1, 41))
        await until(lambda: len(heard) == 40, 20, "b to hear every write")
        assert heard == list(range(1, 41))  # in stream order, a's writes among b's
        await a.write_snapshot([record("f3", 3.0, "odd"), record("s1", 0.5, "snap")])
        await until(lambda: replayed(b) == replayed(a), 20, "b to install a's snapshot")
        assert b.fact_count == a.fact_count == 41
        # a later server loads the same facts and snapshot from the streams alone
        c = backend_on(jetstream_server, prefix)
        await c.open()
        assert replayed(c) == replayed(a) and c.last_seq == a.last_seq == 41
        await c.close()
    finally:
        await a.close()
        await b.close()


LISTENING = r"storeserver listening on tcp:127\.0\.0\.1:(\d+)"
WRITERS_PER_SERVER = 4


def storeserver(tmp_path: Path, name: str, nats_urls: str) -> tuple[ChildProcess, str]:
    child = twistd(
        "storeserver",
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--data",
        str(tmp_path / name),
        "--backend",
        "jetstream",
        "--nats",
        nats_urls,
        "--replicas",
        "3",
    ).start()
    port = child.when(LISTENING, timeout=60)
    return child, port


async def stream_leader(urls: str) -> str:
    nc = await nats.connect(urls.split(","))
    try:
        return (await nc.jetstream().stream_info("txloom_facts")).cluster.leader
    finally:
        await nc.close()


class Writer:
    """Writes facts one after another through one server until told to stop; keeps the
    ids the server acknowledged and stops at the first failure (its server died)."""

    def __init__(self, client: StoreClient, name: str) -> None:
        self.client = client
        self.name = name
        self.acked: list[str] = []
        self.failed: str | None = None
        self.stopping = False

    async def run(self) -> None:
        n = 0
        while not self.stopping:
            fact = Fact.build(store="orders", key=f"{self.name}-{n}", value=n)
            try:
                await self.client.write_fact(fact)
            except (StoreError, defer.TimeoutError) as e:
                self.failed = repr(e)
                return
            self.acked.append(fact.id)
            n += 1


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_writers_through_two_servers_survive_a_node_and_a_server_killed(
    tmp_path: Path,
    nats_cluster: NatsCluster,  # noqa: F811
) -> None:
    b, b_port = storeserver(tmp_path, "b", nats_cluster.url)
    a = None
    clients = []
    try:
        b_addr = f"tcp:127.0.0.1:{(await b_port).group(1)}"  # B has created the stream
        # A knows one node (it learns the others from the cluster): the stream's leader,
        # which is killed below, so the stream elects a new leader and A's NATS
        # connection moves to another node mid-run
        leader = nats_cluster.node_named(await on_loop(stream_leader(nats_cluster.url)))
        assert leader is not None
        a, a_port = storeserver(tmp_path, "a", leader.url)
        a_addr = f"tcp:127.0.0.1:{(await a_port).group(1)}"
        clients = [StoreClient(a_addr).start(), StoreClient(b_addr).start()]
        seen: list[Fact] = []
        watcher = StoreClient(a_addr).start()
        clients.append(watcher)
        await watcher.subscribe([], seen.append, since=0)

        writers = [
            Writer(clients[i % 2], f"{'ab'[i % 2]}{i}") for i in range(2 * WRITERS_PER_SERVER)
        ]
        running = [defer.ensureDeferred(w.run()) for w in writers]

        def acked() -> int:
            return sum(len(w.acked) for w in writers)

        await until(lambda: acked() >= 200, 60, "writes before the node is killed")
        leader.stop()
        mark = acked()
        await until(lambda: acked() >= mark + 200, 60, "writes after the node was killed")
        b.kill()
        through_b = [w for w in writers if w.name.startswith("b")]
        await until(lambda: all(w.failed for w in through_b), 30, "B's writers to fail")
        mark = acked()
        await until(lambda: acked() >= mark + 100, 60, "writes through A after B died")
        for w in writers:
            w.stopping = True
        await defer.gatherResults(running)

        stored = await clients[0].replay_all()
        ids = Counter(f.id for f in stored)
        acknowledged = [i for w in writers for i in w.acked]
        assert all(ids[i] == 1 for i in acknowledged), "an acknowledged fact is missing or twice"
        assert max(ids.values()) == 1, "a fact was stored twice"
        # the subscriber on A saw every write, B's included, in order, without a gap
        await until(lambda: len(seen) >= len(stored), 30, "the subscriber to catch up")
        assert [f.id for f in seen] == [f.id for f in stored]
        numbers = [f.seq for f in seen]
        assert numbers == sorted(set(numbers))
        assert "NATS connection lost" in a.output  # A's link moved to another node
        from_b = {i for w in through_b for i in w.acked}
        assert from_b and from_b <= {f.id for f in seen}
    finally:
        for client in clients:
            await client.stop()
        if a is not None:
            a.kill()
        b.kill()
