"""The server's connections: one protocol for masters and channels, the request being
served on a master, and the pump that streams one source onto its channel.

``ServerConnection`` only feeds bytes to ``ServerConnectionDecoder`` and hands the events to
``StreamServer``. ``RequestRun`` asks the source function for sources, one at a time and
only while the client reads the master (it is the master's push producer), and announces
each. ``SourcePump`` is a channel's pull producer: it pulls the next batch of frames only
when the transport has taken the last one, so a slow reader pauses that source alone and
the server holds at most one batch (or one frame) beyond the socket buffer per source.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPullProducer, IPushProducer
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
    LARGE_FRAME,
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


class _Pending:
    __slots__ = ()


#: No item in hand (nothing pulled yet, or a pulled Deferred has not fired).
_PENDING = _Pending()
#: Length of a channel token: 128 random bits, unguessable.
CHANNEL_TOKEN_SIZE = 16


def _refusal(reason: str) -> bytes:
    """A master's refusal: an empty header frame, then the ``Refuse`` control frame."""
    return encode_frame(b"") + encode_frame(encode_control(Refuse(reason)))


#: The end of a master that served its request: an empty header frame, then ``End``.
_END = encode_frame(b"") + encode_frame(encode_control(End()))
#: The first frame of an attached channel (the same bytes every time).
_ACCEPTED = encode_frame(encode_control(Accepted()))


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
            self.transport.write(_ACCEPTED)
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


@implementer(IPullProducer)
class SourcePump:
    """Streams one source's frames onto its channel, as fast as the channel takes them.

    A pull producer: the transport calls ``resumeProducing`` each time it has handed
    everything written so far to the kernel, and each call writes one batch, so the server
    holds at most one batch per source beyond the socket buffer, and a stalled reader stops
    the pulling from its source (and only from its source).

    A large frame goes out in two turns, its length prefix first (with any small frames
    before it) and then its payload alone: the transport then sends the payload object
    itself, where a prefix and payload written together are first joined into one copy.
    """

    log = Logger()

    def __init__(self, pending: PendingSource, channel: ServerConnection) -> None:
        self.run = pending.run
        self.channel = channel
        self.transport = channel.transport
        self.puller = Puller(pending.source.frames)
        source = pending.source
        self.compressed = self.run.server.compressed(source)
        self.max_frame_size = self.run.server.options.max_frame_size
        #: True from a write until the transport asks for more (it has not taken it yet).
        self.paused = False
        self.done = False
        self.frames = 0
        self.bytes = 0
        self._waiting: Deferred[Any] | None = None
        #: A large payload whose prefix is written, waiting for its own turn.
        self._held: bytes | None = None
        #: While a pulled Deferred's callbacks are being added: what it fired with at once.
        self._settling = False
        self._settled: Any = _PENDING
        self.write_deadline = Deadline(
            self.run.server.clock,
            self.run.server.options.frame_write_timeout,
            lambda: self.abort("frame write timeout"),
        )

    @property
    def buffered(self) -> int:
        """Bytes of this source held by the server: written, not yet taken by the kernel.

        Read from Twisted's ``FileDescriptor`` buffer fields (0 for transports without them),
        plus a large payload waiting for its turn.
        """
        t = self.transport
        held = len(getattr(t, "dataBuffer", b"")) - getattr(t, "offset", 0)
        return held + getattr(t, "_tempDataLen", 0) + len(self._held or b"")

    def start(self) -> None:
        """Register with the channel's transport, which asks for the first batch at once."""
        self.run.pumps.add(self)
        self.transport.registerProducer(self, False)

    def resumeProducing(self) -> None:
        self.paused = False
        self.write_deadline.cancel()
        if self.done or self._waiting is not None:
            return
        held = self._held
        if held is not None:
            self._held = None
            self._write([held], len(held), 0)
            return
        self._pump(_PENDING)

    def stopProducing(self) -> None:
        self._end("the client went away")

    def _pump(self, first: Any) -> None:
        """Pull and write one batch; stop early to wait for a pulled Deferred or at the end.

        Frames are handed to the transport in batches of about ``WRITE_BATCH`` bytes: one
        transport call per batch rather than per frame. Plain ``bytes`` frames of an
        uncompressed source take the short way through the loop. ``first`` is an item
        already pulled (one a Deferred fired with later), or ``_PENDING``.
        """
        batch: list[bytes] = []
        size = frames = 0
        pull = self.puller.pull
        pack = U64_LE.pack
        plain = not self.compressed
        limit = self.max_frame_size
        item = first
        while not self.done:
            if item is _PENDING:
                if self.paused:  # the transport has not taken the last write yet
                    break
                try:
                    item = pull()
                except Exception as e:
                    self._write(batch, size, frames)
                    self.log.failure("a source's frames failed", Failure())
                    self.abort(f"source failed: {e}")
                    return
                if type(item) is not bytes and isinstance(item, Deferred):
                    item = self._settle(item)
                    if item is _PENDING:
                        break
                    if isinstance(item, Failure):
                        self._write(batch, size, frames)
                        self._failed(item)
                        return
            if type(item) is bytes and plain and len(item) <= limit:
                payload = item
            elif item is END:
                self._write(batch, size, frames)
                self._end(None)
                return
            else:
                payload = self._payload(item)
                if payload is None:
                    return
            item = _PENDING
            length = len(payload)
            batch.append(pack(length))
            frames += 1
            if length >= LARGE_FRAME:
                self._held = payload
                self._write(batch, size + 8, frames)
                self.bytes += length
                return
            batch.append(payload)
            size += length + 8
            if size >= WRITE_BATCH:
                break
        self._write(batch, size, frames)

    def _settle(self, pulled: Deferred[Any]) -> Any:
        """What ``pulled`` fired with if it already has (a value or a Failure), else
        ``_PENDING`` with ``_pulled``/``_failed`` waiting for it. Items a Deferred has at
        once are taken in the loop, not by recursion through callbacks."""
        self._settling, self._settled = True, _PENDING
        pulled.addCallbacks(self._pulled, self._failed)
        self._settling = False
        settled, self._settled = self._settled, _PENDING
        if settled is _PENDING:
            self._waiting = pulled
        return settled

    def _write(self, batch: list[bytes], size: int, frames: int) -> None:
        """Hand ``batch`` (prefixes and payloads, ``size`` bytes) to the transport.

        Small frames are joined into one write: Twisted checks and counts every piece of a
        ``writeSequence`` in Python, which costs more than copying a few small payloads.
        """
        if not batch or self.done:
            return
        self.frames += frames
        self.bytes += size - 8 * frames
        self.paused = True
        self.write_deadline.arm()
        if len(batch) == 1:
            self.transport.write(batch[0])
        elif size <= 2 * WRITE_BATCH:
            self.transport.write(b"".join(batch))
        else:
            self.transport.writeSequence(batch)

    def _pulled(self, item: Any) -> None:
        if self._settling:
            self._settled = item
            return
        self._waiting = None
        if not self.done:
            self._pump(item)

    def _failed(self, failure: Failure) -> None:
        if self._settling:
            self._settled = failure
            return
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
        self._held = None
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
