"""Routing an HTTP request for an app this host does not run to a host of the cluster
that does: the request goes on, as it came, to that host's HTTP front end.

The routed request carries ``X-Txloom-Routed`` (naming the host that routed it), and a
front end never routes such a request again, so two hosts whose views disagree for a
moment cannot pass a request back and forth. When a host cannot be reached (it died, and
the cluster has not noticed yet) the next one running the app is tried; when none is
left the answer is 503. The response streams back as it comes, with the client's reading
pace passed on to the other host (a client that does not read holds that host's writes,
not this host's memory); a host that goes away mid-response cuts the response, as a local
worker lost mid-response does. Connections to the other hosts are kept open and reused.
"""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from typing import Any

from twisted.internet.error import ConnectError, ConnectingCancelledError, DNSLookupError
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from txloom.worker.http import HOP_BY_HOP

__all__ = ["ROUTED_HEADER", "ROUTE_CONNECT_TIMEOUT", "Router"]

#: Marks a request one front end has routed to another (the value is the router's id).
ROUTED_HEADER = b"x-txloom-routed"
#: Seconds to wait for another host's front end to accept a connection.
ROUTE_CONNECT_TIMEOUT = 5.0
#: Idle connections kept open to each other host's front end.
ROUTE_CONNECTIONS_PER_HOST = 16
#: Failures that mean "that host is not there": the next one is tried.
_UNREACHABLE = (ConnectError, ConnectingCancelledError, DNSLookupError)


class _Relay(Protocol):
    """Streams a routed response's body to the client's request."""

    log = Logger()

    def __init__(self, father: Request, target: bytes) -> None:
        self.father = father
        self.target = target
        self.gone = False

    def connectionMade(self) -> None:
        # the client's reading pace holds the other host's writes
        self.father.registerProducer(self.transport, True)
        self.father.notifyFinish().addErrback(self._client_gone)

    def _client_gone(self, _: object) -> None:
        self.gone = True
        self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if not self.gone:
            self.father.write(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.gone:
            return
        self.gone = True
        self.father.unregisterProducer()
        if reason is None or reason.check(ResponseDone):
            self.father.finish()
            return
        self.log.warn(
            "routed {target}: the other host's response broke off ({error}); cutting it",
            target=self.target,
            error=reason.getErrorMessage(),
        )
        self.father.loseConnection()


class Router:
    """Sends requests on to other hosts' front ends, over connections it keeps."""

    log = Logger()

    def __init__(self, reactor: Any, router_id: str) -> None:
        self.router_id = router_id.encode()
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = ROUTE_CONNECTIONS_PER_HOST
        self.pool.retryAutomatically = False  # a request is not sent twice
        self.agent = Agent(reactor, connectTimeout=ROUTE_CONNECT_TIMEOUT, pool=self.pool)

    def route(
        self,
        request: Request,
        candidates: list[tuple[str, int]],
        body: bytes,
        on_failure: Callable[[str], None],
    ) -> None:
        """Send ``request`` (whose ``body`` was read) to the first of ``candidates`` that
        answers; ``on_failure(why)`` answers it if none does."""
        headers = Headers()
        for name, values in request.requestHeaders.getAllRawHeaders():
            lowered = name.lower()
            if lowered not in HOP_BY_HOP and lowered not in (b"content-length", b"host"):
                headers.setRawHeaders(name, values)
        headers.setRawHeaders(ROUTED_HEADER, [self.router_id])
        client_gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: client_gone.append(True))

        def failure(why: str) -> None:
            if not client_gone:  # else there is nobody left to answer
                on_failure(why)

        self._try(request, list(candidates), headers, body, failure)

    def _try(
        self,
        request: Request,
        candidates: list[tuple[str, int]],
        headers: Headers,
        body: bytes,
        on_failure: Callable[[str], None],
    ) -> None:
        host, port = candidates.pop(0)
        url = b"http://%s:%d%s" % (host.encode(), port, request.uri)
        producer = FileBodyProducer(BytesIO(body)) if body else None
        d = self.agent.request(request.method, url, headers, producer)

        def answered(response: Any) -> None:
            request.setResponseCode(response.code, response.phrase)
            for name, values in response.headers.getAllRawHeaders():
                if name.lower() not in HOP_BY_HOP:
                    request.responseHeaders.setRawHeaders(name, values)
            response.deliverBody(_Relay(request, request.uri))

        def failed(failure: Failure) -> None:
            if failure.check(*_UNREACHABLE) and candidates:
                self._try(request, candidates, headers, body, on_failure)
                return
            on_failure(f"host at {host}:{port}: {failure.getErrorMessage()}")

        d.addCallbacks(answered, failed)

    def close(self) -> Any:
        """Close the kept connections (a Deferred)."""
        return self.pool.closeCachedConnections()
