"""Both backends behind IStorageBackend: order, numbering, snapshots, compaction, restarts."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from zope.interface.verify import verifyObject

from support.nats import jetstream_server  # noqa: F401
from txloom import extensions
from txloom.interfaces import IReplayPlan, IStorageBackend, IStorageBackendFactory
from txloom.store.backend import StoreBackend, file_backend
from txloom.store.config import FsyncPolicy, StoreConfig
from txloom.store.fact import encode_fact, meta_of, normalize_fact


def record(fact_id: str | None, t: float, store: str = "tasks", key: object = None):
    fact = normalize_fact({"id": fact_id, "store": store, "key": key, "transaction_time": t})
    return encode_fact(fact), meta_of(fact)


def replayed(backend: StoreBackend) -> list[tuple[str | None, float]]:
    plan = backend.plan_replay()
    try:
        facts = [json.loads(b) for batch in plan.batches() for b in batch]
    finally:
        plan.close()
    return [(f["id"], f["transaction_time"]) for f in facts]


async def page(backend: StoreBackend, since: int, stores=None, limit=None, budget=1 << 20):
    plan = await backend.page(since, stores, limit=limit, budget=budget)
    try:
        ids = [json.loads(b)["id"] for batch in plan.batches() for b in batch]
    finally:
        plan.close()
    return ids, plan.next, plan.more


def build(kind: str, path: Path, fsync: str = "always", words: Sequence[str] = ()) -> StoreBackend:
    """A backend as ``twistd storeserver --backend KIND`` builds it: by its factory."""
    config = StoreConfig(data_dir=str(path), fsync=FsyncPolicy.parse(fsync))
    factory = extensions.choose(IStorageBackendFactory, kind, "--backend")
    options = extensions.parse_options(factory, words, "--backend-option")
    return factory.backend(reactor, config, options)


#: Every backend runs the same behaviour tests; ``sqlite`` comes from the example
#: distribution under examples/txloom-extras, installed as a third party would be;
#: ``jetstream`` runs on one JetStream server for the whole run, a stream per test.
KINDS = ["file", "memory", "sqlite", "jetstream"]
DURABLE = ["file", "sqlite", "jetstream"]


def option_words(request, kind: str) -> list[str]:
    """``--backend-option`` words: for jetstream, the run's server and a stream of this
    test's own."""
    if kind != "jetstream":
        return []
    server = request.getfixturevalue("jetstream_server")
    return [f"nats={server.url}", f"prefix=t{uuid.uuid4().hex[:12]}"]


@pytest.fixture(params=KINDS)
def make_backend(request, tmp_path: Path):
    opened: list[StoreBackend] = []
    words = option_words(request, request.param)

    def make(fsync: str = "always") -> StoreBackend:
        backend = build(request.param, tmp_path / "data", fsync, words)
        opened.append(backend)
        return backend

    make.kind = request.param  # type: ignore[attr-defined]
    yield make
    for backend in opened:
        pytest_twisted.blockon(backend.close())


@pytest_twisted.ensureDeferred
async def test_backends_provide_the_interface(make_backend) -> None:
    backend = make_backend()
    await backend.open()
    assert verifyObject(IStorageBackend, backend)
    plan = backend.plan_replay()
    assert verifyObject(IReplayPlan, plan)
    plan.close()
    assert backend.durable == (make_backend.kind in DURABLE)


@pytest_twisted.ensureDeferred
async def test_appends_get_consecutive_numbers_in_call_order(make_backend) -> None:
    backend = make_backend()
    await backend.open()
    seqs = await defer.gatherResults([backend.append(*record(f"f{i}", i)) for i in range(50)])
    assert seqs == list(range(1, 51))
    assert backend.last_seq == 50 and backend.fact_count == 50


@pytest_twisted.ensureDeferred
async def test_concurrent_writes_share_group_commits(tmp_path: Path) -> None:
    backend = file_backend(reactor, str(tmp_path), FsyncPolicy("always"))
    await backend.open()
    syncs = []
    volume = backend.wal.active.volume
    volume_sync = volume.sync
    volume.sync = lambda: (syncs.append(1), volume_sync())[1]
    await defer.gatherResults([backend.append(*record(f"f{i}", i)) for i in range(200)])
    await backend.close()
    assert 1 <= len(syncs) < 20, f"{len(syncs)} fsyncs for 200 concurrent writes"


@pytest_twisted.ensureDeferred
async def test_replay_orders_by_time_then_arrival(make_backend) -> None:
    backend = make_backend()
    await backend.open()
    for fact_id, t in [("c", 3.0), ("a", 1.0), ("b1", 2.0), ("b2", 2.0), ("z", 0.5)]:
        await backend.append(*record(fact_id, t))
    assert [i for i, _ in replayed(backend)] == ["z", "a", "b1", "b2", "c"]


@pytest_twisted.ensureDeferred
async def test_snapshot_semantics_match_the_reference(make_backend) -> None:
    """The vector's sequence: writes, a snapshot with one new fact, then replay."""
    backend = make_backend()
    await backend.open()
    await backend.append(*record("11111111-2222-4333-8444-555555555555", 1700000000.0))
    await backend.append(*record(None, 1700000001.5))
    await backend.append(*record("sub-1", 1700000000.0))
    await backend.append(*record("sub-2", 1700000000.0, store="other"))
    await backend.write_snapshot([record("snap-only", 1.0)])
    assert replayed(backend) == [
        ("snap-only", 1.0),
        ("11111111-2222-4333-8444-555555555555", 1700000000.0),
        ("sub-1", 1700000000.0),
        ("sub-2", 1700000000.0),
        (None, 1700000001.5),
    ]
    # the snapshot-only fact took the next number; a later write follows it
    assert await backend.append(*record("after", 5.0)) == 6
    ids, nxt, more = await page(backend, 0)
    vector_id = "11111111-2222-4333-8444-555555555555"
    assert ids == [vector_id, None, "sub-1", "sub-2", "snap-only", "after"]
    assert (nxt, more) == (6, False)


@pytest_twisted.ensureDeferred
async def test_snapshot_facts_hide_log_facts_and_keep_their_numbers(make_backend) -> None:
    backend = make_backend()
    await backend.open()
    for i in range(1, 6):
        await backend.append(*record(f"f{i}", float(i), key="old"))
    # the snapshot restates f2 and f4 (new content), and adds one fact
    await backend.write_snapshot(
        [record("f4", 4.0, key="new"), record("f2", 2.0, key="new"), record("n1", 9.0)]
    )
    plan = backend.plan_replay()
    facts = [json.loads(b) for batch in plan.batches() for b in batch]
    plan.close()
    assert [(f["id"], f["key"]) for f in facts] == [
        ("f1", "old"),
        ("f2", "new"),
        ("f3", "old"),
        ("f4", "new"),
        ("f5", "old"),
        ("n1", None),
    ]
    ids, _, _ = await page(backend, 0)
    assert ids == ["f1", "f2", "f3", "f4", "f5", "n1"]  # f2/f4 kept numbers 2 and 4
    # a write whose id the snapshot holds is stored but hidden, as in the reference
    await backend.append(*record("f1", 10.0, key="again"))
    await backend.append(*record("f3", 11.0, key="again"))
    assert [i for i, _ in replayed(backend)].count("f3") == 2
    assert [i for i, _ in replayed(backend)].count("f1") == 2
    # a second snapshot without f2 makes the log's f2 visible again
    await backend.write_snapshot([record("f4", 4.0, key="newer")])
    assert sorted(i for i, _ in replayed(backend)) == sorted(
        ["f1", "f1", "f2", "f3", "f3", "f4", "f5"]
    )


@pytest.mark.parametrize("kind", DURABLE)
@pytest_twisted.ensureDeferred
async def test_restart_keeps_everything(request, tmp_path: Path, kind: str) -> None:
    path = tmp_path / "data"
    words = option_words(request, kind)
    backend = build(kind, path, words=words)
    await backend.open()
    for i in range(1, 4):
        await backend.append(*record(f"f{i}", float(i)))
    await backend.write_snapshot([record("s1", 0.5), record("f2", 2.0)])
    await backend.append(*record("f9", 9.0))
    before = replayed(backend)
    before_page = await page(backend, 0)
    await backend.close()

    again = build(kind, path, words=words)
    await again.open()
    try:
        assert replayed(again) == before
        assert await page(again, 0) == before_page
        assert again.last_seq == 5
        assert await again.append(*record("f10", 10.0)) == 6
    finally:
        await again.close()


@pytest_twisted.ensureDeferred
async def test_compaction_changes_nothing_a_reader_can_see(make_backend) -> None:
    backend = make_backend()
    await backend.open()
    for i in range(1, 21):
        await backend.append(*record(f"f{i}", float(i % 7), store=f"s{i % 3}"))
    await backend.write_snapshot([record("f3", 3.0), record("snap", 0.0)])
    for i in range(21, 26):
        await backend.append(*record(f"f{i}", float(i)))
    before = (replayed(backend), await page(backend, 0), await page(backend, 5, ["s1"]))
    report = await backend.compact()
    assert report["through"] == backend.last_seq
    assert report["facts"] == 25 - 1  # every log fact but the one the snapshot hides
    assert (replayed(backend), await page(backend, 0), await page(backend, 5, ["s1"])) == before
    assert await backend.append(*record("f99", 99.0)) == 27
    again = await backend.compact()
    assert again["facts"] == 25


def store_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.name != "LOCK")


@pytest_twisted.ensureDeferred
async def test_compaction_never_makes_the_store_larger(tmp_path: Path) -> None:
    """Regression: with nothing hidden, a compacted log (a number per entry) was larger
    than the WAL it replaced (155 -> 162 MB on a 300k-fact store)."""
    path = tmp_path / "data"
    backend = file_backend(reactor, str(path))
    await backend.open()
    try:
        await defer.gatherResults([backend.append(*record(f"f{i}", i)) for i in range(200)])
        size = store_bytes(path)
        report = await backend.compact()
        assert report["compacted"] is False
        assert report["bytes_before"] == report["bytes_after"] == size
        assert store_bytes(path) == size
        # restating most of the log in a snapshot makes a compaction worth doing
        await backend.write_snapshot([record(f"f{i}", i) for i in range(150)])
        size = store_bytes(path)
        report = await backend.compact()
        assert report["compacted"] is True
        assert report["bytes_after"] < report["bytes_before"]
        assert store_bytes(path) < size
        assert len(replayed(backend)) == 200
    finally:
        await backend.close()


@pytest_twisted.ensureDeferred
async def test_compaction_survives_a_restart_and_removes_segments(tmp_path: Path) -> None:
    path = tmp_path / "data"
    backend = file_backend(reactor, str(path))
    await backend.open()
    for i in range(1, 11):
        await backend.append(*record(f"f{i}", float(i)))
    await backend.write_snapshot([record(f"f{i}", float(i)) for i in range(1, 6)])
    await backend.compact()
    await backend.append(*record("f11", 11.0))
    before = replayed(backend)
    await backend.close()
    names = sorted(p.name for p in path.iterdir() if p.name != "LOCK")
    assert names == [
        "log-00000000000000000010.dat",
        "snapshot.dat",
        "wal-00000000000000000010.log",
    ]

    again = file_backend(reactor, str(path))
    await again.open()
    try:
        assert replayed(again) == before
        assert (await page(again, 9))[0] == ["f10", "f11"]
    finally:
        await again.close()


@pytest_twisted.ensureDeferred
async def test_crash_between_compaction_steps_loses_nothing(tmp_path: Path) -> None:
    """The compacted log is renamed in but the old segments were not removed yet."""
    path = tmp_path / "data"
    backend = file_backend(reactor, str(path))
    await backend.open()
    for i in range(1, 6):
        await backend.append(*record(f"f{i}", float(i)))
    saved = (path / "wal-00000000000000000000.log").read_bytes()
    await backend.write_snapshot([record(f"f{i}", float(i)) for i in range(1, 4)])
    assert (await backend.compact())["compacted"] is True
    await backend.append(*record("f6", 6.0))
    await backend.close()
    (path / "wal-00000000000000000000.log").write_bytes(saved)  # as if never removed

    again = file_backend(reactor, str(path))
    await again.open()
    try:
        assert [i for i, _ in replayed(again)] == ["f1", "f2", "f3", "f4", "f5", "f6"]
        assert not (path / "wal-00000000000000000000.log").exists()
    finally:
        await again.close()


@pytest_twisted.ensureDeferred
async def test_paging_respects_limit_budget_and_store_filter(make_backend) -> None:
    backend = make_backend()
    await backend.open()
    for i in range(1, 11):
        await backend.append(*record(f"f{i}", float(i), store="even" if i % 2 == 0 else "odd"))
    assert await page(backend, 0, limit=3) == (["f1", "f2", "f3"], 3, True)
    assert await page(backend, 3, limit=3) == (["f4", "f5", "f6"], 6, True)
    assert await page(backend, 9, limit=3) == (["f10"], 10, False)
    assert await page(backend, 10) == ([], 10, False)
    ids, nxt, more = await page(backend, 0, stores=["even"], limit=2)
    assert (ids, more) == (["f2", "f4"], True) and 4 <= nxt < 6
    assert await page(backend, 0, stores=["nope"]) == ([], 10, False)
    size = len(record("f1", 1.0)[0]) + 1
    ids, nxt, more = await page(backend, 0, budget=size * 2 + 1)
    assert (ids, nxt, more) == (["f1", "f2"], 2, True)


@pytest_twisted.ensureDeferred
async def test_listeners_hear_commits_in_order_before_writers(make_backend) -> None:
    backend = make_backend()
    await backend.open()
    heard: list[int] = []
    backend.add_listener(lambda batch: heard.extend(c.seq for c in batch))
    results = []
    ds = []
    for i in range(10):
        d = backend.append(*record(f"f{i}", float(i)))
        d.addCallback(lambda seq: results.append((seq, list(heard))))
        ds.append(d)
    await defer.gatherResults(ds)
    assert heard == list(range(1, 11))
    assert all(seq in seen for seq, seen in results)


@pytest_twisted.ensureDeferred
async def test_interval_and_never_policies_write_without_waiting(tmp_path: Path) -> None:
    for policy in ("interval:5", "never"):
        path = str(tmp_path / policy.replace(":", ""))
        backend = file_backend(reactor, path, FsyncPolicy.parse(policy))
        await backend.open()
        await defer.gatherResults([backend.append(*record(f"f{i}", i)) for i in range(20)])
        await backend.close()
        again = file_backend(reactor, path)
        await again.open()
        assert again.fact_count == 20
        await again.close()


@pytest_twisted.ensureDeferred
async def test_every_backend_compacts_only_to_save_room(make_backend) -> None:
    backend = make_backend()
    await backend.open()
    await defer.gatherResults([backend.append(*record(f"f{i}", i)) for i in range(100)])
    report = await backend.compact()
    assert report["compacted"] is False
    assert report["bytes_before"] == report["bytes_after"]
    await backend.write_snapshot([record(f"f{i}", i) for i in range(80)])
    report = await backend.compact()
    assert report["compacted"] is True
    assert report["bytes_after"] < report["bytes_before"]
    assert report["through"] == backend.last_seq == 100
    assert len(replayed(backend)) == 100
