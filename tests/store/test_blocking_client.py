"""Every op through the blocking ``NetworkBackend``, over TCP and over a Unix socket."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from support.store import (
    serve,
    server_config,
    short_tempdir,
    start_server,
    stop_server,
    tcp_address,
    unix_path,
)
from txloom.store import Fact, NetworkBackend, StoreError
from txloom.store.errors import StoreConnectionError


@pytest.fixture(params=["file", "memory"])
def server(request, tmp_path: Path):
    yield from serve(tmp_path / "data", backend=request.param)


def endpoints(service) -> list[tuple[str, str]]:
    return [(tcp_address(service), "tcp"), (unix_path(service), "unix")]


def every_op(address: str, transport: str) -> dict[str, object]:
    out: dict[str, object] = {}
    store = f"tasks-{transport}"
    with NetworkBackend(address=address, transport=transport) as nb:
        assert nb.ping() is True
        events: queue.Queue[Fact] = queue.Queue()
        sub = nb.subscribe([store], events.put)
        facts = [Fact.build(store=store, key=f"k{i}", value={"n": i}) for i in range(5)]
        for fact in facts:
            nb.write_fact(fact)
        out["events"] = [events.get(timeout=10) for _ in facts]
        sub.close()
        replayed = [f for f in nb.replay() if f.store == store]
        out["replay"] = replayed
        out["facts"] = facts
        out["pages"] = list(nb.replay_pages(stores=[store], limit=2))
        out["one_page"] = nb.replay(stores=[store], since=0, limit=2)
        snap = Fact.build(store=store, key="snap", value=1)
        nb.write_snapshot([snap, facts[0]])
        out["after_snapshot"] = [f for f in nb.replay() if f.store == store]
        out["snap"] = snap
        out["compact"] = nb.compact()
        out["after_compact"] = [f for f in nb.replay() if f.store == store]
        out["stats"] = nb.stats()
        with pytest.raises(StoreError) as bad:
            nb.write_fact({"key": "no store"})
        out["error"] = bad.value
    return out


@pytest_twisted.ensureDeferred
async def test_every_op_over_tcp_and_unix(server) -> None:
    for address, transport in endpoints(server):
        out = await deferToThread(every_op, address, transport)
        facts = out["facts"]
        assert out["events"] == facts
        assert [e.seq for e in out["events"]] == sorted(e.seq for e in out["events"])
        assert out["replay"] == facts
        assert out["pages"] == facts
        assert out["one_page"] == facts[:2]
        assert {f.id for f in out["after_snapshot"]} == {f.id for f in facts} | {out["snap"].id}
        assert out["after_compact"] == out["after_snapshot"]
        assert out["compact"]["through"] >= 6
        stats = out["stats"]
        assert stats["facts_written"] >= 5 and stats["backend"] == server.config.backend
        error = out["error"]
        assert error.code == "invalid_fact" and "no store" in error.message


def test_connection_refused_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreConnectionError, match="cannot connect"):
        NetworkBackend(address=str(tmp_path / "nothing.sock"), transport="unix")


@pytest_twisted.ensureDeferred
async def test_threads_share_one_client_safely(server) -> None:
    def hammer() -> int:
        with NetworkBackend(address=tcp_address(server)) as nb:
            errors: list[BaseException] = []

            def writer(n: int) -> None:
                try:
                    for i in range(25):
                        nb.write_fact(Fact.build(store="threads", key=f"{n}-{i}", value=i))
                except BaseException as e:
                    errors.append(e)

            threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not errors, errors
            return len([f for f in nb.replay() if f.store == "threads"])

    assert await deferToThread(hammer) == 100


@pytest_twisted.ensureDeferred
async def test_subscription_reconnects_and_resumes_without_gap(tmp_path: Path) -> None:
    """The server stops and starts again on the same socket; the subscription carries on
    from the last number it delivered, written while it was down or after."""
    with short_tempdir() as sock_dir:
        config = server_config(tmp_path / "data", sock_dir, listen=[f"unix:{sock_dir}/s.sock"])
        path = f"{sock_dir}/s.sock"
        service = await start_server(config)
        events: queue.Queue[Fact] = queue.Queue()

        def write(keys: range) -> None:
            with NetworkBackend(address=path, transport="unix") as nb:
                for key in keys:
                    nb.write_fact(Fact.build(store="tasks", key=key, value=key))

        def first_part():
            nb = NetworkBackend(address=path, transport="unix")
            sub = nb.subscribe(["tasks"], events.put)
            nb.close()
            write(range(3))
            return sub, [events.get(timeout=10).key for _ in range(3)]

        subscription, before = await deferToThread(first_part)
        try:
            await stop_server(service)  # the push connection is closed with it
            service = await start_server(config)
            await deferToThread(write, range(3, 6))
            after = await deferToThread(lambda: [events.get(timeout=10).key for _ in range(3)])
            assert before + after == list(range(6))
            assert subscription.reconnects >= 1 and subscription.last_seq == 6
            await deferToThread(write, range(6, 7))
            assert (await deferToThread(events.get, True, 10)).key == 6
            assert events.empty()  # nothing twice
        finally:
            await deferToThread(subscription.close)
            await stop_server(service)
