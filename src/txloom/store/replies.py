"""Answers as bytes: small ones encoded whole, replays streamed as one frame.

A plain ``replay`` must answer in a single frame (that is what existing clients read),
but need not be built in memory: its length is known from the index before the first
fact is read, so the length prefix goes out first, the facts follow batch by batch as the
transport asks for them, and the CRC-32, computed along the way, closes the frame.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from txloom.store.errors import error_response
from txloom.store.replay import ReplayPlan
from txloom.wire.crcjson import encode_frame, encode_object

__all__ = [
    "MISSING",
    "OK",
    "ReplyStream",
    "envelope_size",
    "error_frame",
    "ok_frame",
    "replay_envelope",
]

_U32 = struct.Struct(">I")

#: ``{"ok":true}``: the answer to most writes, encoded once.
OK = encode_object({"ok": True})

#: A replay answer at most this large is built in memory and written in one go.
SMALL_REPLY = 64 * 1024

#: Marks "the request had no request_id" (None is a valid request_id).
MISSING: Any = object()


def _request_id_suffix(request_id: Any) -> bytes:
    if request_id is MISSING:
        return b""
    return b',"request_id":' + json.dumps(
        request_id, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def ok_frame(fields: dict[str, Any] | None = None, request_id: Any = MISSING) -> bytes:
    """``{"ok":true, ...fields, "request_id":...}`` framed."""
    if not fields and request_id is MISSING:
        return OK
    body: dict[str, Any] = {"ok": True}
    if fields:
        body.update(fields)
    if request_id is not MISSING:
        body["request_id"] = request_id
    return encode_object(body)


def error_frame(code: str, message: str, request_id: Any = MISSING) -> bytes:
    body = error_response(code, message)
    if request_id is not MISSING:
        body["request_id"] = request_id
    return encode_object(body)


def replay_envelope(
    plan: ReplayPlan, paged: bool, request_id: Any = MISSING
) -> tuple[bytes, bytes]:
    """The bytes before and after the facts of a replay answer."""
    suffix = b"]"
    if paged:
        suffix += b',"next":%d,"more":%s' % (plan.next, b"true" if plan.more else b"false")
    return b'{"ok":true,"facts":[', suffix + _request_id_suffix(request_id) + b"}"


def envelope_size(request_id: Any = MISSING) -> int:
    """Most bytes a paged replay answer adds around its facts."""
    largest = b'{"ok":true,"facts":[],"next":18446744073709551615,"more":false}'
    return len(largest) + len(_request_id_suffix(request_id))


class ReplyStream:
    """One large frame written in pieces, as fast as the transport takes them."""

    def __init__(self, plan: ReplayPlan, prefix: bytes, suffix: bytes) -> None:
        self.plan = plan
        self.prefix = prefix
        self.suffix = suffix
        self.length = len(prefix) + plan.encoded_size() + len(suffix)
        self._batches: Iterator[list[bytes]] | None = None
        self._crc = 0
        self._first = True
        self.done = False

    def small(self) -> bytes | None:
        """The whole frame, if it is small enough to build at once."""
        if self.length > SMALL_REPLY:
            return None
        bodies = [body for batch in self.plan.batches() for body in batch]
        self.close()
        return encode_frame(self.prefix + b",".join(bodies) + self.suffix)

    def pump(self, write: Callable[[bytes], None], paused: Callable[[], bool]) -> bool:
        """Write until the transport pauses us; True once the frame is complete."""
        if self._batches is None:
            self._batches = self.plan.batches()
            self._crc = zlib.crc32(self.prefix)
            write(_U32.pack(self.length) + self.prefix)
        while not paused():
            batch = next(self._batches, None)
            if batch is None:
                self._crc = zlib.crc32(self.suffix, self._crc)
                write(self.suffix + _U32.pack(self._crc & 0xFFFFFFFF))
                self.close()
                return True
            data = b",".join(batch)
            if not self._first:
                data = b"," + data
            self._first = False
            self._crc = zlib.crc32(data, self._crc)
            write(data)
        return False

    def close(self) -> None:
        self.done = True
        self.plan.close()
