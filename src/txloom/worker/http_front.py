"""The worker host's HTTP front end: real HTTP/1.1 requests become ``http`` sessions.

Routing: the ``X-Cocaine-Service`` header names the app (and ``X-Cocaine-Event`` the
event), the URI going through unchanged; otherwise the first path segment names the app
and the rest of the path is what the worker sees (``/echo/a/b?x=1`` -> app ``echo``, URI
``/a/b?x=1``, with ``X-Forwarded-Prefix: /echo``). The event defaults to the app's
``http-event`` (``http``).

The reply streams back as the worker sends it. Failures before the response head map to
HTTP: no such app 404, queue full or app broken 503, worker lost or a bad reply 502,
timeout 504, any other error 500. A failure after the head has gone out can only cut the
response short, so the connection is closed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from txloom.interfaces import IDownstream
from txloom.wire.cocaine import Header
from txloom.wire.cocaine_http import MalformedHttpPayload, decode_response_head, encode_request
from txloom.worker import errors
from txloom.worker.http import HOP_BY_HOP

if TYPE_CHECKING:
    from txloom.worker.host import WorkerHost

SERVICE_HEADER = b"x-cocaine-service"
EVENT_HEADER = b"x-cocaine-event"
#: A request header (milliseconds) passed on as the session's ``request_timeout``.
TIMEOUT_HEADER = b"x-request-timeout"
#: Request headers the front end consumes or replaces rather than passing on.
_NOT_FORWARDED = HOP_BY_HOP | {SERVICE_HEADER, EVENT_HEADER, TIMEOUT_HEADER}

#: Room left in a message for the request line and headers around the body.
ENVELOPE_ALLOWANCE = 64 * 1024

STATUS_FOR_ERROR = {
    (errors.ENGINE, errors.QUEUE_FULL): 503,
    (errors.ENGINE, errors.APP_BROKEN): 503,
    (errors.ENGINE, errors.SHUTTING_DOWN): 503,
    (errors.ENGINE, errors.WORKER_LOST): 502,
    (errors.ENGINE, errors.WORKER_DISCARDED): 502,
    (errors.ENGINE, errors.BAD_HTTP_REPLY): 502,
    (errors.ENGINE, errors.TIMEOUT): 504,
    (errors.APPLICATION, errors.NO_HANDLER): 501,
}


def _plain(request: Request, status: int, text: str) -> None:
    body = text.encode("utf-8", "replace") + b"\n"
    request.setResponseCode(status)
    request.responseHeaders.setRawHeaders(b"content-type", [b"text/plain; charset=utf-8"])
    request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(body)])
    request.write(body)
    request.finish()


@implementer(IDownstream)
class HttpReply:
    """A session's replies written to one HTTP response."""

    log = Logger()

    __slots__ = ("app", "gone", "request", "started")

    def __init__(self, request: Request, app: str) -> None:
        self.request = request
        self.app = app
        self.started = False
        self.gone = False

    def write(self, chunk: bytes) -> None:
        if self.gone:
            return
        request = self.request
        if self.started:
            request.write(chunk)
            return
        try:
            status, headers = decode_response_head(chunk)
        except MalformedHttpPayload as e:
            self.log.warn("{app}: bad HTTP response head: {error}", app=self.app, error=str(e))
            self.gone = True
            _plain(request, 502, f"bad response from app {self.app}")
            return
        self.started = True
        request.setResponseCode(status)
        grouped: dict[bytes, list[bytes]] = {}
        for name, value in headers:
            if name.lower() not in HOP_BY_HOP:
                grouped.setdefault(name, []).append(value)
        set_header = request.responseHeaders.setRawHeaders
        for name, values in grouped.items():
            set_header(name, values)

    def close(self) -> None:
        if self.gone:
            return
        self.gone = True
        if not self.started:
            _plain(self.request, 502, f"app {self.app} closed the session without a response")
            return
        self.request.finish()

    def error(self, category: int, code: int, reason: str) -> None:
        if self.gone:
            return
        self.gone = True
        if not self.started:
            status = STATUS_FOR_ERROR.get((category, code), 500)
            _plain(self.request, status, reason)
            return
        self.log.warn(
            "{app}: error after the response head ({reason}); cutting the response",
            app=self.app,
            reason=reason,
        )
        self.request.loseConnection()


class FrontResource(Resource):
    """Every path: route to an app, start a session, stream the reply."""

    isLeaf = True

    def __init__(self, host: WorkerHost) -> None:
        super().__init__()
        self.host = host

    def render(self, request: Request) -> Any:
        headers = request.requestHeaders
        app_header = headers.getRawHeaders(SERVICE_HEADER)
        prefix = b""
        if app_header:
            app = app_header[0].decode("utf-8", "replace")
            uri = request.uri
        else:
            path, _, rest = request.uri.lstrip(b"/").partition(b"/")
            app_bytes, _, query = path.partition(b"?")
            app = app_bytes.decode("utf-8", "replace")
            uri = b"/" + rest if rest or not query else b"/?" + query
            prefix = b"/" + app_bytes
        pool = self.host.pools.get(app)
        if pool is None:
            _plain(request, 404, f"no such app: {app!r}")
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
            request.notifyFinish().addErrback(lambda _: session.cancel("HTTP client disconnected"))
        return NOT_DONE_YET


class FrontSite(Site):
    """A Site without per-request access log lines (they would dominate the hot path)."""

    noisy = False

    def log(self, request: Request) -> None:
        pass


class HttpFront:
    """The front end of one host: ``site`` is what the ``--http`` endpoint serves."""

    def __init__(self, host: WorkerHost) -> None:
        self.host = host
        self.site = FrontSite(FrontResource(host))
