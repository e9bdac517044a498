"""The server's connections: one protocol for masters and channels, the request being
served on a master, and the pump that streams one source onto its channel.

``ServerConnection`` only feeds bytes to ``ServerConnectionDecoder`` and hands the events to
``StreamServer``. ``RequestRun`` asks the source function for sources, one at a time and
only while the client reads the master (it is the master's push producer), and announces
each. ``SourcePump`` is a channel's push producer: it pulls the next frame only while the
transport wants more, so a slow reader pauses that source alone and the server holds at
most one frame plus the transport's buffer per source.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txloom.streams.source import END, Puller, Source, as_source, resolve_items
from txloom.streams.timers import Deadline, no_delay
from txloom.wire.errors import RemoteProtocolError
from txloom.wire.framing import U64_LE
from txloom.wire.streams import (
    ABORT_MARK,
    Accepted,
    Announce,
    Attach,
    End,
    Hello,
    Refuse,
    Request,
    ServerConnectionDecoder,
    compress_payload,
    encode_control,
    encode_frame,
)

if TYPE_CHECKING:
    from txloom.streams.server import StreamServer

#: Frames are handed to a channel's transport in batches of about this many bytes.
WRITE_BATCH = 64 * 1024
#: Length of a channel token: 128 random bits, unguessable.
CHANNEL_TOKEN_SIZE = 16


def _refusal(reason: str) -> bytes:
    """A master's refusal: an empty header frame, then the ``Refuse`` control frame."""
    return encode_frame(b"") + encode_frame(encode_control(Refuse(reason)))


#: The end of a master that served its request: an empty header frame, then ``End``.
_END = encode_frame(b"") + encode_frame(encode_control(End()))


class ServerConnection(Protocol):
    """Either kind of connection to a stream server, until its first frame says which."""

    log = Logger()

    def __init__(self, server: StreamServer) -> None:
        self.server = server
        self.decoder = ServerConnectionDecoder(server.options.max_frame_size)
        self.hello: Hello | None = None
        #: The request (on a master) or the pump (on a channel) this connection serves.
        self.role: RequestRun | SourcePump | None = None
        self.read_deadline = Deadline(
            server.clock, server.options.master_read_timeout, self._read_timed_out
        )

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self.read_deadline.arm()

    def dataReceived(self, data: bytes) -> None:
        self.decoder.receive_data(data)
        try:
            for event in self.decoder:
                self._event(event)
        except RemoteProtocolError as e:
            self.fail(f"protocol error: {e}", refuse=self.hello is not None)

    def _event(self, event: object) -> None:
        if isinstance(event, Hello):
            self.hello = event
        elif isinstance(event, Request):
            self.read_deadline.cancel()
            assert self.hello is not None
            reason = self.server.check_request(self.hello)
            if reason is not None:
                self.fail(reason, refuse=True)
                return
            run = RequestRun(self.server, self, self.hello, event.body)
            self.role = run
            run.start()
        elif isinstance(event, Attach):
            self.read_deadline.cancel()
            pending = self.server.attach(event)
            if isinstance(pending, str):
                self.transport.write(encode_frame(encode_control(Refuse(pending))))
                self.transport.loseConnection()
                return
            self.transport.write(encode_frame(encode_control(Accepted())))
            pump = SourcePump(pending, self)
            self.role = pump
            pump.start()

    def fail(self, reason: str, refuse: bool = False) -> None:
        """An accept/serve error on this connection: counted, logged, refused, closed."""
        self.log.info("stream connection from {peer}: {reason}", peer=self._peer(), reason=reason)
        self.server.count_error()
        if refuse and self.transport is not None:
            self.transport.write(_refusal(reason))
        self.transport.loseConnection()

    def _peer(self) -> str:
        peer = self.transport.getPeer() if self.transport else None
        return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"

    def _read_timed_out(self) -> None:
        self.fail("master read timeout: no request or attach in time", refuse=bool(self.hello))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.read_deadline.cancel()
        if self.role is not None:
            self.role.connection_lost(reason)


class PendingSource:
    """A source announced and not yet attached; released if its accept timeout passes."""

    __slots__ = ("deadline", "run", "source", "token")

    def __init__(self, run: RequestRun, source: Source, token: bytes) -> None:
        self.run = run
        self.source = source
        self.token = token
        self.deadline = Deadline(run.server.clock, run.server.options.accept_timeout, self.expire)

    def expire(self) -> None:
        self.run.server.forget_pending(self.token)
        Puller(self.source.frames).close()
        self.run.channel_ended(self, "channel accept timeout: the source was never attached")

    def release(self) -> None:
        self.deadline.cancel()
        self.run.server.forget_pending(self.token)
        Puller(self.source.frames).close()


@implementer(IPushProducer)
class RequestRun:
    """One request on a master connection: sourcing, announcing, and its deadlines."""

    log = Logger()

    def __init__(self, server: StreamServer, master: ServerConnection, hello: Hello, body: bytes):
        self.server = server
        self.master = master
        self.hello = hello
        self.body = body
        options = server.options
        self.announced = 0
        #: Sources of this request that ended in an error (expired, cut, failed).
        self.errors = 0
        self.pending: dict[bytes, PendingSource] = {}
        self.pumps: set[SourcePump] = set()
        self.sourcing_done = False
        self._master_closed = False
        self.failed: str | None = None
        self._paused = False
        self._resume: Deferred[None] | None = None
        self._pull: Deferred[Any] | None = None
        self._puller: Puller | None = None
        self.serving_deadline = Deadline(
            server.clock, options.serving_timeout, lambda: self.abort("serving timeout")
        )
        self.sourcing_deadline = Deadline(
            server.clock, options.sourcing_timeout, self._sourcing_timed_out
        )
        self.write_deadline = Deadline(
            server.clock, options.master_write_timeout, lambda: self.abort("master write timeout")
        )

    def start(self) -> None:
        self.server.requests.add(self)
        self.master.transport.registerProducer(self, True)
        self.serving_deadline.arm()
        self.sourcing_deadline.arm()
        Deferred.fromCoroutine(self._source()).addErrback(self._sourcing_failed)

    # -- IPushProducer (the master's transport) ----------------------------------------
    def pauseProducing(self) -> None:
        self._paused = True
        self.write_deadline.arm()

    def resumeProducing(self) -> None:
        self._paused = False
        self.write_deadline.cancel()
        resume, self._resume = self._resume, None
        if resume is not None:
            resume.callback(None)

    def stopProducing(self) -> None:
        self._stop_sourcing()

    # -- sourcing ----------------------------------------------------------------------
    async def _source(self) -> None:
        func = self.server.source_function(self.hello.service)
        items = await resolve_items(func(self.body, dict(self.hello.tags)))
        self._puller = Puller(items)
        while not self.sourcing_done:
            item = self._puller.pull()
            if isinstance(item, Deferred):
                self._pull = item
                item = await item
                self._pull = None
            if item is END or self.sourcing_done:
                break
            source = as_source(item)
            if self.announced >= self.server.options.max_sources:
                Puller(source.frames).close()
                self.fail(f"source limit: more than {self.server.options.max_sources} sources")
                return
            if self._paused:
                self._resume = Deferred()
                await self._resume
                if self.sourcing_done:
                    Puller(source.frames).close()
                    break
            self._announce(source)
        self._finish_sourcing()

    def _announce(self, source: Source) -> None:
        token = secrets.token_bytes(CHANNEL_TOKEN_SIZE)
        pending = PendingSource(self, source, token)
        self.pending[token] = pending
        self.server.add_pending(pending)
        pending.deadline.arm()
        compressed = self.server.compressed(source)
        announce = encode_control(Announce(token, compressed))
        self.announced += 1
        self.master.transport.write(encode_frame(source.header) + encode_frame(announce))
        self.sourcing_deadline.arm()

    def _finish_sourcing(self) -> None:
        if self._master_closed:
            return
        self._master_closed = True
        self.sourcing_done = True
        self.sourcing_deadline.cancel()
        self.write_deadline.cancel()
        self.master.transport.unregisterProducer()
        self.master.transport.write(_END)
        self.master.transport.loseConnection()
        self._maybe_done()

    def _stop_sourcing(self) -> None:
        self.sourcing_done = True
        pull, self._pull = self._pull, None
        if pull is not None:
            pull.cancel()
        resume, self._resume = self._resume, None
        if resume is not None:
            resume.callback(None)
        if self._puller is not None:
            self._puller.close()

    def _sourcing_timed_out(self) -> None:
        self.log.info("sourcing timeout: closing the master of {name}", name=self.hello.service)
        self._stop_sourcing()
        self._finish_sourcing()

    def _sourcing_failed(self, failure: Failure) -> None:
        if failure.check(CancelledError) and self.sourcing_done:
            self._finish_sourcing()
            return
        self.log.failure("source function of {service} failed", failure, service=self.hello.service)
        self.fail(f"source function failed: {failure.getErrorMessage()}")

    # -- ending ------------------------------------------------------------------------
    def fail(self, reason: str) -> None:
        """End the request with an error: refused on the master, pending sources released."""
        if self.failed is not None:
            return
        self.failed = reason
        self._master_closed = True
        self._stop_sourcing()
        self.server.count_error()
        self.master.transport.write(_refusal(reason))
        self.master.transport.unregisterProducer()
        self.master.transport.loseConnection()
        self._close_all(abort_pumps=None)

    def abort(self, reason: str) -> None:
        """A deadline passed: cut the master and every channel of this request."""
        self.log.info("request for {service}: {reason}", service=self.hello.service, reason=reason)
        self.fail(reason)
        self._close_all(abort_pumps=reason)

    def _close_all(self, abort_pumps: str | None) -> None:
        for pending in list(self.pending.values()):
            pending.release()
        self.pending.clear()
        if abort_pumps is not None:
            for pump in list(self.pumps):
                pump.abort(abort_pumps)
        self._maybe_done()

    def channel_ended(self, pending: PendingSource | SourcePump, error: str | None) -> None:
        if isinstance(pending, PendingSource):
            self.pending.pop(pending.token, None)
        else:
            self.pumps.discard(pending)
        if error is not None:
            self.log.info("source of {service}: {error}", service=self.hello.service, error=error)
            self.errors += 1
            self.server.count_error()
        self._maybe_done()

    def connection_lost(self, reason: Failure | None) -> None:
        if not self.sourcing_done:
            self._stop_sourcing()
            self.sourcing_done = True
            self.failed = self.failed or "master connection lost"
        self._maybe_done()

    def _maybe_done(self) -> None:
        idle = not self.pending and not self.pumps
        if self.sourcing_done and idle and self in self.server.requests:
            self.serving_deadline.cancel()
            self.sourcing_deadline.cancel()
            self.write_deadline.cancel()
            self.server.requests.discard(self)
            if self.failed is None and not self.errors:
                self.server.count_success()


@implementer(IPushProducer)
class SourcePump:
    """Streams one source's frames onto its channel, as fast as the channel takes them."""

    log = Logger()

    def __init__(self, pending: PendingSource, channel: ServerConnection) -> None:
        self.run = pending.run
        self.channel = channel
        self.transport = channel.transport
        self.puller = Puller(pending.source.frames)
        source = pending.source
        self.compressed = self.run.server.compressed(source)
        self.max_frame_size = self.run.server.options.max_frame_size
        self.paused = False
        self.done = False
        self.frames = 0
        self.bytes = 0
        self._waiting: Deferred[Any] | None = None
        self.write_deadline = Deadline(
            self.run.server.clock,
            self.run.server.options.frame_write_timeout,
            lambda: self.abort("frame write timeout"),
        )

    @property
    def buffered(self) -> int:
        """Bytes of this source held by the server: written, not yet taken by the kernel.

        Read from Twisted's ``FileDescriptor`` buffer fields (0 for transports without them).
        """
        t = self.transport
        held = len(getattr(t, "dataBuffer", b"")) - getattr(t, "offset", 0)
        return held + getattr(t, "_tempDataLen", 0)

    def start(self) -> None:
        self.run.pumps.add(self)
        self.transport.registerProducer(self, True)
        self._pump()

    def pauseProducing(self) -> None:
        self.paused = True
        self.write_deadline.arm()

    def resumeProducing(self) -> None:
        self.paused = False
        self.write_deadline.cancel()
        if self._waiting is None and not self.done:
            self._pump()

    def stopProducing(self) -> None:
        self._end("the client went away")

    def _pump(self) -> None:
        """Pull and send frames until paused, waiting, or ended.

        Frames are handed to the transport in batches of up to ``WRITE_BATCH`` bytes: one
        transport call per batch rather than per frame, and the transport still pauses us
        as soon as its buffer is full (so at most one batch is held beyond it).
        """
        batch: list[bytes] = []
        size = 0
        pull = self.puller.pull
        pack = U64_LE.pack
        while not self.done:
            try:
                item = pull()
            except Exception as e:
                self._flush(batch)
                self.log.failure("a source's frames failed", Failure())
                self.abort(f"source failed: {e}")
                return
            if isinstance(item, Deferred):
                self._flush(batch)
                if not self.done:
                    self._waiting = item
                    item.addCallbacks(self._pulled, self._failed)
                return
            if item is END:
                self._flush(batch)
                self._end(None)
                return
            payload = self._payload(item)
            if payload is None:
                return
            batch.append(pack(len(payload)))
            batch.append(payload)
            size += len(payload) + 8
            if size >= WRITE_BATCH:
                self._flush(batch)
                batch, size = [], 0
                if self.paused:
                    return

    def _flush(self, batch: list[bytes]) -> None:
        if batch and not self.done:
            self.frames += len(batch) // 2
            self.transport.writeSequence(batch)

    def _pulled(self, item: Any) -> None:
        self._waiting = None
        if self.done:
            return
        if item is END:
            self._end(None)
            return
        payload = self._payload(item)
        if payload is not None:
            self.frames += 1
            self.transport.writeSequence((U64_LE.pack(len(payload)), payload))
            if not self.paused:
                self._pump()

    def _failed(self, failure: Failure) -> None:
        self._waiting = None
        if self.done:
            return
        self.log.failure("a source's frames failed", failure)
        self.abort(f"source failed: {failure.getErrorMessage()}")

    def _payload(self, payload: Any) -> bytes | None:
        """The bytes to send for one frame, or None after aborting for a bad one."""
        if type(payload) is not bytes:
            if not isinstance(payload, bytearray | memoryview):
                self.abort(f"a frame must be bytes, not {type(payload).__name__}")
                return None
            payload = bytes(payload)
        if self.compressed:
            payload = compress_payload(payload)
        if len(payload) > self.max_frame_size:
            self.abort(f"frame of {len(payload)} bytes exceeds the limit of {self.max_frame_size}")
            return None
        self.bytes += len(payload)
        return payload

    def abort(self, reason: str) -> None:
        """End the source with an error the client sees (the abort mark), not a clean end."""
        if self.done:
            return
        self.transport.write(ABORT_MARK)
        self._end(reason)

    def _end(self, error: str | None) -> None:
        if self.done:
            return
        self.done = True
        self.write_deadline.cancel()
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.cancel()
        self.puller.close()
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        self.run.channel_ended(self, error)

    def connection_lost(self, reason: Failure | None) -> None:
        self._end(None if self.done else "channel connection lost before the source ended")
