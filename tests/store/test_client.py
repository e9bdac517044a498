"""The Twisted ``StoreClient``: every op over TCP, Unix and TLS, reconnects, resync."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.application.internet import backoffPolicy
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.ssl import Certificate, optionsForClientTLS

from support.store import (
    running_server,
    serve,
    server_config,
    short_tempdir,
    start_server,
    stop_server,
    tcp_address,
    unix_path,
)
from txloom.store import Fact, StoreError
from txloom.store.client import StoreClient
from txloom.store.config import FsyncPolicy, SlowSubscriberPolicy
from txloom.store.errors import StoreConnectionError


def make_server(tmp_path: Path, **overrides):
    return serve(tmp_path / "data", **overrides)


@pytest.fixture(params=["file", "memory"])
def server(request, tmp_path: Path):
    yield from make_server(tmp_path, backend=request.param)


def client_endpoints(service) -> list[str]:
    host, _, port = tcp_address(service).rpartition(":")
    return [f"tcp:host={host}:port={port}", f"unix:path={unix_path(service)}"]


class Collector:
    """Collects pushed facts; ``wait(n)`` fires once n have arrived."""

    def __init__(self) -> None:
        self.facts: list[Fact] = []
        self._waiting: list[tuple[int, defer.Deferred]] = []

    def __call__(self, fact: Fact) -> None:
        self.facts.append(fact)
        for n, d in list(self._waiting):
            if len(self.facts) >= n:
                self._waiting.remove((n, d))
                d.callback(self.facts[:n])

    def wait(self, n: int, timeout: float = 10.0) -> defer.Deferred:
        if len(self.facts) >= n:
            return defer.succeed(self.facts[:n])
        d: defer.Deferred = defer.Deferred()
        self._waiting.append((n, d))
        return d.addTimeout(timeout, reactor)


async def every_op(endpoint, store: str) -> None:
    client = StoreClient(endpoint).start()
    try:
        assert await client.ping() is True
        got = Collector()
        sub = await client.subscribe([store], got)
        facts = [Fact.build(store=store, key=f"k{i}", value={"n": i}) for i in range(20)]
        # concurrent writes on one connection: pipelined, answered in order
        await defer.gatherResults([client.write_fact(f) for f in facts])
        pushed = await got.wait(20)
        assert sorted(pushed, key=lambda f: f.seq) == pushed
        assert {f.id for f in pushed} == {f.id for f in facts}
        await sub.close()
        replayed = [f for f in await client.replay() if f.store == store]
        assert {f.id for f in replayed} == {f.id for f in facts}
        page = await client.replay(stores=[store], since=0, limit=5)
        assert len(page) == 5
        everything = await client.replay_all(stores=[store], limit=3)
        assert [f.id for f in everything] == [f.id for f in pushed]
        snap = Fact.build(store=store, key="snap", value=0)
        await client.write_snapshot([snap])
        assert snap.id in {f.id for f in await client.replay()}
        report = await client.compact()
        assert report["through"] >= 21
        stats = await client.stats()
        assert stats["facts_written"] >= 20
        with pytest.raises(StoreError) as bad:
            await client.write_fact({"key": "no store"})
        assert bad.value.code == "invalid_fact"
    finally:
        await client.stop()


@pytest_twisted.ensureDeferred
async def test_every_op_over_tcp_and_unix(server) -> None:
    for n, endpoint in enumerate(client_endpoints(server)):
        await every_op(endpoint, f"tasks-{n}")


@pytest_twisted.ensureDeferred
async def test_every_op_over_tls(tls_server) -> None:
    service, cert_file = tls_server
    port = int(service.addresses[0].rsplit(":", 1)[1])
    authority = Certificate.loadPEM(cert_file.read_bytes())
    endpoint = wrapClientTLS(
        optionsForClientTLS("localhost", authority),
        TCP4ClientEndpoint(reactor, "127.0.0.1", port),
    )
    await every_op(endpoint, "tls")


@pytest_twisted.ensureDeferred
async def test_token_is_sent_on_every_connection(tmp_path: Path) -> None:
    async with running_server(tmp_path, backend="memory", auth_token="tok") as service:
        endpoint = client_endpoints(service)[0]
        good = StoreClient(endpoint, token="tok").start()
        got = Collector()
        sub = await good.subscribe([], got)
        await good.write_fact(Fact.build(store="s", key=1, value=1))
        await got.wait(1)
        await sub.close()
        await good.stop()
        bad = StoreClient(endpoint, token="wrong", connect_timeout=1.0).start()
        with pytest.raises(StoreConnectionError):
            await bad.ping()
        await bad.stop()


@pytest_twisted.ensureDeferred
async def test_no_server_fails_after_the_connect_timeout(tmp_path: Path) -> None:
    client = StoreClient(f"unix:path={tmp_path}/none.sock", connect_timeout=0.5).start()
    with pytest.raises(StoreConnectionError, match="no connection"):
        await client.ping()
    await client.stop()


@pytest_twisted.ensureDeferred
async def test_reconnects_and_subscription_resumes_without_gap(tmp_path: Path) -> None:
    with short_tempdir() as sock_dir:
        config = server_config(tmp_path / "data", sock_dir, fsync=FsyncPolicy("never"))
        first = await start_server(config)
        host, _, port = tcp_address(first).rpartition(":")
        config.listen = [f"tcp:{port}:interface={host}"]
        client = StoreClient(
            f"tcp:host={host}:port={port}",
            retry_policy=backoffPolicy(initialDelay=0.05, maxDelay=0.2),
        ).start()
        got = Collector()
        sub = await client.subscribe(["tasks"], got)
        await client.write_fact(Fact.build(store="tasks", key=0, value=0))
        await got.wait(1)
        await stop_server(first)
        client.connect_timeout = 0.5
        with pytest.raises(StoreConnectionError):
            await client.ping()
        client.connect_timeout = 10.0
        # while the subscriber is away, another server process takes writes
        second = await start_server(config)
        try:
            for i in range(1, 6):
                await client.write_fact(Fact.build(store="tasks", key=i, value=i))
            facts = await got.wait(6)
            assert [f.key for f in facts] == [0, 1, 2, 3, 4, 5]
            assert [f.seq for f in facts] == [1, 2, 3, 4, 5, 6]
        finally:
            await client.stop()
            await stop_server(second)
        assert sub.last_seq == 6


@pytest_twisted.ensureDeferred
async def test_overflow_is_healed_by_catching_up(tmp_path: Path) -> None:
    for policy in SlowSubscriberPolicy.ALL:
        async with running_server(
            tmp_path / policy,
            backend="memory",
            subscriber_max_events=20,
            subscriber_max_bytes=1 << 20,
            slow_subscriber=policy,
        ) as service:
            client = StoreClient(client_endpoints(service)[0]).start()
            got = Collector()
            overflows: list[int] = []
            sub = await client.subscribe([], got, on_overflow=overflows.append)
            sub._proto.transport.pauseProducing()  # the subscriber stops reading
            value = "x" * 20_000
            await defer.gatherResults(
                [client.write_fact(Fact.build(store="s", key=i, value=value)) for i in range(300)]
            )
            sub._proto.transport.resumeProducing()
            facts = await got.wait(300, timeout=20)
            assert [f.key for f in facts] == list(range(300))
            assert overflows and sub.overflows >= 1
            await client.stop()
