"""Snapshots and compactions under writes: writers are answered while the long part runs,
the result is what the same operations would give one after the other, and a crash at
any step (the data directory copied as it is at that step) loses no acknowledged write."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread

from txloom.store import maintenance
from txloom.store.backend import StoreBackend, file_backend
from txloom.store.directory import LOCK_NAME
from txloom.store.fact import encode_fact, meta_of, normalize_fact


def record(fact_id: str, t: float, key: str = "v1"):
    fact = normalize_fact({"id": fact_id, "store": "s", "key": key, "transaction_time": t})
    return encode_fact(fact), meta_of(fact)


def visible(backend: StoreBackend) -> list[tuple[str, str]]:
    """``(id, key)`` of every fact, in replay order."""
    plan = backend.plan_replay()
    try:
        facts = [json.loads(body) for batch in plan.batches() for body in batch]
    finally:
        plan.close()
    return [(f["id"], f["key"]) for f in facts]


def numbered(backend: StoreBackend) -> dict[str, int]:
    """Sequence number of each visible fact."""
    plan = backend.plan_page(0, None, None, 1 << 30)
    try:
        ids = [json.loads(body)["id"] for batch in plan.batches() for body in batch]
        return dict(zip(ids, (plan.index.seqs[r] for r in plan.rows), strict=True))
    finally:
        plan.close()


class Gate:
    """Holds a background thread inside ``target`` until ``open()``."""

    def __init__(self, monkeypatch, owner, name: str) -> None:
        self.entered = threading.Event()
        self._open = threading.Event()
        real = getattr(owner, name)

        def held(*args, **kwargs):
            self.entered.set()
            assert self._open.wait(10), "gate never opened"
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, held)

    async def reached(self) -> None:
        assert await deferToThread(self.entered.wait, 10), "the step was never reached"

    def open(self) -> None:
        self._open.set()


def crash_copy(data: Path, to: Path) -> Path:
    """The data directory as a crash at this moment would leave it (acknowledged writes
    are fsynced, so copying the files now gives what the disk holds)."""
    shutil.copytree(data, to, ignore=shutil.ignore_patterns(LOCK_NAME))
    return to


async def reopened(path: Path) -> StoreBackend:
    backend = file_backend(reactor, str(path))
    await backend.open()
    return backend


async def write(backend: StoreBackend, *facts) -> list[int]:
    return await defer.gatherResults([backend.append(*fact) for fact in facts])


@pytest_twisted.ensureDeferred
async def test_snapshot_under_writes(tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "data"
    backend = file_backend(reactor, str(data))
    await backend.open()
    try:
        await write(backend, *(record(f"f{i}", float(i)) for i in range(1, 31)))
        scan = Gate(monkeypatch, maintenance, "scan_log")
        build = Gate(monkeypatch, maintenance._Snapshot, "build")
        # restates f3 and w2 (not written yet), adds n1
        snapshot = backend.write_snapshot(
            [record("f3", 3.0, "snap"), record("w2", 32.5, "snap"), record("n1", 99.0, "snap")]
        )
        await scan.reached()
        # the scan is held: writers are answered all the same
        assert await write(backend, *(record(f"w{i}", 31.0 + i) for i in range(10))) == list(
            range(31, 41)
        )
        assert not snapshot.called
        during_scan = crash_copy(data, tmp_path / "during-scan")
        scan.open()

        await build.reached()  # file written and numbers taken; index not switched yet
        assert numbered(backend)["n1"] == 41  # the new fact follows the last commit
        assert await write(backend, record("x1", 50.0), record("n1", 51.0, "late")) == [42, 43]
        during_build = crash_copy(data, tmp_path / "during-build")
        build.open()
        assert await snapshot == 3

        expected = [
            *(("f" + str(i), "snap" if i == 3 else "v1") for i in range(1, 31)),
            *(("w" + str(i), "snap" if i == 2 else "v1") for i in range(10)),
            ("x1", "v1"),
            ("n1", "snap"),  # the later write of n1 is hidden by the snapshot
        ]
        assert visible(backend) == expected
        numbers = numbered(backend)
        assert numbers["w2"] == 33 and numbers["f3"] == 3  # restated facts keep their numbers
        assert await write(backend, record("y1", 60.0)) == [44]
        expected.insert(-1, ("y1", "v1"))
    finally:
        await backend.close()

    again = await reopened(data)
    try:
        assert visible(again) == expected
        assert again.last_seq == 44
    finally:
        await again.close()

    # a crash during the scan keeps the old state and every acknowledged write
    copy = await reopened(during_scan)
    try:
        assert visible(copy) == [
            *((f"f{i}", "v1") for i in range(1, 31)),
            *((f"w{i}", "v1") for i in range(10)),
        ]
    finally:
        await copy.close()
    # a crash after the file was written has the new snapshot, and every write
    copy = await reopened(during_build)
    try:
        assert visible(copy) == [*expected[:-2], ("n1", "snap")]
        assert await write(copy, record("z", 70.0)) == [44]
    finally:
        await copy.close()


@pytest_twisted.ensureDeferred
async def test_compaction_under_writes(tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "data"
    backend = file_backend(reactor, str(data))
    await backend.open()
    try:
        await write(backend, *(record(f"f{i}", float(i)) for i in range(1, 21)))
        # restating half the log makes a compaction worth its while
        await backend.write_snapshot([record(f"f{i}", float(i), "snap") for i in range(1, 11)])
        await write(backend, *(record(f"g{i}", 20.0 + i) for i in range(1, 6)))
        copying = Gate(monkeypatch, maintenance, "_copy_log")
        removing = Gate(monkeypatch, maintenance, "_remove_replaced")
        compaction = backend.compact()
        await copying.reached()
        assert await write(backend, *(record(f"h{i}", 30.0 + i) for i in range(3))) == [
            26,
            27,
            28,
        ]
        assert not compaction.called
        during_copy = crash_copy(data, tmp_path / "during-copy")
        copying.open()

        await removing.reached()  # switched to the new log; old segments still on disk
        assert await write(backend, record("k1", 40.0)) == [29]
        during_removal = crash_copy(data, tmp_path / "during-removal")
        removing.open()
        report = await compaction
        assert (report["through"], report["facts"]) == (25, 15)  # f1-f10 are in the snapshot
        assert report["segments_removed"] >= 1

        expected = [
            *((f"f{i}", "snap" if i <= 10 else "v1") for i in range(1, 21)),
            *((f"g{i}", "v1") for i in range(1, 6)),
            *((f"h{i}", "v1") for i in range(3)),
            ("k1", "v1"),
        ]
        assert visible(backend) == expected
        assert numbered(backend)["h0"] == 26
    finally:
        await backend.close()

    for path, facts in ((data, expected), (during_copy, expected[:-1]), (during_removal, expected)):
        copy = await reopened(path)
        try:
            assert visible(copy) == facts, path.name
            assert copy.last_seq == len(facts)  # numbered 1, 2, ... once each
        finally:
            await copy.close()
