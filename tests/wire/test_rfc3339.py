"""RFC 3339 times as Go writes and reads them: round trips, datetime agreement, bad input."""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from txloom.wire import rfc3339
from txloom.wire.rfc3339 import BadTimestamp

MIN_NS = rfc3339.ZERO_TIME_NS - 365 * 86400 * 10**9  # year 0
MAX_NS = 253402300799 * 10**9 + 999999999  # 9999-12-31T23:59:59.999999999Z


@given(
    st.integers(min_value=MIN_NS + 2 * 86400 * 10**9, max_value=MAX_NS - 2 * 86400 * 10**9),
    st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59),
)
def test_timestamp_round_trip(ns: int, offset: int) -> None:
    text = rfc3339.format_timestamp(ns, offset)
    assert rfc3339.parse_timestamp(text) == (ns, offset)


@given(
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(
            [timezone.utc, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
        ),
    )
)
def test_timestamps_agree_with_datetime(dt: datetime) -> None:
    ns, offset = rfc3339.parse_timestamp(dt.isoformat())
    micros = (dt - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)
    assert ns == micros * 1000
    assert offset == dt.utcoffset() // timedelta(minutes=1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-22T01:39:07.952081882Z", "2026-11-22T01:39:07.952081882Z"),
        ("2026-11-22T01:39:07,5Z", "2026-11-22T01:39:07.5Z"),  # Go's parser takes ","
        ("2026-11-22T1:39:07Z", "2026-11-22T01:39:07Z"),  # and a one-digit hour
        ("2026-11-22T01:39:07.100000000+00:00", "2026-11-22T01:39:07.1Z"),
        ("2026-11-22T01:39:07.0000000001Z", "2026-11-22T01:39:07Z"),
        ("2026-11-22T03:09:07+01:30", "2026-11-22T03:09:07+01:30"),
        ("2024-02-29T00:00:00-00:00", "2024-02-29T00:00:00Z"),
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
    ],
)
def test_timestamp_forms(text: str, expected: str) -> None:
    assert rfc3339.format_timestamp(*rfc3339.parse_timestamp(text)) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-22T01:39:07",  # no offset
        "2026-11-22 01:39:07Z",
        "2026-11-22t01:39:07.5z",  # Go wants "T" and "Z" in upper case
        "2026-11-22T01:39:07.5z",
        "2026-11-22T01:39:07,Z",
        "2026-13-01T00:00:00Z",
        "2025-02-29T00:00:00Z",
        "2026-11-22T24:00:00Z",
        "2026-11-22T23:59:60Z",  # leap second, refused as Go refuses it
        "2026-11-22T01:39:07.Z",
        "2026-11-22T01:39:07+24:00",
        "2026-11-22T01:39:07+0100",
        "२०२६-11-22T01:39:07Z",  # non-ASCII digits
        "",
    ],
)
def test_bad_timestamps(text: str) -> None:
    with pytest.raises(BadTimestamp):
        rfc3339.parse_timestamp(text)


@given(st.text(max_size=40))
def test_garbage_raises_only_bad_timestamp(text: str) -> None:
    with contextlib.suppress(BadTimestamp):
        rfc3339.parse_timestamp(text)


def test_years_outside_rfc3339_cannot_be_written() -> None:
    from txloom.wire.errors import LocalProtocolError

    with pytest.raises(LocalProtocolError):
        rfc3339.format_timestamp(MAX_NS + 10**9)
