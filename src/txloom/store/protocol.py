"""The store server's connection: bytes in, requests to the router, answers out in order.

This is the thin layer between a transport and ``txloom.store.ops``: it feeds the codec,
keeps answers in request order while writes wait for their group commit, applies the
per-connection limits, and switches the connection to push mode after ``subscribe``.

Flow control runs both ways. The connection registers itself as its transport's push
producer: when the peer stops reading and the transport's buffer fills, answers (and
replay streams) wait and the connection stops reading new requests, so one slow peer
costs a bounded amount of memory. Requests in flight per connection are capped too.
"""

from __future__ import annotations

import contextlib
import hmac
import json
from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txloom.store import errors
from txloom.store.config import UNAUTHENTICATED_MAX_FRAME_SIZE
from txloom.store.errors import StorageFailure
from txloom.store.replies import (
    MISSING,
    ReplyStream,
    error_frame,
    ok_frame,
    request_id_problem,
)
from txloom.store.subscriptions import Subscriber, SubscriberQueue
from txloom.wire.crcjson import ObjectDecoder
from txloom.wire.errors import FrameTooLarge, RemoteProtocolError

if TYPE_CHECKING:
    from txloom.store.ops import RequestRouter
    from txloom.store.service import StoreServerFactory

__all__ = ["CloseAfter", "StoreServerProtocol"]

_INTERNAL = "internal error; see the server log"
_STORAGE = "storage failure; see the server log"
_AUTH_FIRST = "authenticate first: send op auth with the token"


class CloseAfter:
    """An answer after which the connection is closed (the ``close`` op)."""

    __slots__ = ("frame",)

    def __init__(self, frame: bytes) -> None:
        self.frame = frame


class _Slot:
    """One answer's place in the connection's answer order."""

    __slots__ = ("close_after", "frame")

    def __init__(self, frame: bytes | ReplyStream | None = None, close_after: bool = False):
        self.frame = frame
        self.close_after = close_after


@implementer(IPushProducer)
class StoreServerProtocol(Protocol):
    log = Logger()

    factory: StoreServerFactory

    def __init__(self, factory: StoreServerFactory) -> None:
        self.factory = factory
        config = factory.config
        self.router: RequestRouter = factory.router
        self.config = config
        self.clock = factory.clock
        self.max_pipeline = config.max_pipeline
        self.authenticated = config.auth_token is None
        frame_limit = config.max_frame_size
        if not self.authenticated:
            frame_limit = min(frame_limit, UNAUTHENTICATED_MAX_FRAME_SIZE)
        self.decoder = ObjectDecoder(frame_limit)
        #: Bytes of unfinished frames counted in the factory's ``partial_bytes``.
        self.buffered = 0
        self.opened_at = 0.0
        self._last_activity = 0.0
        # When the unfinished frame at the front of the buffer began, and the decoder's
        # position then (a new frame after it restarts the clock).
        self._frame_started: float | None = None
        self._frame_mark = 0
        self._watchdog: Any = None
        self.slots: deque[_Slot] = deque()
        #: A request that must wait until every earlier answer is out (replay...).
        self.held: dict[str, Any] | None = None
        self.subscriber: Subscriber | None = None
        self.closing = False
        self.lost = False
        self.write_paused = False
        self._reading_paused = False
        #: True while the factory counts this connection.
        self.counted = False
        self.peer = "?"

    # -- connection lifetime ------------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer = str(getattr(peer, "host", "") or peer)
        if not self.factory.admit(self):
            self.closing = True
            self.transport.write(
                error_frame(
                    errors.OVERLOADED,
                    f"connection limit of {self.factory.config.max_connections} reached",
                )
            )
            self.transport.loseConnection()  # no producer registered yet
            return
        self.counted = True
        self.opened_at = self._last_activity = self.clock.seconds()
        self._arm_watchdog()
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            with contextlib.suppress(OSError, AttributeError):
                set_no_delay(True)
        self.transport.registerProducer(self, True)
        if self.factory.draining:
            self.drain()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closing = True
        self.lost = True
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None
        self._forget_buffer()
        if self.subscriber is not None:
            self.factory.hub.remove(self.subscriber)
            self.subscriber.queue.stopProducing()
            self.subscriber = None
        while self.slots:
            frame = self.slots.popleft().frame
            if isinstance(frame, ReplyStream):
                frame.close()
        if self.counted:
            self.factory.release(self)

    def evict(self) -> None:
        """Make room for a newcomer: this connection never authenticated."""
        self.closing = True
        self._forget_buffer()
        self.transport.write(error_frame(errors.OVERLOADED, "too many connections"))
        self.lose_connection()
        self.clock.callLater(self.config.auth_timeout, self._abort_if_open)

    def drain(self) -> None:
        """Shutting down: read no more requests; answers in flight still go out."""
        self._pause_reading()
        if self.subscriber is not None:
            self.lose_connection()

    def lose_connection(self) -> None:
        """Close once the buffered bytes are out.

        The producer must go first: Twisted keeps a connection with a registered
        producer open until that producer is unregistered.
        """
        self.closing = True
        if self.connected:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    @property
    def idle(self) -> bool:
        return not self.slots

    # -- IPushProducer (the transport's view of us) -------------------------------------

    def pauseProducing(self) -> None:
        self.write_paused = True
        if self.subscriber is not None:
            self.subscriber.queue.pauseProducing()
        else:
            self._pause_reading()

    def resumeProducing(self) -> None:
        self.write_paused = False
        if self.subscriber is not None:
            self.subscriber.queue.resumeProducing()
            return
        self._flush()
        self._maybe_resume_reading()

    def stopProducing(self) -> None:
        self.closing = True

    def _pause_reading(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            self.transport.pauseProducing()

    def _maybe_resume_reading(self) -> None:
        if (
            self._reading_paused
            and not self.write_paused
            and not self.closing
            and not self.factory.draining
            and self.held is None
            and len(self.slots) < self.max_pipeline
        ):
            self._reading_paused = False
            self.transport.resumeProducing()

    # -- requests -----------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        self._last_activity = self.clock.seconds()
        self.decoder.receive_data(data)
        self._process()
        if (
            not self.closing
            and self.buffered
            and self.factory.partial_bytes > self.config.max_partial_bytes
        ):
            # this peer's bytes pushed the total held for unfinished frames past the cap
            self._forget_buffer()
            self._fail_stream(
                errors.OVERLOADED,
                "the server holds too many unfinished frames; send again later",
            )

    def _process(self) -> None:
        try:
            self._read_requests()
        finally:
            self._account()

    def _account(self) -> None:
        """Keep the factory's count of bytes held for unfinished frames up to date."""
        pending = self.decoder.pending
        if pending != self.buffered:
            self.factory.partial_bytes += pending - self.buffered
            self.buffered = pending

    def _forget_buffer(self) -> None:
        """Drop whatever is buffered (the connection is going) and uncount it."""
        self.factory.partial_bytes -= self.buffered
        self.buffered = 0
        self.decoder = ObjectDecoder(self.decoder.max_frame_size)
        self._frame_started = None

    def _read_requests(self) -> None:
        decoder = self.decoder
        while not self.closing and self.held is None and not self.factory.draining:
            if len(self.slots) >= self.max_pipeline:
                self._frame_started = None  # the peer waits for us, not we for it
                self._pause_reading()
                return
            try:
                request = decoder.next_object()
            except FrameTooLarge as e:
                self._fail_stream(errors.FRAME_TOO_LARGE, str(e))
                return
            except RemoteProtocolError as e:
                self._fail_stream(errors.BAD_FRAME, str(e))
                return
            if request is None:
                self._frame_waiting()
                return
            if self.subscriber is not None:
                if request.get("op") == "close":
                    self.lose_connection()
                continue  # a push connection reads and ignores everything else
            self._dispatch(request)

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

    def _frame_waiting(self) -> None:
        """The decoder needs more bytes: start the frame's clock if a frame has begun."""
        frames = self.decoder
        if not frames.pending:
            self._frame_started = None
        elif self._frame_started is None or self._frame_mark != frames.consumed:
            self._frame_started = self.clock.seconds()
            self._frame_mark = frames.consumed
            self._arm_watchdog()

    def _dispatch(self, request: dict[str, Any]) -> None:
        request_id = request.get("request_id", MISSING)
        op = request.get("op")
        if request_id is not MISSING:
            problem = request_id_problem(request_id)
            if problem is not None:
                if not self.authenticated:
                    self._refuse_unauthenticated(MISSING)
                else:
                    self._answer(_Slot(error_frame(errors.INVALID_REQUEST, problem)))
                return
        if not self.authenticated and op != "auth":
            self._refuse_unauthenticated(request_id)
            return
        handler = self.router.handler(op)
        if handler is None:
            shown = "nil" if op is None else _inspect(op)
            self._answer(_Slot(error_frame(errors.UNKNOWN_OP, f"Unknown op: {shown}", request_id)))
            return
        if handler.barrier and self.slots:
            self.held = request
            self._pause_reading()
            return
        slot = _Slot()
        self.slots.append(slot)
        try:
            result = handler(self, request)
        except errors.RequestError as e:
            self._error(slot, e.code, e.message, request_id, e.close)
            return
        except Exception:
            self.log.failure("op {op!r} failed", op=op)
            self._error(slot, errors.INTERNAL_ERROR, _INTERNAL, request_id)
            return
        if result is not None:  # None: the handler answered itself (subscribe)
            self._settle(slot, result, request_id)

    def _refuse_unauthenticated(self, request_id: Any) -> None:
        self.closing = True
        self._answer(
            _Slot(
                error_frame(errors.UNAUTHORIZED, _AUTH_FIRST, request_id),
                close_after=True,
            )
        )

    def check_token(self, token: Any) -> bool:
        expected = self.factory.config.auth_token
        if expected is None:
            return True
        try:
            ok = isinstance(token, str) and hmac.compare_digest(
                token.encode("utf-8"), expected.encode("utf-8")
            )
        except UnicodeEncodeError:  # a lone surrogate is no token
            ok = False
        if ok and not self.authenticated:
            self.authenticated = True
            self.decoder.max_frame_size = self.config.max_frame_size
            self.factory.authenticated(self)
        return ok

    # -- deadlines ----------------------------------------------------------------------

    def _next_deadline(self) -> float | None:
        config = self.config
        deadlines = []
        if not self.authenticated:
            deadlines.append(self.opened_at + config.auth_timeout)
        if self._frame_started is not None:
            deadlines.append(self._frame_started + config.frame_timeout)
        if self.subscriber is None:
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
        if self.subscriber is None and now >= self._last_activity + config.idle_timeout:
            if self.slots or self.held is not None:
                self._last_activity = now  # waiting for our answers is not idleness
            else:
                self.log.info(
                    "closing connection from {peer}: idle for {seconds:g} s",
                    peer=self.peer,
                    seconds=config.idle_timeout,
                )
                self.lose_connection()
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
            self.transport.abortConnection()

    # -- answers ------------------------------------------------------------------------

    def _settle(self, slot: _Slot, result: Any, request_id: Any) -> None:
        """``result`` is a frame, a ``ReplyStream``, or a Deferred firing with either."""
        if isinstance(result, CloseAfter):
            slot.close_after = True
            self.closing = True
            result = result.frame
        if isinstance(result, bytes | ReplyStream):
            self._settled(result, slot)
            return
        result.addCallbacks(self._settled, self._settle_failed, (slot,), None, (slot, request_id))

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
            self.transport.abortConnection()

    def _settle_failed(self, failure: Failure, slot: _Slot, request_id: Any) -> None:
        if failure.check(errors.RequestError):
            e = failure.value
            self._error(slot, e.code, e.message, request_id, e.close)
            return
        if failure.check(StorageFailure):
            # logged once by the backend, with the state it is in
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
        write = self.transport.write
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
                self.lose_connection()
                return
        if not slots:
            self._last_activity = self.clock.seconds()
            if self.held is not None:
                request, self.held = self.held, None
                self._dispatch(request)
                if self.held is None and not self.closing:
                    self._process()
            self._maybe_resume_reading()
            if self.factory.draining:
                self.factory.connection_idle(self)
        elif len(slots) < self.max_pipeline:
            self._maybe_resume_reading()

    def _is_write_paused(self) -> bool:
        return self.write_paused

    # -- push mode ----------------------------------------------------------------------

    def become_subscriber(self, stores: list[str] | None, since: int | None) -> None:
        """Register (before the ack goes out), ack, and turn into a push connection."""
        config = self.factory.config
        queue = SubscriberQueue(
            self.transport,
            max_events=config.subscriber_max_events,
            max_bytes=config.subscriber_max_bytes,
            policy=config.slow_subscriber,
            clock=self.factory.clock,
            close_timeout=config.overflow_close_timeout,
            close=self.lose_connection,
        )
        queue.paused = self.write_paused
        subscriber = Subscriber(self.factory.hub, queue, stores, since)
        self.factory.hub.add(subscriber)
        self.subscriber = subscriber
        self.slots.clear()  # subscribe is a barrier: nothing was left but its own slot
        self.transport.write(ok_frame())
        subscriber.start()
        self._maybe_resume_reading()


def _inspect(value: Any) -> str:
    """The op as the reference server names it in ``Unknown op: ...``."""
    return json.dumps(value, ensure_ascii=False)
