"""Choosing one endpoint of a service: rendezvous hashing on the ``bucket`` tag, else random.

Rendezvous (highest random weight) hashing gives every (bucket, endpoint) pair a score and
picks the endpoint with the highest; adding an endpoint moves only the buckets it now wins,
removing one moves only the buckets it had. No ring to build or keep.
"""

from __future__ import annotations

import hashlib
import random as _random
from collections.abc import Mapping, Sequence

__all__ = ["BUCKET_TAG", "choose_endpoint", "rendezvous"]

#: The request tag whose value selects an endpoint by consistent hashing.
BUCKET_TAG = "bucket"


def _score(bucket: str, endpoint: str) -> int:
    digest = hashlib.blake2b(f"{bucket}\x00{endpoint}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous(bucket: str, endpoints: Sequence[str]) -> str:
    """The endpoint ``bucket`` maps to (independent of the order of ``endpoints``)."""
    return max(endpoints, key=lambda endpoint: (_score(bucket, endpoint), endpoint))


def choose_endpoint(
    endpoints: Sequence[str], tags: Mapping[str, str], rng: _random.Random | None = None
) -> str:
    if not endpoints:
        raise ValueError("no endpoints to choose from")
    bucket = tags.get(BUCKET_TAG)
    if bucket is not None:
        return rendezvous(bucket, endpoints)
    return (rng or _random).choice(list(endpoints))
