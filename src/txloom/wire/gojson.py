"""Go's ``encoding/json``, as far as reading and writing a Grav node's JSON needs it.

A Grav node reads a frame with ``json.Unmarshal`` into a Go struct, and that is more lenient
than a JSON schema check: keys match struct fields case-insensitively, ``null`` leaves a
field as it was, invalid UTF-8 inside a string becomes U+FFFD (one per bad byte), a lone
``\\ud800`` escape becomes U+FFFD, duplicate keys are all applied in order (the last one
wins, and two ``meta`` objects merge), and ``[]byte`` fields take base64 with line breaks in
it or an array of small integers. Whatever Go accepts, txloom must accept the same way, or
the two implementations would deliver different messages for the same bytes.

Writing, Go escapes ``<``, ``>``, ``&``, U+2028 and U+2029 (HTML-safe), writes ``\\b`` and
``\\f`` as ``\\u0008`` and ``\\u000c`` (Go before 1.22, which Grav v0.5 is built with) and
replaces what is not valid UTF-8 (a lone surrogate in Python) with a ``\\ufffd`` escape.

Pure functions, no Twisted.
"""

from __future__ import annotations

import binascii
import codecs
import json
import re
from json.decoder import scanstring  # type: ignore[attr-defined]
from json.scanner import py_make_scanner  # type: ignore[attr-defined]
from typing import Any

__all__ = [
    "NULL",
    "EscapedString",
    "GoJSONError",
    "JSONObject",
    "decode_base64",
    "decode_bytes_field",
    "field_name",
    "loads",
    "quote",
    "valid_text",
]


class GoJSONError(ValueError):
    """The bytes are not JSON as Go reads it (syntax), or a value has the wrong type."""


class JSONObject(list):
    """A JSON object as its ``(key, value)`` pairs in order, duplicates kept (Go applies
    each of them in turn)."""

    __slots__ = ()


class EscapedString(str):
    """A string value whose JSON text held escapes. Go hands ``time.Time`` the raw bytes
    between the quotes, so an escaped timestamp is one Go cannot parse."""

    __slots__ = ()


class _Null:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NULL"


#: What ``loads`` returns for a top-level ``null`` (a Go struct is then left as it was).
NULL = _Null()


class _Negative(int):
    """A negative integer literal (``-0`` included), which Go's unsigned fields refuse."""

    __slots__ = ()


class _HugeInt:
    """An integer literal too long for Python's int parser; only ever ignored."""

    __slots__ = ()


def _parse_int(text: str) -> object:
    try:
        value = int(text)
    except ValueError:
        return _HugeInt()
    return _Negative(value) if text[0] == "-" else value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _replace_each_byte(error: UnicodeError) -> tuple[str, int]:
    """Go turns every byte of an invalid UTF-8 sequence into its own U+FFFD."""
    assert isinstance(error, UnicodeDecodeError)
    return "\ufffd" * (error.end - error.start), error.end


_ERRORS = "txloom-go-replace"
codecs.register_error(_ERRORS, _replace_each_byte)


def _marking_scanstring(text: str, end: int, strict: bool = True) -> tuple[str, int]:
    value, stop = scanstring(text, end, strict)
    if "\\" in text[end:stop]:
        value = EscapedString(value)
    return value, stop


def _decoder(mark_escapes: bool) -> json.JSONDecoder:
    decoder = json.JSONDecoder(
        object_pairs_hook=JSONObject, parse_int=_parse_int, parse_constant=_refuse_constant
    )
    if mark_escapes:
        decoder.parse_string = _marking_scanstring  # type: ignore[attr-defined]
        decoder.scan_once = py_make_scanner(decoder)  # type: ignore[attr-defined]
    return decoder


# Text without a backslash has no escapes, so the C scanner does; the Python scanner (which
# can mark escaped strings) only runs for the rare frame that has one.
_plain = _decoder(False).decode
_marking = _decoder(True).decode


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON as Go does: objects as ``JSONObject``, ``NULL`` for a top-level null.

    Invalid UTF-8 becomes U+FFFD per byte (inside a string that is what Go does; outside
    one it is a syntax error either way). Raises ``GoJSONError``. Nesting deeper than the
    Python parser's recursion limit (Go allows 10,000 levels) is refused as well.
    """
    text = data if type(data) is str else bytes(data).decode("utf-8", _ERRORS)
    try:
        value = (_marking if "\\" in text else _plain)(text)
    except RecursionError:
        raise GoJSONError("JSON nests too deeply") from None
    except ValueError as e:
        raise GoJSONError(f"not JSON: {e}") from None
    return NULL if value is None else value


def field_name(key: str) -> str:
    """``key`` folded as Go matches it against an ASCII struct field name.

    ASCII letters match in either case, and the Kelvin sign and the long s also fold to
    ``k`` and ``s`` (Go uses Unicode simple folding). A key with any other non-ASCII
    character matches no ASCII field: the empty string is returned for it.
    """
    if key.isascii():
        return key.lower()
    key = key.replace("\u212a", "k").replace("\u017f", "s")
    return key.lower() if key.isascii() else ""


_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(value: str) -> str:
    """``value`` with lone surrogates (from ``\\ud800``-style escapes) as U+FFFD, as Go
    decodes them."""
    if value.isascii():
        return value if type(value) is str else str(value)
    return _SURROGATE.sub("\ufffd", str(value))


_B64_LINE_BREAKS = str.maketrans("", "", "\r\n")
_B64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def decode_base64(text: str) -> bytes:
    """Go's ``base64.StdEncoding.DecodeString``: padded standard base64, ``\\r`` and ``\\n``
    ignored anywhere, unused trailing bits allowed (Go's decoder is not strict)."""
    if "\r" in text or "\n" in text:
        text = text.translate(_B64_LINE_BREAKS)
    if _B64.fullmatch(text) is None:
        raise GoJSONError("not standard padded base64")
    return binascii.a2b_base64(text)


def decode_bytes_field(value: object) -> bytes | None:
    """A JSON value as Go stores it in a ``[]byte`` field: None for null (Go's nil)."""
    if value is None:
        return None
    if isinstance(value, str):
        return decode_base64(value)
    if type(value) is list:
        # Go parses each element as an unsigned integer literal; null leaves it 0
        items = [0 if b is None else b for b in value]
        if not all(type(b) is int and b < 256 for b in items):
            raise GoJSONError("a byte array holds something other than integers 0..255")
        return bytes(items)
    raise GoJSONError(f"JSON {type(value).__name__} where base64 data belongs")


_encode_basestring = json.encoder.encode_basestring  # type: ignore[attr-defined]
_HTML_UNSAFE = re.compile("[<>&\u2028\u2029]")
_HTML_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
# An escaped backslash is matched first, so that the "b" after one is left alone.
_SHORT_ESCAPES = re.compile(r"\\\\|\\b|\\f")
_LONG_FORMS = {"\\\\": "\\\\", "\\b": "\\u0008", "\\f": "\\u000c"}


def _html_escape(match: re.Match[str]) -> str:
    return _HTML_ESCAPES[match.group()]


def _long_form(match: re.Match[str]) -> str:
    return _LONG_FORMS[match.group()]


def quote(value: str) -> str:
    """The JSON string literal Go's ``encoding/json`` writes for ``value``."""
    text = _encode_basestring(value)
    if "\b" in value or "\f" in value:
        text = _SHORT_ESCAPES.sub(_long_form, text)
    if _HTML_UNSAFE.search(text) is not None:
        text = _HTML_UNSAFE.sub(_html_escape, text)
    if not text.isascii() and _SURROGATE.search(text) is not None:
        text = _SURROGATE.sub("\\\\ufffd", text)
    return text
