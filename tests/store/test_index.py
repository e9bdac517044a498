"""The fact index: replay order kept incrementally, page selection."""

from __future__ import annotations

from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from txloom.store import index as index_module
from txloom.store.index import FactIndex, sorted_cooperatively

steps = st.lists(
    st.one_of(
        st.floats(min_value=0, max_value=100, allow_nan=False).map(lambda t: ("append", t)),
        st.just(("check", 0.0)),
    ),
    max_size=120,
)


@given(steps)
def test_time_order_is_time_then_arrival_whatever_the_appends(script: list) -> None:
    index = FactIndex()
    store = index.store_id("s")
    seq = 0
    snapshots = []
    for action, time in [*script, ("check", 0.0)]:
        if action == "append":
            seq += 1
            index.append(seq, 0, seq * 10, 5, round(time, 1), store)
        else:
            order = list(index.time_order())
            expected = sorted(range(len(index)), key=lambda r: (index.times[r], index.seqs[r]))
            assert order == expected
            snapshots.append((order, list(index.time_order())))
    for before, again in snapshots:
        assert before == again  # a caller's copy never changes under it


def test_select_pages_by_count_bytes_and_store() -> None:
    index = FactIndex()
    a, b = index.store_id("a"), index.store_id("b")
    for seq in range(1, 11):
        index.append(seq, 0, seq * 100, 10, float(seq), a if seq % 2 else b)

    def select(*args, **kwargs):
        rows, cursor, more = index.select(*args, **kwargs)
        return list(rows), cursor, more

    assert select(0, None, limit=3, budget=1000) == ([0, 1, 2], 3, True)
    assert select(8, None, limit=None, budget=1000) == ([8, 9], 10, False)
    assert select(0, {b}, limit=2, budget=1000) == ([1, 3], 5, True)
    assert select(0, None, limit=None, budget=22) == ([0, 1], 2, True)


@given(
    st.lists(st.lists(st.integers(min_value=0, max_value=50).map(float), max_size=200), max_size=5)
)
def test_time_order_after_large_batches_of_appends(batches: list[list[float]]) -> None:
    index = FactIndex()
    store = index.store_id("s")
    seq = 0
    for batch in batches:
        for time in batch:
            seq += 1
            index.append(seq, 0, seq, 1, time, store)
        expected = sorted(range(len(index)), key=lambda r: (index.times[r], r))
        assert list(index.time_order()) == expected


@given(
    st.lists(st.integers(min_value=0, max_value=30).map(float), max_size=300),
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=0, max_value=40),
    st.integers(min_value=0, max_value=8),
)
def test_cooperative_sort_is_the_stable_sort(
    times: list[float], spread: int, jitter: int, run: int
) -> None:
    """Nearly ordered times (merged where runs overlap) and shuffled ones (k-way merge)."""
    times = [t + (i // spread) * jitter / 10 for i, t in enumerate(times)]
    key = times.__getitem__
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(index_module, "COOPERATIVE_ROWS", 1 + run * 3)
        order = list(sorted_cooperatively(key, 0, len(times)))
    assert order == sorted(range(len(times)), key=key)


def test_cooperative_index_copies_match_plain_ones() -> None:
    index = FactIndex()
    store = index.store_id("s")
    for seq in range(1, 100_001):
        index.append(seq, 0, seq * 10, 5, float(seq % 1000), store)
    plain, cooperative = index.merged([]), index.merged([], cooperative=True)
    for copy in (plain, cooperative):
        assert (copy.seqs, copy.times, copy.body_bytes) == (index.seqs, index.times, 500_000)
    assert list(cooperative.time_order(cooperative=True)) == list(index.time_order())
    relocated = index.relocated(range(0, 70_000, 2), 3, range(35_000), upto=70_000)
    assert len(relocated) == 70_000 and relocated.vols[:4] == array("i", [3, 0, 3, 0])
    relocated.continue_from(index, 70_000)
    assert relocated.seqs == index.seqs and relocated.offsets[1] == index.offsets[1]


@given(
    st.lists(st.integers(min_value=0, max_value=40), min_size=0, max_size=60),
    st.integers(min_value=0, max_value=70),
    st.one_of(st.none(), st.integers(min_value=1, max_value=30)),
    st.integers(min_value=0, max_value=600),
    st.one_of(st.none(), st.integers(min_value=1, max_value=30)),
)
def test_selecting_every_store_matches_the_row_by_row_selection(
    sizes: list[int], since: int, limit: int | None, budget: int, scan_limit: int | None
) -> None:
    index = FactIndex()
    store = index.store_id("s")
    for seq, size in enumerate(sizes, 1):
        index.append(seq * 2, 0, seq * 100, size, float(seq), store)  # numbers with gaps
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(index_module, "COOPERATIVE_ROWS", 7)  # several summing steps
        fast = index.select(since, None, limit=limit, budget=budget, scan_limit=scan_limit)
    slow = index.select(since, {store}, limit=limit, budget=budget, scan_limit=scan_limit)
    assert (list(fast[0]), fast[1], fast[2]) == slow
