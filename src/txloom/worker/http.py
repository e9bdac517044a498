"""Run an existing WSGI app or ``twisted.web`` resource as a worker, unchanged.

::

    python -m txloom.worker.http --wsgi pkg.module:app    [--threads 10] [--event http]
    python -m txloom.worker.http --resource pkg.module:root

plus the engine's spawn arguments. Each ``http`` session carries one request chunk
(``[method, uri, version, headers, body]``); the adapter feeds it to a real
``twisted.web`` request on a ``Site`` (a WSGI app runs in ``twisted.web.wsgi``'s thread
pool), and streams the response back as the protocol says: a packed ``[status, headers]``
chunk, raw body chunks, close. Nothing listens on a socket: the session is the connection.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import IResource
from twisted.web.server import Site
from twisted.web.wsgi import WSGIResource

from txloom.wire.cocaine_http import (
    DEFAULT_HTTP_EVENT,
    HttpRequest,
    MalformedHttpPayload,
    UnsafeTarget,
    decode_request,
    encode_response_head,
    normalise_target,
)
from txloom.worker import errors
from txloom.worker.appworker import EXIT_BAD_ARGUMENTS, Request, Response, Worker

#: Threads running the WSGI app (one request each at a time).
DEFAULT_WSGI_THREADS = 10

#: Response headers that belong to one HTTP connection, not to the response.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


class _SessionTransport:
    """What a request sees as its transport: addresses only."""

    disconnecting = False

    def __init__(self, peer: IPv4Address, host: IPv4Address) -> None:
        self._peer = peer
        self._host = host

    def getPeer(self) -> IPv4Address:
        return self._peer

    def getHost(self) -> IPv4Address:
        return self._host


class SessionChannel:
    """Stands in for an ``HTTPChannel``: one request in, its response out on a session.

    ``twisted.web`` calls ``writeHeaders`` once, then ``write``/``writeSequence`` for the
    body, then ``requestDone``. The response is never chunk-encoded here (chunks of the
    session already delimit it), so chunking is switched off when the head goes out.
    """

    factory = None

    def __init__(self, site: Site, response: Response, reactor: Any, secure: bool = False) -> None:
        self.site = site
        self.reactor = reactor
        self.response = response
        self.secure = secure
        self.transport = _SessionTransport(
            IPv4Address("TCP", "127.0.0.1", 0), IPv4Address("TCP", "127.0.0.1", 80)
        )
        self.request: Any = None
        self.done: Deferred[None] = Deferred()
        self._producer: Any = None
        self._streaming = True

    def getPeer(self) -> IPv4Address:
        return self.transport.getPeer()

    def getHost(self) -> IPv4Address:
        return self.transport.getHost()

    def isSecure(self) -> bool:
        return self.secure

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        if self.request is not None and self.request.chunked:
            self.request.chunked = 0
        pairs = [
            (name, value)
            for name, values in headers.getAllRawHeaders()
            if name.lower() not in HOP_BY_HOP
            for value in values
        ]
        if not self.response.closed:
            self.response.write(encode_response_head(int(code), pairs))

    def write(self, data: bytes) -> None:
        if data and not self.response.closed:
            self.response.write(data)

    def writeSequence(self, data: Sequence[bytes]) -> None:
        for chunk in data:
            self.write(chunk)

    def requestDone(self, request: Any) -> None:
        self._finish()

    def loseConnection(self) -> None:
        if not self.response.closed and self.request is not None and not self.request.finished:
            self.response.error(errors.UNCAUGHT_EXCEPTION, "the resource dropped the connection")
        self._finish()

    def _finish(self) -> None:
        if not self.done.called:
            self.done.callback(None)

    def _respondToBadRequestAndDisconnect(self) -> None:
        if not self.response.closed:
            self.response.write(encode_response_head(400, [(b"Content-Length", b"0")]))
        self._finish()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._producer = producer
        self._streaming = streaming
        if not streaming:
            self._pull()

    def unregisterProducer(self) -> None:
        self._producer = None

    def _pull(self) -> None:
        if self._producer is not None and not self._streaming:
            self._producer.resumeProducing()
            self.reactor.callLater(0, self._pull)


class HttpSessionHandler:
    """The handler of the ``http`` event: one session, one request, one response."""

    log = Logger()

    def __init__(self, site: Site, reactor: Any) -> None:
        self.site = site
        self.reactor = reactor

    async def __call__(self, request: Request, response: Response) -> None:
        payload = await request.read()
        if payload is None:
            response.error(errors.BAD_ARGUMENTS, "no HTTP request chunk", errors.DISPATCH)
            return
        try:
            req = decode_request(payload)
        except MalformedHttpPayload as e:
            response.error(errors.BAD_ARGUMENTS, f"bad HTTP request chunk: {e}", errors.DISPATCH)
            return
        try:
            target = normalise_target(req.uri)
        except UnsafeTarget as e:
            # an engine other than txloom's host may pass such a target on unchecked
            body = f"bad request target: {e}\n".encode()
            head = [(b"Content-Type", b"text/plain"), (b"Content-Length", b"%d" % len(body))]
            response.write(encode_response_head(400, head))
            response.write(body)
            return
        channel = SessionChannel(self.site, response, self.reactor, _forwarded_https(req))
        web_request = self.site.requestFactory(channel)
        channel.request = web_request
        for name, value in req.headers:
            web_request.requestHeaders.addRawHeader(name, value)
        web_request.gotLength(len(req.body))
        web_request.handleContentChunk(req.body)
        self._watch_upstream(request, response, web_request, channel)
        web_request.requestReceived(req.method, target, b"HTTP/" + req.version)
        await channel.done

    def _watch_upstream(
        self, request: Request, response: Response, web_request: Any, channel: SessionChannel
    ) -> None:
        """If the caller goes away (or the engine gives up), tell the resource."""

        def next_message(chunk: object) -> None:
            if chunk is not None:  # extra chunks are not part of the protocol; ignore them
                request.read().addCallbacks(next_message, lost)

        def lost(failure: Failure) -> None:
            if not web_request.finished and not channel.done.called:
                web_request.connectionLost(Failure(ConnectionDone(failure.getErrorMessage())))
                channel._finish()

        request.read().addCallbacks(next_message, lost)
        response.on_cancel(lambda error: lost(Failure(error)))


def _forwarded_https(req: HttpRequest) -> bool:
    return any(
        name.lower() == b"x-forwarded-proto" and value.lower() == b"https"
        for name, value in req.headers
    )


def load_object(spec: str) -> Any:
    """``pkg.module:attr.attr`` -> the object; raises ValueError with a readable reason."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{spec!r} is not of the form pkg.module:name")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import {module_name}: {e}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{module_name} has no attribute {attr}") from None
    return obj


def build_site(args: argparse.Namespace, reactor: Any) -> Site:
    if args.wsgi:
        app = load_object(args.wsgi)
        if not callable(app):
            raise ValueError(f"{args.wsgi} is not a WSGI callable")
        pool = ThreadPool(minthreads=1, maxthreads=args.threads, name="wsgi")
        reactor.callWhenRunning(pool.start)
        reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
        resource = WSGIResource(reactor, pool, app)
    else:
        resource = load_object(args.resource)
        if not IResource.providedBy(resource):
            raise ValueError(f"{args.resource} is not a twisted.web resource")
    return Site(resource)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    worker = Worker(argv)
    parser = argparse.ArgumentParser(
        prog="python -m txloom.worker.http",
        description="Serve a WSGI app or a twisted.web resource as a txloom worker.",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--wsgi", metavar="MODULE:APP", help="a WSGI application")
    which.add_argument("--resource", metavar="MODULE:ROOT", help="a twisted.web resource")
    parser.add_argument("--event", default=DEFAULT_HTTP_EVENT, help="event name (default http)")
    parser.add_argument(
        "--threads", type=int, default=DEFAULT_WSGI_THREADS, help="WSGI threads (default 10)"
    )
    args = parser.parse_args(worker.extra_args)
    try:
        site = build_site(args, worker.reactor)
    except ValueError as e:
        sys.stderr.write(f"txloom.worker.http: {e}\n")
        raise SystemExit(EXIT_BAD_ARGUMENTS) from None
    worker.on(args.event, HttpSessionHandler(site, worker.reactor))
    worker.run()


if __name__ == "__main__":
    main()
