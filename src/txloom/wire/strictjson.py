"""Strict, compact UTF-8 JSON: orjson's speed with the standard library's answers.

Parsing and encoding JSON was the largest single cost of a store write: on a quiet
machine, 4.6 µs to parse a 460-byte ``write_fact`` request and 5.9 µs to encode its fact
with ``json``, 1.3 and 0.5 µs with orjson (plus about 1 µs for the checks below). The
two libraries disagree on a few inputs, and the wire's rules were written against the
standard library's behaviour, so orjson is used only where it gives the same value:

- ``parse``: orjson turns integers beyond 64 bits into floats (``json`` keeps them
  exact), so a body with a run of 19 or more digits goes to ``json``; so does any body
  orjson refuses, which lets ``json`` produce the error (or accept ``1e999`` as
  infinity, which callers refuse with their own, more precise, message).
- ``dump``: orjson writes NaN and infinities as ``null`` and encodes types JSON has no
  word for (UUIDs, dataclasses, datetimes); a value made of anything but plain dicts
  with ``str`` keys, lists, tuples, ``str``, ``int``, ``bool``, ``None`` and finite
  ``float`` goes to ``json``, which refuses what is not JSON. Floats may be spelled
  differently (``1e-7`` for ``1e-07``); the value is the same.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["dump", "parse"]

#: Every digit made a ``0``, so that one substring search finds a run of 19 digits (a
#: regular expression costs more than the parse it protects). A run inside a string
#: (an id, a hash) is sent to ``json`` too: slower, never wrong.
_DIGITS = bytes.maketrans(b"0123456789", b"0" * 10)
_LONG_NUMBER = b"0" * 19


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_decoder = json.JSONDecoder(parse_constant=_refuse_constant)
_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def parse(data: bytes) -> Any:
    """The JSON value in ``data``; raises what ``json`` raises for bytes that are not
    UTF-8 JSON (``UnicodeDecodeError``, ``ValueError``, ``RecursionError``).

    ``NaN`` and ``Infinity`` are refused; a number too large for a float (``1e999``)
    becomes an infinity, as with ``json``.
    """
    if _LONG_NUMBER not in data.translate(_DIGITS):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # json gives the error, or the value orjson cannot represent
    return _decoder.decode(data.decode("utf-8"))


def dump(value: Any) -> bytes:
    """Compact UTF-8 JSON of ``value``; ``ValueError`` for NaN and infinities,
    ``TypeError`` for what JSON cannot say, ``UnicodeEncodeError`` for lone surrogates."""
    if _plain(value):
        try:
            return orjson.dumps(value)
        except TypeError:
            pass  # an integer beyond 64 bits, or a lone surrogate: json decides
    return _encoder.encode(value).encode("utf-8")


_SCALARS = frozenset((str, int, bool, type(None)))


def _plain(value: Any) -> bool:
    """True if ``value`` is made only of the types orjson and json encode alike."""
    kind = type(value)
    if kind in _SCALARS:
        return True
    if kind is float:
        return value - value == 0.0  # False for NaN and the infinities
    if kind is dict:
        # loops, not all(), and no call for the common leaves: this runs for every
        # fact a server stores
        for key, item in value.items():
            if type(key) is not str:
                return False
            if type(item) not in _SCALARS and not _plain(item):
                return False
        return True
    if kind is list or kind is tuple:
        for item in value:  # noqa: SIM110
            if type(item) not in _SCALARS and not _plain(item):
                return False
        return True
    return False
