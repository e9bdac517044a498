"""The suite's three-node NATS cluster (``support.nats.NatsCluster``) does what the tests
that build on it assume: JetStream replicates across real routes, a SIGKILLed node leaves a
quorum behind, and a restarted node rejoins from its own store directory."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest_twisted
from twisted.internet.defer import Deferred

from support.nats import NatsCluster, nats_cluster, on_loop  # noqa: F401


@pytest_twisted.ensureDeferred
async def test_a_replicated_stream_survives_one_node_killed_and_restarted(
    nats_cluster: NatsCluster,  # noqa: F811
) -> None:
    assert len(nats_cluster.urls) == 3
    for node in nats_cluster.nodes:  # JetStream syncs every write on every node
        assert node.monitor("/varz")["jetstream"]["config"]["sync_always"] is True

    async def scenario() -> list[int]:
        nc = await nats.connect(
            nats_cluster.urls, reconnect_time_wait=0.05, max_reconnect_attempts=-1
        )
        try:
            js = nc.jetstream(timeout=10)
            await js.add_stream(name="CHECK", subjects=["check.>"], num_replicas=3)
            seqs = [(await js.publish("check.a", b"1")).seq]
            # kill followers only: a killed stream leader costs a Raft election (seconds),
            # which the store's own tests go through; here the point is quorum and rejoin
            leader = (await js.stream_info("CHECK")).cluster.leader
            first, second = [n for n in nats_cluster.nodes if n.name != leader]
            first.stop()
            seqs.append(await publish_until_acked(js, b"2"))
            await Deferred.asFuture(first.started(), asyncio.get_running_loop())
            # with the restarted node back, the quorum must hold without the other follower
            second.stop()
            seqs.append(await publish_until_acked(js, b"3"))
            info = await js.stream_info("CHECK")
            assert info.state.messages == 3
            return seqs
        finally:
            await nc.close()

    assert await on_loop(scenario()) == [1, 2, 3]


async def publish_until_acked(js, payload: bytes) -> int:
    """Publish until JetStream acknowledges. Right after a node dies the client may still
    write to its dead connection, or the stream may need a new leader: that publish times
    out. The message id makes JetStream drop a retry of a publish that was stored after all."""
    from nats.errors import Error as NatsError

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        try:
            headers = {"Nats-Msg-Id": payload.decode()}
            return (await js.publish("check.a", payload, timeout=1, headers=headers)).seq
        except NatsError as e:
            if loop.time() > deadline:
                raise AssertionError(f"JetStream never acknowledged {payload!r}: {e!r}") from e
            await asyncio.sleep(0.05)


def test_cluster_urls_are_the_nodes_own(tmp_path: Path) -> None:
    cluster = NatsCluster(tmp_path)
    assert cluster.url == ",".join(cluster.urls)
    assert len({n.port for n in cluster.nodes} | {n.cluster_port for n in cluster.nodes}) == 6
