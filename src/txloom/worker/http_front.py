"""The worker host's HTTP front end: real HTTP/1.1 requests become ``http`` sessions.

Request targets are normalised first: dot segments (``.``, ``..``, also percent-encoded)
are removed before routing, so the app sees the path it would be asked for by a browser,
and a target that climbs above the root (``/app/../../etc/passwd``) is refused with 400.

Routing: the ``X-Cocaine-Service`` header names the app (and ``X-Cocaine-Event`` the
event), the URI going through unchanged; otherwise the first path segment names the app
and the rest of the path is what the worker sees (``/echo/a/b?x=1`` -> app ``echo``, URI
``/a/b?x=1``, with ``X-Forwarded-Prefix: /echo``). The event defaults to the app's
``http-event`` (``http``).

An app this host does not run goes, in a cluster (``--cluster``), to the HTTP front end
of a host that runs it (``txloom.worker.http_route``); otherwise it is a 404.

The reply streams back as the worker sends it, finished as soon as its Content-Length is
reached (else on the worker's close). Failures before the response head has gone out map
to HTTP: no such app 404, queue full, app broken or a client too slow 503, worker lost or
a bad reply 502, timeout 504, any other error 500. A failure after the head has gone out
can only cut the response short, so the connection is closed (aborted for a client that
does not read).

A client that does not read its response does not make the host buffer without bound:
the session holds at most the app's backlog-limit of replies for it, then fails.

Descriptors are bounded too: at most ``max_connections`` HTTP connections at once (by
default what the descriptor limit leaves after a reserve for the Locator, the services
and the workers), and a client that has not sent a whole request head within
``head_timeout`` seconds is cut (``FrontChannel``).
"""

from __future__ import annotations

import resource
from collections import Counter
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import NO_BODY_CODES, HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from txloom.interfaces import IDownstream
from txloom.wire.cocaine import Header
from txloom.wire.cocaine_http import (
    MalformedHttpPayload,
    UnsafeTarget,
    decode_response_head,
    encode_request,
    normalise_target,
)
from txloom.worker import errors
from txloom.worker.http import HOP_BY_HOP
from txloom.worker.http_route import ROUTED_HEADER

if TYPE_CHECKING:
    from txloom.worker.host import WorkerHost
    from txloom.worker.session import Session

SERVICE_HEADER = b"x-cocaine-service"
EVENT_HEADER = b"x-cocaine-event"
#: A request header (milliseconds) passed on as the session's ``request_timeout``.
TIMEOUT_HEADER = b"x-request-timeout"
#: Request headers the front end consumes or replaces rather than passing on.
_NOT_FORWARDED = HOP_BY_HOP | {SERVICE_HEADER, EVENT_HEADER, TIMEOUT_HEADER}

#: Room left in a message for the request line and headers around the body.
ENVELOPE_ALLOWANCE = 64 * 1024

#: Seconds a client has to send a whole request head (``--http-head-timeout``).
DEFAULT_HTTP_HEAD_TIMEOUT = 10.0
#: Descriptors kept for the Locator, services, logs and listeners (``--fd-reserve``),
#: beyond ``FDS_PER_WORKER`` for every worker the pools may run.
DEFAULT_FD_RESERVE = 128
#: A worker's socket connection and its stdout and stderr pipes.
FDS_PER_WORKER = 3
#: HTTP connections allowed by default when the descriptor limit is unlimited.
UNLIMITED_DESCRIPTORS_CAP = 65536
#: Seconds between two warnings that the connection limit was reached.
LIMIT_WARNING_INTERVAL = 60.0

STATUS_FOR_ERROR = {
    (errors.ENGINE, errors.QUEUE_FULL): 503,
    (errors.ENGINE, errors.APP_BROKEN): 503,
    (errors.ENGINE, errors.SHUTTING_DOWN): 503,
    (errors.ENGINE, errors.WORKER_LOST): 502,
    (errors.ENGINE, errors.WORKER_DISCARDED): 502,
    (errors.ENGINE, errors.BAD_HTTP_REPLY): 502,
    (errors.ENGINE, errors.CLIENT_TOO_SLOW): 503,
    (errors.ENGINE, errors.TIMEOUT): 504,
    (errors.APPLICATION, errors.NO_HANDLER): 501,
}


def _plain(request: Request, status: int, text: str) -> None:
    body = text.encode("utf-8", "replace") + b"\n"
    request.setResponseCode(status)
    request.responseHeaders = Headers()  # nothing of a head the app sent
    request.responseHeaders.setRawHeaders(b"content-type", [b"text/plain; charset=utf-8"])
    request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(body)])
    request.write(body)
    request.finish()


def _body_length(request: Request, status: int, lengths: list[bytes]) -> int | None:
    """The Content-Length the reply promises, if it has a body and one clear length."""
    if len(lengths) != 1 or request.method == b"HEAD" or status in NO_BODY_CODES or status < 200:
        return None
    length = lengths[0].strip()
    return int(length) if length.isdigit() else None


@implementer(IDownstream, IConsumer)
class HttpReply:
    """A session's replies written to one HTTP response.

    The first chunk is the response head, raw body chunks follow. A reply with a
    Content-Length is complete once that many bytes have gone out, and the request is
    finished right then, not on the worker's close: a client may hang up as soon as it
    has the whole body, and must not be taken for one that went away mid-response (that
    cancels the session). As a consumer it hands twisted.web's flow control to the
    session (``registerProducer``), which holds the replies while the client does not
    read and fails the session when too many are waiting.
    """

    log = Logger()

    __slots__ = ("app", "gone", "producer", "remaining", "request", "session", "started")

    def __init__(self, request: Request, app: str) -> None:
        self.request = request
        self.app = app
        self.started = False
        #: True once the response is complete, failed, or its client gone.
        self.gone = False
        #: Body bytes still due by the reply's Content-Length (None: until the close).
        self.remaining: int | None = None
        self.producer: IPushProducer | None = None
        self.session: Session | None = None

    def watch(self, session: Session) -> None:
        """Cancel ``session`` if the client goes away before its response is complete."""
        self.session = session
        if not session.finished:
            self.request.notifyFinish().addErrback(self._client_gone)

    def _client_gone(self, _: object) -> None:
        self.gone = True
        self.producer = None
        session, self.session = self.session, None
        if session is not None:
            session.cancel("HTTP client disconnected")

    # -- IConsumer ------------------------------------------------------------------------

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        if self.gone:
            return
        self.producer = producer
        request = self.request
        request.registerProducer(producer, True)
        # A pipelined request can start while the client has not read the previous
        # response yet; twisted.web does not tell a producer registered meanwhile.
        if getattr(request.channel, "_waitingForTransport", False):
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        # the response is settled: what is left to do goes without the session (and
        # without a reference cycle between the two)
        self.session = None
        producer, self.producer = self.producer, None
        if producer is None:
            return
        if self.request.channel is not None:
            self.request.unregisterProducer()
        # no longer held back by this response: whatever the session still has is dropped
        if getattr(producer, "paused", True):
            producer.resumeProducing()

    # -- IDownstream ----------------------------------------------------------------------

    def write(self, chunk: bytes) -> None:
        if self.gone:
            return
        request = self.request
        if self.started:
            remaining = self.remaining
            if remaining is None or len(chunk) < remaining:
                if remaining is not None:
                    self.remaining = remaining - len(chunk)
                request.write(chunk)
                return
            if len(chunk) > remaining:
                self.log.warn(
                    "{app}: reply body longer than its Content-Length; the rest is dropped",
                    app=self.app,
                )
                chunk = chunk[:remaining]
            request.write(chunk)
            self._complete()
            return
        try:
            head = decode_response_head(chunk)
        except MalformedHttpPayload as e:
            self.log.warn("{app}: bad HTTP response head: {error}", app=self.app, error=str(e))
            self.gone = True
            self.unregisterProducer()
            _plain(request, 502, f"bad response from app {self.app}")
            return
        self.started = True
        status = head.status
        request.setResponseCode(status)
        grouped: dict[bytes, list[bytes]] = {}
        lengths: list[bytes] = []
        for name, value in head.headers:
            lowered = name.lower()
            if lowered not in HOP_BY_HOP:
                grouped.setdefault(name, []).append(value)
                if lowered == b"content-length":
                    lengths.append(value)
        set_header = request.responseHeaders.setRawHeaders
        for name, values in grouped.items():
            set_header(name, values)
        if lengths:
            self.remaining = _body_length(request, status, lengths)
            if self.remaining == 0:
                self._complete()

    def _complete(self) -> None:
        """The whole body is out: finish the response now; the session ends on its own."""
        self.gone = True
        self.unregisterProducer()
        self.request.finish()

    def close(self) -> None:
        if self.gone:
            return
        self.gone = True
        self.unregisterProducer()
        if not self.started:
            _plain(self.request, 502, f"app {self.app} closed the session without a response")
            return
        if self.remaining:
            self.log.warn(
                "{app}: reply closed {missing} bytes short of its Content-Length; "
                "cutting the response",
                app=self.app,
                missing=self.remaining,
            )
            self.request.loseConnection()
            return
        self.request.finish()

    def error(self, category: int, code: int, reason: str) -> None:
        if self.gone:
            return
        self.gone = True
        self.unregisterProducer()
        request = self.request
        if not request.startedWriting:
            status = STATUS_FOR_ERROR.get((category, code), 500)
            _plain(request, status, reason)
            return
        self.log.warn(
            "{app}: error after the response head ({reason}); cutting the response",
            app=self.app,
            reason=reason,
        )
        if (category, code) == (errors.ENGINE, errors.CLIENT_TOO_SLOW):
            # the client does not read: a graceful close would wait on it for ever
            abort = getattr(request.transport, "abortConnection", None)
            if abort is not None:
                abort()
                return
        request.loseConnection()


class FrontResource(Resource):
    """Every path: route to an app, start a session, stream the reply."""

    isLeaf = True
    log = Logger()

    def __init__(self, host: WorkerHost) -> None:
        super().__init__()
        self.host = host

    def render(self, request: Request) -> Any:
        try:
            target = normalise_target(request.uri)
        except UnsafeTarget as e:
            _plain(request, 400, f"bad request target: {e}")
            return NOT_DONE_YET
        headers = request.requestHeaders
        rpc = self.host.rpc
        if rpc is not None and rpc.has_http and request.path.startswith(b"/rpc/"):
            # Reverse-RPC agents over HTTP (heartbeat, long-poll): /rpc/<transport path>.
            leaf = rpc.resource.children.get(request.path[5:].rstrip(b"/"))
            if leaf is not None:
                return leaf.render(request)
        app_header = headers.getRawHeaders(SERVICE_HEADER)
        prefix = b""
        if app_header:
            app = app_header[0].decode("utf-8", "replace")
            uri = target
        else:
            path, _, rest = target.lstrip(b"/").partition(b"/")
            app_bytes, _, query = path.partition(b"?")
            app = app_bytes.decode("utf-8", "replace")
            uri = b"/" + rest if rest or not query else b"/?" + query
            prefix = b"/" + app_bytes
        pool = self.host.pools.get(app)
        if pool is None:
            self._route(request, app)
            return NOT_DONE_YET
        event_header = headers.getRawHeaders(EVENT_HEADER)
        event = event_header[0] if event_header else pool.manifest.http_event.encode()
        body = request.content.read() if request.content is not None else b""
        limit = pool.profile.max_message_size - ENVELOPE_ALLOWANCE
        if len(body) > limit:
            _plain(request, 413, f"request body larger than {limit} bytes")
            return NOT_DONE_YET
        forwarded = [
            (name, value)
            for name, values in headers.getAllRawHeaders()
            if name.lower() not in _NOT_FORWARDED
            for value in values
        ]
        forwarded.append((b"X-Forwarded-For", request.getClientAddress().host.encode()))
        if prefix:
            forwarded.append((b"X-Forwarded-Prefix", prefix))
        session_headers: tuple[Any, ...] = ()
        timeout = headers.getRawHeaders(TIMEOUT_HEADER)
        if timeout:
            session_headers = (Header(b"request_timeout", timeout[0]),)
        reply = HttpReply(request, app)
        session = pool.enqueue(event, session_headers, reply)
        if not session.finished:
            session.write(encode_request(request.method, uri, request.clientproto, forwarded, body))
            session.close()
            reply.watch(session)
        return NOT_DONE_YET

    def _route(self, request: Request, app: str) -> None:
        """An app this host does not run: to a host of the cluster that does, else 404."""
        cluster = self.host.cluster
        routed = request.requestHeaders.hasHeader(ROUTED_HEADER)
        candidates = cluster.http_for(app) if cluster is not None and not routed else []
        if not candidates:
            _plain(request, 404, f"no such app: {app!r}")
            return
        body = request.content.read() if request.content is not None else b""
        if len(body) > self.host.max_message_size:
            _plain(request, 413, f"request body larger than {self.host.max_message_size} bytes")
            return

        def failed(why: str) -> None:
            cluster.route_failures += 1
            self.log.warn("cannot route a request for {app}: {why}", app=app, why=why)
            _plain(request, 503, f"app {app!r}: {why}")

        cluster.routed += 1
        cluster.router.route(request, candidates, body, failed)


class FrontChannel(HTTPChannel):
    """One HTTP connection of the front end: a head deadline and a place in the count.

    A client has ``head_timeout`` seconds to send a complete request head, counted from
    the connection's start or from the end of the previous response; a stalled head (or a
    keep-alive connection idle that long) is cut, so that stalled clients cannot hold
    descriptors for the minute of twisted.web's idle timeout.
    """

    head_timeout: float = DEFAULT_HTTP_HEAD_TIMEOUT
    site: FrontSite
    _head_timer: Any = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._arm_head()

    def _arm_head(self) -> None:
        if self.head_timeout > 0 and self._head_timer is None:
            self._head_timer = self.callLater(self.head_timeout, self._head_overdue)

    def _disarm_head(self) -> None:
        timer, self._head_timer = self._head_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _head_overdue(self) -> None:
        self._head_timer = None
        self.site.stalled += 1
        self.transport.abortConnection()  # nothing is owed to a client without a request

    def allHeadersReceived(self) -> None:
        self._disarm_head()
        super().allHeadersReceived()

    def requestDone(self, request: Request) -> None:
        if self.persistent:
            self._arm_head()  # the next head is due (disarmed at once if it is buffered)
        super().requestDone(request)

    def connectionLost(self, reason: Failure) -> None:
        self._disarm_head()
        super().connectionLost(reason)
        self.site.channel_closed()


class FrontSite(Site):
    """The front end's Site: at most ``max_connections`` connections, stalled heads cut.

    At the limit the listening port stops accepting (clients wait in the kernel's
    backlog, holding no descriptor of the host) and starts again as connections close.
    No access log lines (they would dominate the hot path).
    """

    noisy = False
    protocol = FrontChannel
    logger = Logger()

    def __init__(
        self, resource: Resource, max_connections: int, head_timeout: float, reactor: Any
    ) -> None:
        super().__init__(resource, reactor=reactor)
        self.max_connections = max_connections
        self.head_timeout = head_timeout
        self.connections = 0
        #: Connections cut for a stalled head; times accepting paused at the limit.
        self.stalled = 0
        self.pauses = 0
        self.port: Any = None
        self._accepting = True
        self._warned_at: float | None = None
        #: Responses sent, by status code (the status site's metrics).
        self.responses: Counter[int] = Counter()

    def log(self, request: Request) -> None:
        self.responses[request.code] += 1

    def listening(self, port: Any) -> None:
        """The port this site is served on (paused and resumed at the limit)."""
        self.port = port

    def buildProtocol(self, addr: Any) -> Any:
        if self.connections >= self.max_connections:
            # accepted in the same accept batch as the one that reached the limit: closed
            # at once rather than holding a descriptor the limit does not allow
            return None
        channel = super().buildProtocol(addr)
        channel.head_timeout = self.head_timeout
        self.connections += 1
        if self.connections >= self.max_connections:
            self._stop_accepting()
        return channel

    def channel_closed(self) -> None:
        self.connections -= 1
        if not self._accepting and self.connections < self.max_connections:
            self._accepting = True
            if self.port is not None:
                self.port.startReading()

    def _stop_accepting(self) -> None:
        if not self._accepting or self.port is None:
            return
        self._accepting = False
        self.pauses += 1
        self.port.stopReading()
        now = self.reactor.seconds()
        if self._warned_at is None or now - self._warned_at >= LIMIT_WARNING_INTERVAL:
            self._warned_at = now
            self.logger.warn(
                "HTTP front end at its limit of {limit} connections; new ones wait "
                "until one closes",
                limit=self.max_connections,
            )


def connection_limit(requested: int | None, reserve: int) -> int:
    """HTTP connections allowed: ``requested``, or what the descriptor limit leaves.

    ``reserve`` descriptors stay for everything else (the Locator, services, workers);
    a ``requested`` number that would eat into them raises ValueError.
    """
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return requested if requested is not None else UNLIMITED_DESCRIPTORS_CAP
    room = soft - reserve
    if room < 1:
        raise ValueError(
            f"the descriptor limit ({soft}) leaves no room for HTTP connections "
            f"after the {reserve} kept for the Locator, services and workers"
        )
    if requested is None:
        return room
    if requested > room:
        raise ValueError(
            f"--http-max-connections {requested} leaves fewer than {reserve} of the "
            f"descriptor limit ({soft}) for the Locator, services and workers; "
            f"use at most {room}"
        )
    return requested


class HttpFront:
    """The front end of one host: ``site`` is what the ``--http`` endpoint serves."""

    def __init__(
        self,
        host: WorkerHost,
        max_connections: int,
        head_timeout: float = DEFAULT_HTTP_HEAD_TIMEOUT,
    ) -> None:
        self.host = host
        self.site = FrontSite(FrontResource(host), max_connections, head_timeout, host.reactor)
