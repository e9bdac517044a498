"""The HTTP transports, controller side: heartbeat polling and long-poll, as
``twisted.web`` resources.

An agent POSTs a CBOR array of messages (``txloom.wire.rpc.encode_batch``) and gets one
back. Its first POST starts with its hello; the answer carries a session token in
``X-Rpc-Session``, which every later POST sends back. An unknown token is answered
``410 Gone``: the controller restarted or forgot the agent, and the agent says hello again.

- **heartbeat** (``POST .../heartbeat``): the answer holds the requests and cancels waiting
  now; the agent comes back every ``interval`` (told in ``X-Rpc-Interval``), at once while
  work keeps coming.
- **longpoll** (``POST .../poll``): with nothing waiting, the POST is held until a request
  arrives or ``hold`` seconds pass. A new POST of the same session answers the held one
  first, so an agent may send a response up while its poll is held. An agent whose held
  poll's connection closes has left (that is how a killed agent is noticed at once).

Either way an agent that has not been heard from for ``3 * interval`` (and, for long-poll,
holds no poll) has left. Everything waiting for an agent is bounded in bytes; past it the
agent is dropped. A body that does not decode is answered ``400`` and ends the session it
claims; other agents are not affected.
"""

from __future__ import annotations

import secrets
from collections import deque
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from txloom.interfaces import IRPCPeer, IRPCServerTransport
from txloom.rpc.errors import RPCError
from txloom.wire.errors import RemoteProtocolError
from txloom.wire.rpc import (
    DEFAULT_MAX_FRAME_SIZE,
    Cancel,
    ErrorResponse,
    Hello,
    Message,
    Response,
    decode_batch,
    encode_batch,
    encode_message,
)
from txloom.wire.rpc import (
    Request as RpcRequest,
)

__all__ = [
    "DEFAULT_HOLD",
    "DEFAULT_INTERVAL",
    "MISSED_INTERVALS",
    "SESSION_HEADER",
    "HttpServerTransport",
]

#: Seconds between an agent's heartbeats (told to agents in ``X-Rpc-Interval``).
DEFAULT_INTERVAL = 1.0

#: Seconds a long-poll is held with nothing to send (spec default).
DEFAULT_HOLD = 25.0

#: An agent not heard from for this many intervals has left (spec).
MISSED_INTERVALS = 3

#: Bytes of requests that may wait for one agent; past it the agent is dropped.
QUEUE_LIMIT = 8 * 1024 * 1024

SESSION_HEADER = b"x-rpc-session"
INTERVAL_HEADER = b"x-rpc-interval"
CBOR = b"application/cbor"

_PATHS = {"heartbeat": b"heartbeat", "longpoll": b"poll"}


@implementer(IRPCPeer)
class HttpPeer:
    """One agent session over HTTP: what waits for it, and its held poll."""

    def __init__(self, server: HttpServerTransport, name: str, address: str) -> None:
        self.server = server
        self.transport = server.name
        self.name = name
        self.address = address
        self.token = secrets.token_urlsafe(18)
        self.queue: deque[Message] = deque()
        self.queued_bytes = 0
        self.held: Request | None = None
        self.expiry: Any = None
        self.gone = False

    def __repr__(self) -> str:
        return f"<HttpPeer {self.transport} {self.name!r} {self.address}>"

    def _queue(self, message: Message) -> None:
        if self.gone:
            return
        size = len(encode_message(message))
        if self.queued_bytes + size > self.server.queue_limit:
            self.server.end(self, f"more than {self.server.queue_limit} bytes waiting", True)
            return
        self.queue.append(message)
        self.queued_bytes += size
        if self.held is not None:
            self.server.answer(self, self.held)

    def send_request(self, request: RpcRequest) -> None:
        self._queue(request)

    def send_cancel(self, request_id: int) -> None:
        self._queue(Cancel(request_id))

    def close(self, code: str, reason: str) -> None:
        self.server.end(self, reason, report=False)

    def take(self) -> list[Message]:
        out = list(self.queue)
        self.queue.clear()
        self.queued_bytes = 0
        return out


class PollResource(Resource):
    """POST handler of one HTTP transport (the leaf mounted at ``.../heartbeat`` or
    ``.../poll``)."""

    isLeaf = True

    def __init__(self, server: HttpServerTransport) -> None:
        super().__init__()
        self.rpc = server

    def render_POST(self, request: Request) -> Any:
        return self.rpc.poll(request)

    def render_GET(self, request: Request) -> bytes:
        request.setResponseCode(405)
        request.setHeader(b"allow", b"POST")
        return b"POST a CBOR array of reverse-RPC messages\n"


@implementer(IRPCServerTransport)
class HttpServerTransport:
    """Controller end of the ``heartbeat`` or ``longpoll`` transport.

    Mount ``resource`` in any ``twisted.web`` tree (its path is ``path``: ``heartbeat`` or
    ``poll``), or give ``listen`` to serve it on its own at ``/rpc/<path>``.
    """

    log = Logger()

    def __init__(
        self,
        registry: Any,
        mode: str = "longpoll",
        listen: str | None = None,
        *,
        reactor: Any = None,
        interval: float = DEFAULT_INTERVAL,
        hold: float = DEFAULT_HOLD,
        max_body_size: int = DEFAULT_MAX_FRAME_SIZE,
        queue_limit: int = QUEUE_LIMIT,
    ) -> None:
        if mode not in _PATHS:
            raise ValueError(f"HTTP RPC mode is heartbeat or longpoll, not {mode!r}")
        if reactor is None:
            from twisted.internet import reactor  # noqa: PLC0415 - the installed one
        self.registry = registry
        self.name = mode
        self.path = _PATHS[mode]
        self.listen = listen
        self.reactor = reactor
        self.interval = interval
        self.hold = hold
        self.max_body_size = max_body_size
        self.queue_limit = queue_limit
        self.resource = PollResource(self)
        self.sessions: dict[str, HttpPeer] = {}
        self.port: Any = None

    @property
    def address(self) -> Any:
        return None if self.port is None else self.port.getHost()

    def start(self) -> Deferred[Any]:
        if self.listen is None:
            return succeed(None)
        rpc = Resource()
        rpc.putChild(self.path, self.resource)
        root = Resource()
        root.putChild(b"rpc", rpc)
        site = Site(root)
        site.noisy = False
        site.log = lambda request: None  # type: ignore[method-assign]
        # Wrapped to know the open connections: stopping must close kept-alive ones too,
        # or agents would go on talking to a transport that has stopped.
        self._connections = WrappingFactory(site)
        d = serverFromString(self.reactor, self.listen).listen(self._connections)

        def listening(port: Any) -> None:
            self.port = port
            self.log.info(
                "reverse RPC ({mode}) on {address} at /rpc/{path}",
                mode=self.name,
                address=port.getHost(),
                path=self.path.decode(),
            )

        return d.addCallback(listening)

    def stop(self) -> Deferred[Any]:
        for peer in list(self.sessions.values()):
            self.end(peer, "controller transport stopped", report=True)
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        for protocol in list(self._connections.protocols):
            protocol.transport.abortConnection()
        return Deferred.fromCoroutine(_stopped(port))

    # -- one POST ---------------------------------------------------------------------------

    def poll(self, request: Request) -> Any:
        request.setHeader(b"content-type", CBOR)
        request.setHeader(INTERVAL_HEADER, f"{self.interval:g}".encode())
        token = (request.getHeader(SESSION_HEADER) or b"").decode("ascii", "replace")
        peer = self.sessions.get(token) if token else None
        body = request.content.read(self.max_body_size + 1) if request.content else b""
        if len(body) > self.max_body_size:
            return self._refuse(request, peer, 413, f"body over {self.max_body_size} bytes")
        try:
            messages = decode_batch(body)
        except RemoteProtocolError as e:
            return self._refuse(request, peer, 400, f"malformed batch: {e}")
        new_session = bool(messages) and isinstance(messages[0], Hello)
        if new_session:
            peer = self._hello(request, messages[0])
            if peer is None:
                return NOT_DONE_YET if request.finished else b""
            messages = messages[1:]
        elif peer is None:
            request.setResponseCode(410)
            return b""
        for message in messages:
            if not isinstance(message, (Response, ErrorResponse)):
                kind = type(message).__name__
                return self._refuse(request, peer, 400, f"an agent does not send {kind}")
            self.registry.received(peer, message)
            if peer.gone:
                request.setResponseCode(410)
                return b""
        request.setHeader(SESSION_HEADER, peer.token.encode())
        self._heard(peer)
        if peer.held is not None:  # a newer POST takes over: the held one goes back now
            self.answer(peer, peer.held)
        # A hello is answered at once (never held): the agent needs its session token.
        if peer.queue or self.name == "heartbeat" or new_session:
            return self._batch(peer)
        self._hold(peer, request)
        return NOT_DONE_YET

    def _hello(self, request: Request, hello: Hello) -> HttpPeer | None:
        client = request.getClientAddress()
        address = f"{getattr(client, 'host', '?')}:{getattr(client, 'port', '?')}"
        peer = HttpPeer(self, hello.name, address)
        try:
            self.registry.join(peer, hello)
        except RPCError as e:
            self.log.warn(
                "refused agent {name!r} from {address}: {e}", name=hello.name, address=address, e=e
            )
            request.setResponseCode(401 if e.code == "unauthenticated" else 400)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            request.write(f"{e}\n".encode())
            request.finish()
            return None
        self.sessions[peer.token] = peer
        return peer

    def _refuse(self, request: Request, peer: HttpPeer | None, status: int, why: str) -> bytes:
        self.log.warn(
            "refused an RPC poll from {address}: {why}", address=request.getClientAddress(), why=why
        )
        if peer is not None:
            self.end(peer, why, report=True)
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return f"{why}\n".encode()

    def _batch(self, peer: HttpPeer) -> bytes:
        return encode_batch(peer.take())

    def _hold(self, peer: HttpPeer, request: Request) -> None:
        peer.held = request
        timer = self.reactor.callLater(self.hold, self._hold_over, peer, request)

        def finished(result: Any) -> None:
            if timer.active():
                timer.cancel()
            if peer.held is request:  # the agent hung up on its poll: it is gone
                peer.held = None
                self.end(peer, "long-poll connection lost", report=True)

        request.notifyFinish().addBoth(finished)
        if peer.expiry is not None and peer.expiry.active():
            peer.expiry.cancel()

    def _hold_over(self, peer: HttpPeer, request: Request) -> None:
        if peer.held is request:
            self.answer(peer, request)

    def answer(self, peer: HttpPeer, request: Request) -> None:
        """Send what waits for ``peer`` on its held poll ``request``."""
        peer.held = None
        self._heard(peer)
        if not request.finished and not getattr(request, "_disconnected", False):
            request.write(self._batch(peer))
            request.finish()

    def _heard(self, peer: HttpPeer) -> None:
        if peer.expiry is not None and peer.expiry.active():
            peer.expiry.cancel()
        deadline = MISSED_INTERVALS * self.interval
        peer.expiry = self.reactor.callLater(deadline, self._expired, peer)

    def _expired(self, peer: HttpPeer) -> None:
        if peer.held is None:
            self.end(peer, f"not heard from for {MISSED_INTERVALS} intervals", report=True)

    def end(self, peer: HttpPeer, reason: str, report: bool) -> None:
        """Forget ``peer``'s session; tell the registry unless it asked for this."""
        if peer.gone:
            return
        peer.gone = True
        self.sessions.pop(peer.token, None)
        if peer.expiry is not None and peer.expiry.active():
            peer.expiry.cancel()
        held, peer.held = peer.held, None
        if held is not None and not held.finished and not getattr(held, "_disconnected", False):
            held.setResponseCode(410)
            held.finish()
        peer.queue.clear()
        if report:
            self.registry.left(peer, reason)


async def _stopped(port: Any) -> None:
    d = port.stopListening()
    if d is not None:
        await d
