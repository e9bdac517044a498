"""Replay plans: the fast path for consecutive rows reads what the row-by-row path reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from txloom.store.backend import file_backend, memory_backend
from txloom.store.fact import encode_fact, meta_of, normalize_fact
from txloom.store.replay import ReplayPlan


def record(i: int, key: str = "v"):
    fact = normalize_fact(
        {"id": f"f{i}", "store": "s", "key": key, "value": "x" * (i % 50), "transaction_time": i}
    )
    return encode_fact(fact), meta_of(fact)


@pytest.mark.parametrize("kind", ["file", "memory"])
@pytest_twisted.ensureDeferred
async def test_consecutive_rows_read_as_row_by_row(tmp_path: Path, kind: str) -> None:
    backend = (
        file_backend(reactor, str(tmp_path / "data")) if kind == "file" else memory_backend(reactor)
    )
    await backend.open()
    try:
        await defer.gatherResults([backend.append(*record(i)) for i in range(1, 301)])
        # restated facts live in the snapshot file, between WAL facts: rows of one plan
        # then come from several files and leave gaps in them
        await backend.write_snapshot([record(i, "snap") for i in range(40, 300, 3)])
        await backend.compact()
        await defer.gatherResults([backend.append(*record(i)) for i in range(301, 401)])
        index = backend.index
        assert index.time_order() == range(len(index))  # a whole replay is consecutive rows
        for batch_bytes in (1, 700, 5000, 1 << 20):
            for rows in (range(len(index)), range(17, 240)):
                plan = ReplayPlan(index, rows, backend.volumes.pin(), next_seq=0)
                plan.batch_bytes = batch_bytes
                try:
                    fast = [body for batch in plan.batches() for body in batch]
                    slow = [body for batch in plan._batches(list(rows)) for body in batch]
                finally:
                    plan.close()
                assert fast == slow and len(fast) == len(rows)
    finally:
        await backend.close()
