"""RFC 3339 times with nanoseconds, as Go's ``time.Time`` writes and reads them in JSON.

Times are kept as integer nanoseconds since the Unix epoch plus the zone offset they were
written with: Go nodes send nanoseconds, which a ``datetime`` would cut to microseconds, and
re-writing a time must give Go's bytes back (fraction trimmed of trailing zeros, ``Z`` for
a zero offset). Pure functions; no clock is read here.
"""

from __future__ import annotations

import re

from txloom.wire.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["ZERO_TIME_NS", "BadTimestamp", "format_timestamp", "parse_timestamp"]

_NS = 1_000_000_000
_DAY = 86_400


class BadTimestamp(RemoteProtocolError):
    """A timestamp that is not an RFC 3339 time with an offset (or is out of range)."""


#: The zero ``time.Time`` of Go (``0001-01-01T00:00:00Z``), used when a message has no time.
ZERO_TIME_NS = -62_135_596_800 * _NS

# Go's time.Time reads RFC 3339 with a strict fast path and falls back on time.Parse,
# which also takes a one-digit hour and a comma before the fraction; both want an upper
# case "T" and "Z".
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{1,2}):([0-9]{2}):([0-9]{2})"
    r"(?:[.,]([0-9]+))?(?:(Z)|([+-])([0-9]{2}):([0-9]{2}))"
)
_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(z: int) -> tuple[int, int, int]:
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return y + (m <= 2), m, d


def parse_timestamp(text: str) -> tuple[int, int]:
    """``(nanoseconds since the Unix epoch, UTC offset in minutes)`` of an RFC 3339 time.

    Accepts what Go's ``time.Time`` unmarshals: years 0000-9999, an explicit offset (``Z``
    or ``±hh:mm``), any number of fraction digits after ``.`` or ``,`` (beyond nanoseconds
    they are truncated), a one-digit hour; ``T`` and ``Z`` in upper case only. A leap
    second (``:60``) is refused, as Go refuses it; so is an offset of 24 hours or more
    (Go's fallback parser takes one, but Go cannot write such a time back).
    """
    match = _RFC3339.fullmatch(text) if type(text) is str else None
    if match is None:
        raise BadTimestamp(f"not an RFC 3339 time with an offset: {text!r:.80}")
    ys, mos, ds, hs, mis, ss, frac, zulu, sign, oh, om = match.groups()
    year, month, day = int(ys), int(mos), int(ds)
    hour, minute, second = int(hs), int(mis), int(ss)
    if not 1 <= month <= 12:
        raise BadTimestamp(f"month {month} out of range in {text!r}")
    last = 29 if month == 2 and _is_leap(year) else _MONTH_DAYS[month - 1]
    if not 1 <= day <= last:
        raise BadTimestamp(f"day {day} out of range in {text!r}")
    if hour > 23 or minute > 59 or second > 59:
        raise BadTimestamp(f"time of day out of range in {text!r}")
    offset = 0
    if zulu is None:
        h, m = int(oh), int(om)
        if h > 23 or m > 59:
            raise BadTimestamp(f"zone offset out of range in {text!r}")
        offset = h * 60 + m
        if sign == "-":
            offset = -offset
    ns = int(frac[:9].ljust(9, "0")) if frac else 0
    seconds = _days_from_civil(year, month, day) * _DAY + hour * 3600 + minute * 60 + second
    return (seconds - offset * 60) * _NS + ns, offset


#: The date part of the last timestamp formatted, as one tuple so that threads never see a
#: day paired with another day's text.
_last_day: list[tuple[int | None, str]] = [(None, "")]


def format_timestamp(ns: int, offset: int = 0) -> str:
    """RFC 3339 text of ``ns`` since the epoch shown at ``offset`` minutes east of UTC,
    exactly as Go's ``time.Time.MarshalJSON`` writes it (fraction trimmed, ``Z`` for UTC)."""
    local = ns + offset * 60 * _NS
    seconds, frac = divmod(local, _NS)
    days, sod = divmod(seconds, _DAY)
    cached_days, date = _last_day[0]
    if cached_days != days:
        y, m, d = _civil_from_days(days)
        if not 0 <= y <= 9999:
            raise LocalProtocolError(f"year {y} does not fit RFC 3339")
        date = f"{y:04d}-{m:02d}-{d:02d}T"
        _last_day[0] = (days, date)
    hh, rest = divmod(sod, 3600)
    mm, ss = divmod(rest, 60)
    text = f"{date}{hh:02d}:{mm:02d}:{ss:02d}"
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    if offset == 0:
        return text + "Z"
    sign = "+" if offset > 0 else "-"
    oh, om = divmod(abs(offset), 60)
    return f"{text}{sign}{oh:02d}:{om:02d}"
