"""One store connection's state, without its transport: what AMP calls the box-matching
layer, between the codec and the op handlers.

The session decodes requests, hands them to the router, and keeps the answers in
request order while writes wait for their group commit. It holds back *barrier* ops until
every earlier answer is out, caps the requests in flight, keeps the auth state, switches
to push mode after ``subscribe``, and enforces the connection's deadlines (auth, idle,
frame completion) on the clock it is given. It talks to the outside through a
``SessionOutput`` (the Twisted protocol in ``txloom.store.protocol``, or a test's
recorder), so every rule here can be driven without a socket.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

from twisted.logger import Logger
from twisted.python.failure import Failure

from txloom.store import errors
from txloom.store.config import UNAUTHENTICATED_MAX_FRAME_SIZE, StoreConfig
from txloom.store.errors import StorageFailure
from txloom.store.replies import MISSING, ReplyStream, error_frame
from txloom.store.requests import (
    Authenticated,
    BadRequest,
    CloseAfter,
    Request,
    Subscribe,
    parse_request,
)
from txloom.wire.crcjson import ObjectDecoder
from txloom.wire.errors import FrameTooLarge, RemoteProtocolError

__all__ = ["SessionOutput", "SessionServer", "StoreSession"]

_INTERNAL = "internal error; see the server log"
_STORAGE = "storage failure; see the server log"
_AUTH_FIRST = "authenticate first: send op auth with the token"


class SessionOutput(Protocol):
    """What a session needs from its connection."""

    def write(self, data: bytes) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def lose(self) -> None:
        """Close once what was written is out."""

    def abort(self) -> None: ...

    def start_push(self, stores: list[str] | None, since: int | None) -> None:
        """Register a subscriber for ``stores`` (before anything is acknowledged), write
        the ack, and route the transport's flow control to it from now on."""

    def became_authenticated(self) -> None:
        """The peer proved it holds the token (the server stops counting it a stranger)."""

    def drained(self) -> None:
        """While the server drains: nothing is left to answer."""


class SessionServer(Protocol):
    """What a session shares with the other connections of its server."""

    config: StoreConfig
    clock: Any
    router: Any
    draining: bool
    #: Bytes of unfinished frames held across all connections.
    partial_bytes: int


class _Slot:
    """One answer's place in the connection's answer order."""

    __slots__ = ("close_after", "frame")

    def __init__(self, frame: bytes | ReplyStream | None = None, close_after: bool = False):
        self.frame = frame
        self.close_after = close_after


class StoreSession:
    """See the module docstring. ``peer`` names the connection in logs."""

    log = Logger()

    def __init__(self, server: SessionServer, output: SessionOutput, peer: str = "?") -> None:
        self.server = server
        self.output = output
        self.peer = peer
        config = self.config = server.config
        self.clock = server.clock
        self.max_pipeline = config.max_pipeline
        self.authenticated = config.auth_token is None
        frame_limit = config.max_frame_size
        if not self.authenticated:
            frame_limit = min(frame_limit, UNAUTHENTICATED_MAX_FRAME_SIZE)
        self.decoder = ObjectDecoder(frame_limit)
        #: Bytes of unfinished frames counted in the server's ``partial_bytes``.
        self.buffered = 0
        self.slots: deque[_Slot] = deque()
        #: A barrier request waiting until every earlier answer is out.
        self.held: Request | None = None
        self.pushing = False
        self.closing = False
        self.lost = False
        self.write_paused = False
        self._reading_paused = False
        self._processing = False
        self.opened_at = self._last_activity = self.clock.seconds()
        # When the unfinished frame at the front of the buffer began, and the decoder's
        # position then (a new frame after it restarts the clock).
        self._frame_started: float | None = None
        self._frame_mark = 0
        self._watchdog: Any = None
        self._arm_watchdog()

    @property
    def idle(self) -> bool:
        return not self.slots

    # -- the connection's life ----------------------------------------------------------

    def connection_lost(self) -> None:
        self.closing = True
        self.lost = True
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None
        self._forget_buffer()
        while self.slots:
            frame = self.slots.popleft().frame
            if isinstance(frame, ReplyStream):
                frame.close()

    def evict(self) -> None:
        """Make room for a newcomer: this connection never authenticated."""
        self.closing = True
        self._forget_buffer()
        self.output.write(error_frame(errors.OVERLOADED, "too many connections"))
        self.output.lose()
        self.clock.callLater(self.config.auth_timeout, self._abort_if_open)

    def drain(self) -> None:
        """Shutting down: read no more requests; answers in flight still go out."""
        self._pause_reading()
        if self.pushing:
            self.lose()

    def lose(self) -> None:
        self.closing = True
        if not self.lost:
            self.output.lose()

    # -- flow control (the transport's pause and resume of our writes) ------------------

    def pause_writing(self) -> None:
        self.write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._flush()
        self._maybe_resume_reading()

    def _pause_reading(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            self.output.pause_reading()

    def _maybe_resume_reading(self) -> None:
        if (
            self._reading_paused
            and not self.write_paused
            and not self.closing
            and not self.server.draining
            and self.held is None
            and len(self.slots) < self.max_pipeline
        ):
            self._reading_paused = False
            self.output.resume_reading()
            if self.decoder.pending:
                # requests that arrived before the pause are already here: no more
                # bytes may come to wake us for them
                self._process()

    # -- requests -----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self._last_activity = self.clock.seconds()
        self.decoder.receive_data(data)
        self._process()
        server = self.server
        if (
            not self.closing
            and self.buffered
            and server.partial_bytes > self.config.max_partial_bytes
        ):
            # this peer's bytes pushed the total held for unfinished frames past the cap
            self._forget_buffer()
            self._fail_stream(
                errors.OVERLOADED, "the server holds too many unfinished frames; send again later"
            )

    def _process(self) -> None:
        if self._processing:  # the loop further up the stack goes on reading
            return
        self._processing = True
        try:
            self._read_requests()
        finally:
            self._processing = False
            self._account()

    def _account(self) -> None:
        """Keep the server's count of bytes held for unfinished frames up to date."""
        pending = self.decoder.pending
        if pending != self.buffered:
            self.server.partial_bytes += pending - self.buffered
            self.buffered = pending

    def _forget_buffer(self) -> None:
        """Drop whatever is buffered (the connection is going) and uncount it."""
        self.server.partial_bytes -= self.buffered
        self.buffered = 0
        self.decoder = ObjectDecoder(self.decoder.max_frame_size)
        self._frame_started = None

    def _read_requests(self) -> None:
        decoder = self.decoder
        while not self.closing and self.held is None and not self.server.draining:
            if len(self.slots) >= self.max_pipeline:
                self._frame_started = None  # the peer waits for us, not we for it
                self._pause_reading()
                return
            try:
                obj = decoder.next_object()
            except FrameTooLarge as e:
                self._fail_stream(errors.FRAME_TOO_LARGE, str(e))
                return
            except RemoteProtocolError as e:
                self._fail_stream(errors.BAD_FRAME, str(e))
                return
            if obj is None:
                self._frame_waiting()
                return
            if self.pushing:
                if obj.get("op") == "close":
                    self.lose()
                continue  # a push connection reads and ignores everything else
            self._dispatch(parse_request(obj))

    def _frame_waiting(self) -> None:
        """The decoder needs more bytes: start the frame's clock if a frame has begun."""
        decoder = self.decoder
        if not decoder.pending:
            self._frame_started = None
        elif self._frame_started is None or self._frame_mark != decoder.consumed:
            self._frame_started = self.clock.seconds()
            self._frame_mark = decoder.consumed
            self._arm_watchdog()

    def _fail_stream(self, code: str, message: str) -> None:
        """The byte stream is broken: answer once (after earlier answers), then close."""
        self.log.info(
            "closing connection from {peer}: {code}: {message}",
            peer=self.peer,
            code=code,
            message=message,
        )
        self.closing = True
        self._answer(_Slot(error_frame(code, message), close_after=True))

    def _dispatch(self, request: Request | BadRequest) -> None:
        if isinstance(request, BadRequest):
            if not self.authenticated:
                self._refuse_unauthenticated(MISSING)
            else:
                self._answer(_Slot(error_frame(request.code, request.message, request.request_id)))
            return
        request_id = request.request_id
        if not self.authenticated and request.spec.name != "auth":
            self._refuse_unauthenticated(request_id)
            return
        if request.spec.barrier and self.slots:
            self.held = request
            self._pause_reading()
            return
        slot = _Slot()
        self.slots.append(slot)
        try:
            result = self.server.router.handle(request)
        except errors.RequestError as e:
            self._error(slot, e.code, e.message, request_id, e.close)
            return
        except Exception:
            self.log.failure("op {op!r} failed", op=request.spec.name)
            self._error(slot, errors.INTERNAL_ERROR, _INTERNAL, request_id)
            return
        self._settle(slot, result, request_id)

    def _refuse_unauthenticated(self, request_id: Any) -> None:
        self.closing = True
        self._answer(
            _Slot(error_frame(errors.UNAUTHORIZED, _AUTH_FIRST, request_id), close_after=True)
        )

    # -- intents ------------------------------------------------------------------------

    def _settle(self, slot: _Slot, result: Any, request_id: Any) -> None:
        """``result`` is a frame, a ``ReplyStream``, an intent, or a Deferred of one."""
        if isinstance(result, CloseAfter):
            slot.close_after = True
            self.closing = True
            result = result.frame
        elif isinstance(result, Authenticated):
            self._authenticated()
            result = result.frame
        elif isinstance(result, Subscribe):
            self._subscribe(result)
            return
        if isinstance(result, bytes | ReplyStream):
            self._settled(result, slot)
            return
        result.addCallbacks(self._settled, self._settle_failed, (slot,), None, (slot, request_id))

    def _authenticated(self) -> None:
        if not self.authenticated:
            self.authenticated = True
            self.decoder.max_frame_size = self.config.max_frame_size
            self.output.became_authenticated()

    def _subscribe(self, intent: Subscribe) -> None:
        """Subscribe is a barrier: its own slot is the only one left."""
        self.slots.clear()
        self.pushing = True
        self.output.start_push(intent.stores, intent.since)
        self._maybe_resume_reading()

    # -- answers ------------------------------------------------------------------------

    def _settled(self, frame: bytes | ReplyStream, slot: _Slot) -> None:
        if isinstance(frame, ReplyStream):
            if self.lost:
                frame.close()  # the connection went while the plan was being made
                return
            frame.wake = self._stream_ready
            frame.broken = self._stream_broken
        slot.frame = frame
        if self.slots and self.slots[0] is slot:
            self._flush()

    def _stream_ready(self) -> None:
        """A replay stream read more: write it if it is the answer at the front."""
        if not self.lost and self.slots and not self.write_paused:
            self._flush()

    def _stream_broken(self) -> None:
        """A replay answer that was begun cannot be finished: the peer must not wait for
        the rest of a frame, so the connection goes."""
        self.closing = True
        if not self.lost:
            self.output.abort()

    def _settle_failed(self, failure: Failure, slot: _Slot, request_id: Any) -> None:
        if failure.check(errors.RequestError):
            e = failure.value
            self._error(slot, e.code, e.message, request_id, e.close)
            return
        if failure.check(StorageFailure):
            # logged by the backend, with the state it is in
            self._error(slot, errors.STORAGE_FAILED, _STORAGE, request_id)
            return
        self.log.failure("request failed", failure)
        self._error(slot, errors.INTERNAL_ERROR, _INTERNAL, request_id)

    def _error(
        self, slot: _Slot, code: str, message: str, request_id: Any, close: bool = False
    ) -> None:
        slot.frame = error_frame(code, message, request_id)
        if close:
            slot.close_after = True
            self.closing = True
        if self.slots and self.slots[0] is slot:
            self._flush()

    def _answer(self, slot: _Slot) -> None:
        self.slots.append(slot)
        self._flush()

    def _flush(self) -> None:
        """Write the answers that are ready, in request order."""
        slots = self.slots
        write = self.output.write
        while slots and not self.write_paused:
            slot = slots[0]
            frame = slot.frame
            if frame is None:
                break
            if isinstance(frame, ReplyStream):
                if not frame.pump(write, self._is_write_paused):
                    return
            else:
                write(frame)
            slots.popleft()
            if slot.close_after:
                self.lose()
                return
        if not slots:
            self._last_activity = self.clock.seconds()
            if self.held is not None:
                request, self.held = self.held, None
                self._dispatch(request)
                if self.held is None and not self.closing:
                    self._process()
            self._maybe_resume_reading()
            if self.server.draining and not self.slots:
                self.output.drained()
        elif len(slots) < self.max_pipeline:
            self._maybe_resume_reading()

    def _is_write_paused(self) -> bool:
        return self.write_paused

    # -- deadlines ----------------------------------------------------------------------

    def _next_deadline(self) -> float | None:
        config = self.config
        deadlines = []
        if not self.authenticated:
            deadlines.append(self.opened_at + config.auth_timeout)
        if self._frame_started is not None:
            deadlines.append(self._frame_started + config.frame_timeout)
        if not self.pushing:
            deadlines.append(self._last_activity + config.idle_timeout)
        return min(deadlines) if deadlines else None

    def _arm_watchdog(self) -> None:
        """One timer per connection, set for the earliest deadline; moved earlier when a
        nearer one appears, re-armed when it fires early (activity moved a deadline)."""
        when = self._next_deadline()
        if when is None or self.lost:
            return
        delay = max(0.0, when - self.clock.seconds())
        watchdog = self._watchdog
        if watchdog is not None and watchdog.active():
            if watchdog.getTime() > when:
                watchdog.reset(delay)
            return
        self._watchdog = self.clock.callLater(delay, self._check_deadlines)

    def _check_deadlines(self) -> None:
        self._watchdog = None
        if self.closing:
            return
        config = self.config
        now = self.clock.seconds()
        if not self.authenticated and now >= self.opened_at + config.auth_timeout:
            self._deadline_passed(
                errors.UNAUTHORIZED,
                f"not authenticated within {config.auth_timeout:g} s",
                config.auth_timeout,
            )
            return
        started = self._frame_started
        if started is not None and now >= started + config.frame_timeout:
            self._deadline_passed(
                errors.BAD_FRAME,
                f"frame not completed within {config.frame_timeout:g} s",
                config.frame_timeout,
            )
            return
        if not self.pushing and now >= self._last_activity + config.idle_timeout:
            if self.slots or self.held is not None:
                self._last_activity = now  # waiting for our answers is not idleness
            else:
                self.log.info(
                    "closing connection from {peer}: idle for {seconds:g} s",
                    peer=self.peer,
                    seconds=config.idle_timeout,
                )
                self.lose()
                return
        self._arm_watchdog()

    def _deadline_passed(self, code: str, message: str, grace: float) -> None:
        """Answer (after earlier answers) and close; a peer that does not take the
        answer within ``grace`` more seconds is cut off."""
        self._forget_buffer()
        self._fail_stream(code, message)
        self.clock.callLater(grace, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if not self.lost:
            self.output.abort()
