"""Answers as bytes: small ones encoded whole, replays streamed as one frame.

A plain ``replay`` must answer in a single frame (that is what existing clients read),
but need not be built in memory: its length is known from the index before the first
fact is read, so the length prefix goes out first, the facts follow piece by piece as the
transport asks for them, and the CRC-32, computed along the way, closes the frame.

The pieces are read and encoded on a reader thread (a cold disk may take its time), a
bounded amount ahead of the transport; the reactor thread only writes them.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from txloom.interfaces import IReplayPlan
from txloom.store.config import MAX_REQUEST_ID_BYTES
from txloom.store.errors import error_response
from txloom.wire.crcjson import encode_object
from txloom.wire.errors import LocalProtocolError

__all__ = [
    "DEFAULT_READ_AHEAD",
    "MISSING",
    "OK",
    "ReplyStream",
    "envelope_size",
    "error_frame",
    "ok_frame",
    "replay_envelope",
    "request_id_problem",
]

_U32 = struct.Struct(">I")

#: ``{"ok":true}``: the answer to most writes, encoded once.
OK = encode_object({"ok": True})

#: Bytes of an answer read ahead of the transport: while the peer is slow to take
#: them, the reader stops here, so a replay costs this much memory at most (plus what
#: the transport holds) however large the store and however slow the peer.
DEFAULT_READ_AHEAD = 1024 * 1024

#: Pieces handed from the reader thread to the reactor are at least this large (except
#: the last), so that a small answer goes out in one write.
PIECE_BYTES = 128 * 1024

#: Bytes of pieces one read on the reader thread hands over at once (fewer, larger
#: hand-overs between the threads; the read-ahead bound still holds).
READ_BYTES = 512 * 1024

#: Runs ``fn(*args)`` where it may block (a reader thread); a Deferred of the result.
Reader = Callable[..., defer.Deferred]

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
    """The error answer; a message quoting what the peer sent (a lone surrogate, say)
    is escaped rather than left unanswerable."""
    body = error_response(code, message)
    if request_id is not MISSING:
        body["request_id"] = request_id
    try:
        return encode_object(body)
    except LocalProtocolError:
        body["error"] = message.encode("utf-8", "backslashreplace").decode("utf-8")
        return encode_object(body)


def request_id_problem(request_id: Any) -> str | None:
    """Why ``request_id`` cannot be echoed (not finite, not UTF-8, too long), or None."""
    try:
        text = json.dumps(request_id, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        size = len(text.encode("utf-8"))
    except (TypeError, ValueError) as e:
        kind = "a non-finite number" if "Out of range" in str(e) else "not valid UTF-8 JSON"
        return f"request_id cannot be echoed: it is {kind}"
    if size > MAX_REQUEST_ID_BYTES:
        return f"request_id of {size} bytes is above the limit of {MAX_REQUEST_ID_BYTES}"
    return None


def replay_envelope(
    plan: IReplayPlan, paged: bool, request_id: Any = MISSING
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


def frame_pieces(plan: IReplayPlan, prefix: bytes, suffix: bytes, length: int) -> Iterator[bytes]:
    """The frame ``length | prefix facts,... suffix | crc`` in pieces (reads the disk)."""
    crc = zlib.crc32(prefix)
    held = _U32.pack(length) + prefix
    first = True
    for batch in plan.batches():
        data = b",".join(batch if first else [b"", *batch])
        first = False
        crc = zlib.crc32(data, crc)
        if len(held) >= PIECE_BYTES:
            yield held
            held = data
        else:
            held += data
    crc = zlib.crc32(suffix, crc)
    yield held + suffix + _U32.pack(crc & 0xFFFFFFFF)


def take_pieces(pieces: Iterator[bytes], size: int) -> list[bytes]:
    """The next pieces, about ``size`` bytes of them; an empty list at the end."""
    taken: list[bytes] = []
    got = 0
    for piece in pieces:
        taken.append(piece)
        got += len(piece)
        if got >= size:
            break
    return taken


def read_inline(fn: Callable[..., Any], *args: Any) -> defer.Deferred:
    """A ``Reader`` that runs at once, on the caller's thread (the memory backend)."""
    return defer.maybeDeferred(fn, *args)


class ReplyStream:
    """One large frame, read on a reader thread and written as the transport takes it.

    The connection calls ``pump`` when it may write; ``wake`` is called back when read
    pieces are waiting. At most ``read_ahead`` bytes wait here, and one read at a time
    is in flight, so the plan is only ever used by one thread at a time.
    """

    log = Logger()

    def __init__(
        self,
        plan: IReplayPlan,
        prefix: bytes,
        suffix: bytes,
        read: Reader = read_inline,
        *,
        read_ahead: int = DEFAULT_READ_AHEAD,
        failure_frame: bytes | None = None,
    ) -> None:
        self.plan = plan
        self.length = len(prefix) + plan.encoded_size() + len(suffix)
        self.read_ahead = read_ahead
        #: Sent instead of the answer if reading fails before its first byte went out.
        self.failure_frame = failure_frame
        #: Called when read pieces wait to be written (set by the connection).
        self.wake: Callable[[], None] | None = None
        #: Called when reading failed after the frame was begun: it cannot be finished,
        #: so the connection must be dropped (set by the connection).
        self.broken: Callable[[], None] | None = None
        self.done = False
        self.started = False
        self._read = read
        self._pieces = frame_pieces(plan, prefix, suffix, self.length)
        self._ready: deque[bytes] = deque()
        self._ready_bytes = 0
        self._read_bytes = 0  # the frame is complete at self.length + 8
        self._reading = False
        self._arrived = False
        self._exhausted = False
        self._pumping = False

    def read_first(self) -> None:
        """Read the first pieces now, on the calling thread (a reader thread that just
        planned the answer: one hand-over fewer for a page)."""
        self._add(take_pieces(self._pieces, min(READ_BYTES, self.read_ahead)))

    def _add(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            self._ready.append(piece)
            self._ready_bytes += len(piece)
            self._read_bytes += len(piece)
        # known by its length, so that the last piece needs no further read to say so
        self._exhausted = not pieces or self._read_bytes >= self.length + 8

    def pump(self, write: Callable[[bytes], None], paused: Callable[[], bool]) -> bool:
        """Write what was read until the transport pauses us; True once the frame is out."""
        if self.done and not self._ready:
            return True
        self._pumping = True
        try:
            while True:
                ready = self._ready
                while ready and not paused():
                    piece = ready.popleft()
                    self._ready_bytes -= len(piece)
                    self.started = True
                    write(piece)
                if not ready and self._exhausted:
                    self.close()
                    return True
                if not self._fill():
                    return False
        finally:
            self._pumping = False

    def _fill(self) -> bool:
        """Start the next read if there is room; True if it finished at once."""
        if self._reading or self._exhausted or self.done or self._ready_bytes >= self.read_ahead:
            return False
        self._reading = True
        self._arrived = False
        size = min(READ_BYTES, self.read_ahead - self._ready_bytes)
        self._read(take_pieces, self._pieces, size).addCallbacks(self._pieces_read, self._failed)
        return self._arrived

    def _pieces_read(self, pieces: list[bytes]) -> None:
        self._reading = False
        if self.done:  # closed while the read was in flight
            self._release()
            return
        self._add(pieces)
        self._arrived = True
        if not self._pumping:
            self._fill()  # keep reading ahead while the transport is busy
            if self.wake is not None:
                self.wake()

    def _failed(self, failure: Failure) -> None:
        self._reading = False
        if self.done:
            self._release()
            return
        self.log.failure("reading a replay answer failed", failure)
        self.done = True
        self._release()
        if not self.started and self.failure_frame is not None:
            self._ready = deque([self.failure_frame])
            self._ready_bytes = len(self.failure_frame)
            self._exhausted = True
            self._arrived = True
            if not self._pumping and self.wake is not None:
                self.wake()
        elif self.broken is not None:
            self.broken()

    def close(self) -> None:
        """Stop (the frame is complete, or the connection is gone); idempotent."""
        if self.done:
            return
        self.done = True
        if not self._reading:
            self._release()

    def _release(self) -> None:
        self._pieces.close()
        self.plan.close()
