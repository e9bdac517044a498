"""``StreamClient``: posts a request to a service address and yields its sources.

::

    client = StreamClient(StaticResolver({"search": ["tcp:127.0.0.1:7410"]}))
    async for source in client.post("search", b"query", tags={"bucket": "user-42"}):
        async for frame in source:
            ...

The service address is resolved through the ``IAddressResolver`` handed in; a ``bucket``
tag picks one endpoint by rendezvous hashing, otherwise one is picked at random. The master
connection and every channel go to that endpoint. Sources are attached as soon as they are
announced, so frames flow while the reader is busy elsewhere, within the frame buffer; at
most ``source_buffer`` announced sources wait for the reader before the master is paused.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txloom.streams.balance import choose_endpoint
from txloom.streams.channel import ChannelConnection, SourceStream
from txloom.streams.errors import ConnectionLostEarly, NoEndpoint, RequestRefused, StreamTimeout
from txloom.streams.options import ClientOptions
from txloom.streams.timers import Deadline, no_delay
from txloom.wire.decoder import NEED_DATA, ConnectionClosed
from txloom.wire.errors import RemoteProtocolError
from txloom.wire.streams import (
    End,
    Hello,
    MasterDecoder,
    Refuse,
    SourceAnnounced,
    encode_control,
    encode_frame,
)

__all__ = ["RequestStream", "StreamClient"]

#: Endpoint objects kept per client (a resolver may hand out many over a long life).
MAX_CACHED_ENDPOINTS = 256


class StreamClient:
    """Posts requests to nested-stream servers found through ``resolver``."""

    log = Logger()

    def __init__(self, resolver: Any, **options: Any) -> None:
        self.resolver = resolver
        self.options: ClientOptions = ClientOptions.from_keywords(options)
        self.reactor, self.clock = self.options.reactor_and_clock()
        #: endpoint string -> IStreamClientEndpoint (override to add TLS settings, proxies...).
        self.endpoint_factory: Callable[[str], Any] = lambda s: clientFromString(self.reactor, s)
        #: Endpoints already built, by string: a request opens one connection per source.
        self._endpoints: dict[str, Any] = {}
        self.random = random.Random()

    def post(self, vaddr: str, body: bytes, tags: Mapping[str, str] | None = None) -> RequestStream:
        """Send ``body`` to the service ``vaddr``; iterate the result for its sources."""
        request = RequestStream(self, vaddr, body, dict(tags or {}))
        request.start()
        return request

    def report(self, error: BaseException, source: SourceStream | None) -> None:
        """A request or source failed: ``on_error`` hears of it (by default, a log line)."""
        if self.options.on_error is not None:
            self.options.on_error(error, source)
        else:
            self.log.info(
                "stream {what} failed: {error}",
                what="source" if source is not None else "request",
                error=f"{type(error).__name__}: {error}",
            )

    def connect(self, endpoint: str, protocol: Protocol) -> Deferred[Protocol]:
        """``protocol`` connected to ``endpoint`` within the dial timeout."""
        built = self._endpoints.get(endpoint)
        if built is None:
            if len(self._endpoints) >= MAX_CACHED_ENDPOINTS:
                self._endpoints.clear()
            built = self._endpoints[endpoint] = self.endpoint_factory(endpoint)
        d = built.connect(_OneConnection(protocol))
        timed_out: list[bool] = []

        def expire() -> None:
            timed_out.append(True)
            d.cancel()

        deadline = Deadline(self.clock, self.options.dial_timeout, expire)
        deadline.arm()

        def done(result: Any) -> Any:
            deadline.cancel()
            if isinstance(result, Failure) and timed_out and result.check(CancelledError):
                raise StreamTimeout(f"dial timeout: {endpoint} not connected in time")
            return result

        return d.addBoth(done)


class _OneConnection(Factory):
    """Hands one ready-made protocol to an endpoint (``connectProtocol`` without its
    per-call class and its start/stop log lines)."""

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self.protocol_instance = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self.protocol_instance


class RequestStream:
    """The sources of one request, in announcement order: ``async for source in request``."""

    def __init__(self, client: StreamClient, vaddr: str, body: bytes, tags: dict[str, str]):
        self.client = client
        self.vaddr = vaddr
        self.body = body
        self.tags = tags
        self.endpoint: str | None = None
        self.master: MasterConnection | None = None
        self._sources: deque[SourceStream] = deque()
        self._open: set[SourceStream] = set()
        self._waiter: Deferred[SourceStream] | None = None
        self._ended = False
        self._error: BaseException | None = None

    def start(self) -> None:
        Deferred.fromCoroutine(self._open_master()).addErrback(lambda f: self.end(f.value))

    async def _open_master(self) -> None:
        endpoints = await self.client.resolver.resolve(self.vaddr)
        if not endpoints:
            raise NoEndpoint(f"no endpoint serves {self.vaddr!r}")
        self.endpoint = choose_endpoint(endpoints, self.tags, self.client.random)
        self.master = MasterConnection(self)
        await self.client.connect(self.endpoint, self.master)

    # -- iteration ---------------------------------------------------------------------
    def __aiter__(self) -> RequestStream:
        return self

    def __anext__(self) -> Deferred[SourceStream]:
        if self._sources and self._sources[0].ready:
            return succeed(self._take())
        if self._ended and not self._sources:
            return fail(self._error or StopAsyncIteration())
        if self._waiter is not None:
            raise RuntimeError("one reader at a time: the previous read has not fired")
        self._waiter = Deferred()
        return self._waiter

    def next_source(self) -> Deferred[SourceStream | None]:
        """The next source, or None after the last one (Deferred-style)."""

        def end(failure: Failure) -> None:
            failure.trap(StopAsyncIteration)

        return self.__anext__().addErrback(end)

    async def collect(self) -> list[tuple[bytes, list[bytes]]]:
        """Every source's header and frames (for small answers and tests)."""
        out = []
        async for source in self:
            out.append((source.header, [frame async for frame in source]))
        return out

    def close(self) -> None:
        """Abandon the request: the master and every open channel are closed."""
        self.end(None)
        if self.master is not None and self.master.transport is not None:
            self.master.transport.loseConnection()
        for source in list(self._open):
            source.close()

    def _take(self) -> SourceStream:
        source = self._sources.popleft()
        if self.master is not None and not self._ended:
            self.master.read_more()
        return source

    @property
    def room(self) -> bool:
        """True while fewer than ``source_buffer`` announced sources wait for the reader."""
        return len(self._sources) < self.client.options.source_buffer

    def _deliver(self) -> None:
        waiter = self._waiter
        if waiter is None:
            return
        if self._sources and self._sources[0].ready:
            self._waiter = None
            waiter.callback(self._take())
        elif self._ended and not self._sources:
            self._waiter = None
            waiter.errback(self._error or StopAsyncIteration())

    # -- from the master and the channels ----------------------------------------------
    def announced(self, event: SourceAnnounced) -> None:
        source = SourceStream(self, event.header, event.channel, event.compressed)
        self._sources.append(source)
        self._open.add(source)
        options = self.client.options
        channel = ChannelConnection(source, options.token, options.max_frame_size)
        assert self.endpoint is not None
        self.client.connect(self.endpoint, channel).addErrback(lambda f: source.fail(f.value))

    def source_ready(self) -> None:
        self._deliver()

    def source_ended(self, source: SourceStream) -> None:
        self._open.discard(source)

    def end(self, error: BaseException | None) -> None:
        """The master ended: cleanly after its last source (None) or with ``error``."""
        if self._ended:
            return
        self._ended = True
        self._error = error
        if error is not None:
            self.client.report(error, None)
        self._deliver()


@implementer(IPushProducer)
class MasterConnection(Protocol):
    """Sends the hello and body, then reads announcements for its ``RequestStream``."""

    def __init__(self, request: RequestStream) -> None:
        self.request = request
        options = request.client.options
        self.decoder = MasterDecoder(options.max_frame_size, options.max_sources)
        self.paused = False
        self.lost = False
        self._lost_reason: BaseException | None = None
        clock = request.client.clock
        self.read_deadline = Deadline(
            clock,
            options.master_read_timeout,
            lambda: self._fail(StreamTimeout("master read timeout: no announcement in time")),
        )
        self.write_deadline = Deadline(
            clock,
            options.master_write_timeout,
            lambda: self._fail(StreamTimeout("master write timeout: the body was not taken")),
        )

    def connectionMade(self) -> None:
        no_delay(self.transport)
        request = self.request
        hello = Hello(request.vaddr, request.tags, request.client.options.token)
        self.transport.registerProducer(self, True)
        self.transport.writeSequence(
            (encode_frame(encode_control(hello)), encode_frame(request.body))
        )
        self.read_deadline.arm()

    # IPushProducer: only to hear that the body is not being taken (the write timeout).
    def pauseProducing(self) -> None:
        self.write_deadline.arm()

    def resumeProducing(self) -> None:
        self.write_deadline.cancel()

    def stopProducing(self) -> None:
        self.write_deadline.cancel()

    def dataReceived(self, data: bytes) -> None:
        self.read_deadline.arm()
        self.decoder.receive_data(data)
        self.read_more()

    def read_more(self) -> None:
        """Take announcements while the request has room for them; else stop reading.

        Events stay in the decoder (at most one read's worth) and the transport is paused,
        so the server's announcements wait in TCP buffers and then in its sourcing loop:
        no more than ``source_buffer`` sources are ever announced and not yet taken.
        """
        request = self.request
        try:
            while request.room:
                event = self.decoder.next_event()
                if event is NEED_DATA:
                    break
                self._event(event)
                if isinstance(event, ConnectionClosed | Refuse | End):
                    return
        except RemoteProtocolError as e:
            self._fail(self._lost_reason or e)
            return
        if self.transport is None or self.lost:
            return
        if request.room and self.paused:
            self.paused = False
            self.transport.resumeProducing()
        elif not request.room and not self.paused:
            self.paused = True
            self.transport.pauseProducing()

    def _fail(self, error: BaseException) -> None:
        self.read_deadline.cancel()
        self.write_deadline.cancel()
        self.request.end(error)
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True
        self.read_deadline.cancel()
        self.write_deadline.cancel()
        if reason is not None and reason.check(ConnectionDone) is None:
            self._lost_reason = ConnectionLostEarly(f"master lost: {reason.getErrorMessage()}")
        self.decoder.receive_eof()
        self.read_more()

    def _event(self, event: object) -> None:
        if isinstance(event, SourceAnnounced):
            self.request.announced(event)
        elif isinstance(event, Refuse):
            self._fail(RequestRefused(event.reason))
        elif isinstance(event, End):
            self.request.end(None)
