"""Choosing an endpoint: rendezvous hashing on ``bucket`` is stable, else random."""

from __future__ import annotations

import random

import pytest_twisted

from support.streams import SERVICE, serving
from txloom.streams import Source, StaticResolver, StreamClient, choose_endpoint, rendezvous

ENDPOINTS = [f"tcp:10.0.0.{i}:7410" for i in range(1, 9)]
BUCKETS = [f"user-{i}" for i in range(2000)]


def test_same_bucket_same_endpoint_in_any_order() -> None:
    shuffled = random.Random(1).sample(ENDPOINTS, len(ENDPOINTS))
    assert [rendezvous(b, ENDPOINTS) for b in BUCKETS] == [rendezvous(b, shuffled) for b in BUCKETS]


def test_adding_an_endpoint_moves_only_buckets_it_wins() -> None:
    before = {b: rendezvous(b, ENDPOINTS) for b in BUCKETS}
    added = "tcp:10.0.0.99:7410"
    after = {b: rendezvous(b, [*ENDPOINTS, added]) for b in BUCKETS}
    moved = [b for b in BUCKETS if before[b] != after[b]]
    assert all(after[b] == added for b in moved)
    assert 0.05 < len(moved) / len(BUCKETS) < 0.20  # about 1/9 of them


def test_removing_an_endpoint_moves_only_its_buckets() -> None:
    before = {b: rendezvous(b, ENDPOINTS) for b in BUCKETS}
    gone = ENDPOINTS[3]
    after = {b: rendezvous(b, [e for e in ENDPOINTS if e != gone]) for b in BUCKETS}
    moved = {b for b in BUCKETS if before[b] != after[b]}
    assert moved == {b for b in BUCKETS if before[b] == gone}


def test_buckets_spread_over_endpoints() -> None:
    counts = {e: 0 for e in ENDPOINTS}
    for b in BUCKETS:
        counts[rendezvous(b, ENDPOINTS)] += 1
    assert min(counts.values()) > len(BUCKETS) / len(ENDPOINTS) / 2


def test_without_bucket_random() -> None:
    rng = random.Random(7)
    picked = {choose_endpoint(ENDPOINTS, {}, rng) for _ in range(200)}
    assert picked == set(ENDPOINTS)


@pytest_twisted.ensureDeferred
async def test_bucket_tag_routes_requests_between_two_servers() -> None:
    async with (
        serving(lambda b, t: [Source(b"a", [])]) as a,
        serving(lambda b, t: [Source(b"b", [])]) as b,
    ):
        endpoints = [f"tcp:127.0.0.1:{s.address[1]}" for s in (a, b)]
        client = StreamClient(StaticResolver({SERVICE: endpoints}))
        for bucket in ("x", "y", "z", "w"):
            expected = b"a" if rendezvous(bucket, endpoints) == endpoints[0] else b"b"
            for _ in range(2):
                answer = await client.post(SERVICE, b"", tags={"bucket": bucket}).collect()
                assert answer == [(expected, [])]
