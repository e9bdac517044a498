"""HTTP over a Cocaine session: the payloads of the ``http`` event.

A request is one chunk holding MessagePack ``[method, uri, version, [[name, value], ...],
body]`` (version as ``"1.1"``); the reply's first chunk is MessagePack ``[status,
[[name, value], ...]]`` and every later chunk is raw body bytes, not packed. These helpers
pack and check those payloads; they know nothing about sessions. ``normalise_target``
removes dot segments from a request target, for the host's front end and the worker
adapter alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import msgpack

from txloom.wire.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_HTTP_EVENT",
    "HttpRequest",
    "HttpResponseHead",
    "MalformedHttpPayload",
    "UnsafeTarget",
    "decode_request",
    "decode_response_head",
    "encode_request",
    "encode_response_head",
    "normalise_target",
]

#: The event an HTTP request is delivered as, unless an app says otherwise.
DEFAULT_HTTP_EVENT = "http"

HeaderList = list[tuple[bytes, bytes]]


class MalformedHttpPayload(RemoteProtocolError):
    """A chunk that should hold an HTTP request or response head does not."""


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """The request chunk of an ``http`` session, decoded."""

    method: bytes
    uri: bytes
    version: bytes
    headers: HeaderList
    body: bytes


@dataclass(frozen=True, slots=True)
class HttpResponseHead:
    """The first reply chunk of an ``http`` session, decoded."""

    status: int
    headers: HeaderList


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise LocalProtocolError(f"expected bytes or str, not {type(value).__name__}")


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=False)


def _headers_out(headers: Sequence[tuple[bytes | str, bytes | str]]) -> list[list[bytes]]:
    return [[_as_bytes(n), _as_bytes(v)] for n, v in headers]


def _headers_in(raw: Any) -> HeaderList:
    if not isinstance(raw, list):
        raise MalformedHttpPayload("headers must be an array of [name, value]")
    headers: HeaderList = []
    for pair in raw:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not isinstance(pair[0], bytes)
            or not isinstance(pair[1], bytes)
        ):
            raise MalformedHttpPayload(f"bad header {pair!r:.80}")
        headers.append((pair[0], pair[1]))
    return headers


def _unpack(payload: bytes) -> Any:
    try:
        return msgpack.unpackb(payload, raw=True, strict_map_key=False)
    except Exception as e:  # msgpack raises several unrelated types for bad input
        raise MalformedHttpPayload(f"not MessagePack: {e}") from None


def encode_request(
    method: bytes | str,
    uri: bytes | str,
    version: bytes | str,
    headers: Sequence[tuple[bytes | str, bytes | str]],
    body: bytes,
) -> bytes:
    """The request chunk; ``version`` is the bare number (``1.1``), not ``HTTP/1.1``."""
    version = _as_bytes(version)
    if version.upper().startswith(b"HTTP/"):
        version = version[5:]
    return _pack(
        [_as_bytes(method), _as_bytes(uri), version, _headers_out(headers), _as_bytes(body)]
    )


def decode_request(payload: bytes) -> HttpRequest:
    obj = _unpack(payload)
    if not isinstance(obj, list) or len(obj) != 5:
        raise MalformedHttpPayload("an HTTP request is [method, uri, version, headers, body]")
    method, uri, version, headers, body = obj
    if not all(isinstance(x, bytes) for x in (method, uri, version, body)):
        raise MalformedHttpPayload("method, uri, version and body must be strings")
    return HttpRequest(method, uri, version, _headers_in(headers), body)


def encode_response_head(status: int, headers: Sequence[tuple[bytes | str, bytes | str]]) -> bytes:
    if not isinstance(status, int) or not 100 <= status <= 999:
        raise LocalProtocolError(f"bad HTTP status {status!r}")
    return _pack([status, _headers_out(headers)])


def decode_response_head(payload: bytes) -> HttpResponseHead:
    obj = _unpack(payload)
    if not isinstance(obj, list) or len(obj) != 2:
        raise MalformedHttpPayload("an HTTP response head is [status, headers]")
    status, headers = obj
    if type(status) is not int or not 100 <= status <= 999:
        raise MalformedHttpPayload(f"bad HTTP status {status!r:.40}")
    return HttpResponseHead(status, _headers_in(headers))


class UnsafeTarget(RemoteProtocolError):
    """A request target whose dot segments climb above the root ("/../etc/passwd")."""


_DOTS = {b".": b".", b"..": b".."}


def _dot(segment: bytes) -> bytes | None:
    """``.`` or ``..`` if ``segment`` is one of them, percent-encoded or not; else None.

    A segment that decodes to something holding an encoded slash around a dot segment
    (``..%2F..``) is refused: a server that decodes before splitting would climb with it.
    """
    if b"%" not in segment:
        return _DOTS.get(segment)
    decoded = unquote_to_bytes(segment)
    if decoded in _DOTS:
        return decoded
    parts = decoded.replace(b"\\", b"/").split(b"/")
    if len(parts) > 1 and any(part in _DOTS for part in parts):
        raise UnsafeTarget(f"encoded slash around a dot segment in {segment[:80]!r}")
    return None


def normalise_target(target: bytes) -> bytes:
    """``target`` with its dot segments removed (RFC 3986, 5.2.4), query kept as it was.

    ``/app/a/./b/../c?x`` becomes ``/app/a/c?x``; ``%2e`` counts as a dot. A ``..`` that
    would climb above the root raises ``UnsafeTarget`` instead of being dropped silently
    (RFC 3986 drops it; a request that tries it is refused). A target that is not a path
    (``*``, an absolute URI) is returned unchanged.
    """
    if not target.startswith(b"/"):
        return target
    path, mark, query = target.partition(b"?")
    if b"." not in path and b"%" not in path:
        return target
    out: list[bytes] = []
    segments = path[1:].split(b"/")
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        dot = _dot(segment)
        if dot is None:
            out.append(segment)
            continue
        if dot == b"..":
            if not out:
                raise UnsafeTarget(f"path climbs above the root: {path[:200]!r}")
            out.pop()
        if index == last:
            out.append(b"")  # "/a/b/.." is the directory "/a/"
    return b"/" + b"/".join(out) + mark + query
