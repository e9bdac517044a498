"""The client's side of one source: its channel connection and what the reader iterates.

``SourceStream`` is what ``StreamClient.post`` yields: ``.header``, ``.meta`` and its frames,
read with ``async for frame in source`` (Twisted coroutines) or ``source.read()`` (a
Deferred firing with the next frame, or None at the end). Frames read ahead are bounded by
the frame-buffer option: once that many wait for the reader, the channel's transport is
paused, TCP's window closes, and the server's pump for this source (and only this one)
stops pulling frames.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from txloom.streams.errors import ConnectionLostEarly, RequestRefused, StreamTimeout
from txloom.streams.timers import Deadline, no_delay
from txloom.wire.decoder import NEED_DATA, ConnectionClosed
from txloom.wire.errors import RemoteProtocolError
from txloom.wire.streams import (
    Accepted,
    Attach,
    ChannelDecoder,
    Frame,
    Refuse,
    encode_control,
    encode_frame,
)

if TYPE_CHECKING:
    from txloom.streams.client import RequestStream

__all__ = ["READ_SIZE", "SourceMeta", "SourceStream"]

#: Most bytes a channel takes from its socket in one read.
READ_SIZE = 256 * 1024


@dataclass(frozen=True, slots=True)
class SourceMeta:
    """Where a source's frames come from: the channel's remote and local addresses."""

    remote: Any
    local: Any


class SourceStream:
    """One announced source, read in order (see the module doc)."""

    def __init__(self, request: RequestStream, header: bytes, channel: bytes, compressed: bool):
        self.request = request
        self.header = header
        self.channel = channel
        self.compressed = compressed
        self.meta: SourceMeta | None = None
        #: True once attached, or once failed before that; the request yields it then.
        self.ready = False
        self.frames_received = 0
        self._frames: deque[bytes] = deque()
        #: The pending read, and whether it wants a batch (a list) or one frame.
        self._waiter: Deferred[Any] | None = None
        self._wants_batch = False
        self._end: BaseException | None = None
        self._ended = False
        self._connection: ChannelConnection | None = None
        self._paused = False
        self._limit = request.client.options.frame_buffer
        self.read_deadline = Deadline(
            request.client.clock,
            request.client.options.frame_read_timeout,
            lambda: self.fail(StreamTimeout("frame read timeout: no frame in time")),
        )

    # -- reading -----------------------------------------------------------------------
    def __aiter__(self) -> SourceStream:
        return self

    def __anext__(self) -> Deferred[bytes]:
        if self._frames:
            return succeed(self._take())
        if self._ended:
            return fail(self._end or StopAsyncIteration())
        return self._wait(batch=False)

    def _wait(self, batch: bool) -> Deferred[Any]:
        if self._waiter is not None:
            raise RuntimeError("one reader at a time: the previous read has not fired")
        self._waiter = Deferred()
        self._wants_batch = batch
        self.read_deadline.arm()
        return self._waiter

    def read(self) -> Deferred[bytes | None]:
        """The next frame, or None after the last one; fails with the source's error."""

        def end(failure: Failure) -> None:
            failure.trap(StopAsyncIteration)

        return self.__anext__().addErrback(end)

    def read_batch(self) -> Deferred[list[bytes]]:
        """Every frame read ahead (waiting for one if none is); ``[]`` after the last.

        For readers of many small frames: one Deferred per batch instead of per frame.
        """
        if self._frames:
            return succeed(self._take_all())
        if self._ended:
            return succeed([]) if self._end is None else fail(self._end)
        return self._wait(batch=True)

    def close(self) -> None:
        """Stop reading this source: its channel is closed and read-ahead frames dropped."""
        self._frames.clear()
        if not self._ended:
            self._finish(None)
        if self._connection is not None and self._connection.transport is not None:
            self._connection.transport.loseConnection()

    def _take(self) -> bytes:
        frame = self._frames.popleft()
        self._resume()
        return frame

    def _take_all(self) -> list[bytes]:
        frames = list(self._frames)
        self._frames.clear()
        self._resume()
        return frames

    def _resume(self) -> None:
        if self._paused and len(self._frames) < self._limit:
            self._paused = False
            connection = self._connection
            if connection is not None and connection.transport is not None:
                connection.transport.resumeProducing()

    # -- from the channel --------------------------------------------------------------
    def connected(self, connection: ChannelConnection) -> None:
        self._connection = connection
        transport = connection.transport
        self.meta = SourceMeta(transport.getPeer(), transport.getHost())

    def attached(self) -> None:
        self.ready = True
        self.request.source_ready()

    def frames(self, payloads: list[bytes]) -> None:
        """Frames arrived (one read's worth); the reader is woken by ``wake`` once per read.

        The frame buffer is checked once per read: at most one read beyond it is held.
        """
        if self._ended:
            return
        self.frames_received += len(payloads)
        frames = self._frames
        frames.extend(payloads)
        if len(frames) >= self._limit and not self._paused:
            self._paused = True
            self._connection.transport.pauseProducing()  # type: ignore[union-attr]

    def wake(self) -> None:
        """Hand what arrived to a waiting reader: one Deferred per socket read, not per frame."""
        waiter = self._waiter
        if waiter is None or not self._frames:
            return
        self._waiter = None
        self.read_deadline.cancel()
        waiter.callback(self._take_all() if self._wants_batch else self._take())

    def fail(self, error: BaseException) -> None:
        """End this source with ``error`` (after the frames already received)."""
        if self._ended:
            return
        self._finish(error)
        self.request.client.report(error, self)
        if self._connection is not None and self._connection.transport is not None:
            self._connection.transport.abortConnection()

    def _finish(self, error: BaseException | None) -> None:
        self.wake()  # frames received before the end go first
        self._ended = True
        self._end = error
        self.read_deadline.cancel()
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            if error is None and self._wants_batch:
                waiter.callback([])
            else:
                waiter.errback(error or StopAsyncIteration())
        if not self.ready:
            self.ready = True
            self.request.source_ready()
        self.request.source_ended(self)

    def ended_cleanly(self) -> None:
        if not self._ended:
            self._finish(None)


class ChannelConnection(Protocol):
    """Attaches to one announced source and feeds its frames to the ``SourceStream``."""

    def __init__(self, source: SourceStream, token: bytes | None, max_frame_size: int) -> None:
        self.source = source
        self.token = token
        self.decoder = ChannelDecoder(source.compressed, max_frame_size)
        self.accepted = False
        self._sized_reads = False

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self._sized_reads = hasattr(self.transport, "bufferSize")
        if self._sized_reads:
            # Read up to READ_SIZE per wake-up: a channel only reads, and large frames then
            # cost a few reads each rather than one per 64 KiB. Around large frames the
            # decoder's read_hint sizes reads to the frame, so that a payload the kernel
            # already holds whole arrives as one object, not pieces joined into a copy.
            self.transport.bufferSize = READ_SIZE
        self.source.connected(self)
        attach = Attach(self.source.channel, self.token)
        self.transport.write(encode_frame(encode_control(attach)))

    def dataReceived(self, data: bytes) -> None:
        decoder = self.decoder
        decoder.receive_data(data)
        source = self.source
        try:
            while True:
                payloads = decoder.next_frames()
                if payloads:
                    source.frames(payloads)
                event = decoder.next_event()
                if event is NEED_DATA:
                    break
                if type(event) is Frame:
                    source.frames([event.payload])
                else:
                    self._control(event)
        except RemoteProtocolError as e:
            source.fail(e)
        source.wake()
        if self._sized_reads:
            self.transport.bufferSize = decoder.read_hint or READ_SIZE

    def _control(self, event: object) -> None:
        if isinstance(event, Accepted):
            self.accepted = True
            self.source.attached()
        elif isinstance(event, Refuse):
            self.source.fail(RequestRefused(f"attach refused: {event.reason}"))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.decoder.receive_eof()
        try:
            events = list(self.decoder)
        except RemoteProtocolError as e:
            self.source.fail(e)
            return
        for event in events:
            if isinstance(event, Frame):
                self.source.frames([event.payload])
            elif not isinstance(event, ConnectionClosed):
                self._control(event)
        clean = reason is None or reason.check(ConnectionDone) is not None
        if not self.accepted:
            self.source.fail(ConnectionLostEarly("channel closed before the attach was accepted"))
        elif not clean:
            self.source.fail(
                ConnectionLostEarly(f"channel lost: {reason.getErrorMessage() if reason else ''}")
            )
        else:
            self.source.ended_cleanly()
