"""Cutting a byte stream at arbitrary points, for "any split" codec tests."""

from __future__ import annotations


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` in pieces cut at each of ``cuts`` (taken modulo the length, deduplicated)."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in [*points, len(data)]:
        pieces.append(data[last:p])
        last = p
    return pieces
