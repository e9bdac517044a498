"""The HTTP transports, agent side: heartbeat polling and long-poll over ``twisted.web``'s
HTTP client (see ``http_server`` for the exchange).

The agent's URL names the transport and the controller's RPC root:
``heartbeat+http://host:8080/rpc`` POSTs to ``/rpc/heartbeat``, ``longpoll+http://...``
(or plain ``http://``) to ``/rpc/poll``; ``+https`` works the same over TLS (a ``ca``
query parameter names a PEM file to trust instead of the system's roots).

Responses wait in an outbox until a POST carrying them is answered. A POST that fails
puts them back, so a response already computed is not lost to a refused connection or a
restarting controller: it goes up with the next hello. When the controller does not know
the session any more (``410``), the agent says hello again at once and the handlers still
running for the old session are cancelled; other failures back off with jitter.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, PotentialDataLoss, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from txloom.interfaces import IRPCClientTransport
from txloom.rpc.backoff import RECONNECT_INITIAL, RECONNECT_MAX, reconnect_policy
from txloom.rpc.session import AgentSession
from txloom.rpc.transports.http_server import (
    CBOR,
    DEFAULT_INTERVAL,
    INTERVAL_HEADER,
    SESSION_HEADER,
)
from txloom.wire.errors import RemoteProtocolError
from txloom.wire.rpc import (
    DEFAULT_MAX_FRAME_SIZE,
    ErrorResponse,
    Hello,
    Message,
    Response,
    decode_batch,
    encode_batch,
)

__all__ = ["HttpClientTransport", "poll_url"]

_MODES = {"heartbeat": "heartbeat", "longpoll": "poll"}


def poll_url(url: str) -> tuple[str, bytes, dict[str, list[str]]]:
    """(mode, the URL to POST to, query options) for an agent's ``--connect`` URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    mode, _, inner = scheme.rpartition("+")
    if not mode:
        mode = "longpoll"
    if mode not in _MODES or inner not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{url}: expected heartbeat+http(s)://host:port/rpc or longpoll+http(s)://..."
        )
    path = parts.path.rstrip("/") or "/rpc"
    if not path.endswith("/" + _MODES[mode]):
        path = f"{path}/{_MODES[mode]}"
    target = urlunsplit((inner, parts.netloc, path, "", ""))
    return mode, target.encode(), parse_qs(parts.query)


class _Refused(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text.strip()[:200]}")
        self.status = status


@implementer(IRPCClientTransport)
class HttpClientTransport:
    """Keeps an agent in touch with the controller at ``url`` over HTTP."""

    log = Logger()

    def __init__(
        self,
        url: str,
        name: str,
        dispatcher: Any,
        token: str | None = None,
        *,
        reactor: Any = None,
        clock: Any = None,
        interval: float = DEFAULT_INTERVAL,
        reconnect_initial: float = RECONNECT_INITIAL,
        reconnect_max: float = RECONNECT_MAX,
        max_body_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor  # noqa: PLC0415 - the installed one
        self.mode, self.target, query = poll_url(url)
        self.name = self.mode
        self.url = url
        self.agent_name = name
        self.dispatcher = dispatcher
        self.token = token
        self.reactor = reactor
        self.clock = reactor if clock is None else clock
        self.interval = interval
        self.max_body_size = max_body_size
        self.backoff = reconnect_policy(reconnect_initial, reconnect_max)
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 4
        self.http = Agent(reactor, pool=self.pool, **_tls_policy(query))
        self.session_token: str | None = None
        self.session: AgentSession | None = None
        self.outbox: list[Response | ErrorResponse] = []
        self.posts: set[Deferred[Any]] = set()
        self.failures = 0
        self.running = False
        self._timer: Any = None
        self._flush_pending = False

    @property
    def connected(self) -> bool:
        return self.session_token is not None

    def start(self) -> Deferred[None]:
        if not self.running:
            self.running = True
            self._schedule(0)
        return succeed(None)

    def stop(self) -> Deferred[None]:
        self.running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        for d in list(self.posts):
            d.cancel()
        self._end_session()
        return self.pool.closeCachedConnections()

    def _schedule(self, delay: float) -> None:
        if not self.running:
            return
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= self.clock.seconds() + delay:
                return
            self._timer.cancel()
        self._timer = self.clock.callLater(delay, self._post)

    def _end_session(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
        self.session_token = None

    def _reply(self, answer: Response | ErrorResponse) -> None:
        self.outbox.append(answer)
        if self.mode == "longpoll" and not self._flush_pending:
            # Send it up now, in a new POST: the controller answers the held one.
            self._flush_pending = True
            self.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        if self.outbox and self.running:
            self._post()

    def _post(self) -> None:
        if not self.running:
            return
        if self.mode == "heartbeat" and self.posts:
            return
        batch: list[Message] = []
        if self.session_token is None:
            batch.append(Hello(self.agent_name, 1, self.token))
        carried, self.outbox = self.outbox, []
        batch.extend(carried)
        d = Deferred.fromCoroutine(self._exchange(batch))
        self.posts.add(d)
        d.addBoth(self._posted, d, carried)

    async def _exchange(self, batch: list[Message]) -> tuple[bytes, list[Message], float | None]:
        headers = Headers({b"content-type": [CBOR]})
        if self.session_token is not None:
            headers.addRawHeader(SESSION_HEADER, self.session_token.encode())
        body = _Body(encode_batch(batch))
        response = await self.http.request(b"POST", self.target, headers, body)
        data = await _read_body(response, self.max_body_size)
        if response.code != 200:
            raise _Refused(response.code, data.decode("utf-8", "replace"))
        token = response.headers.getRawHeaders(SESSION_HEADER, [b""])[0]
        interval = response.headers.getRawHeaders(INTERVAL_HEADER, [None])[0]
        return token, decode_batch(data), float(interval) if interval else None

    def _posted(self, result: Any, d: Deferred[Any], carried: list[Any]) -> None:
        self.posts.discard(d)
        if not self.running:
            return
        if not isinstance(result, tuple):
            self._failed(result, carried)
            return
        token, messages, interval = result
        self.failures = 0
        if interval:
            self.interval = interval
        token = token.decode("ascii", "replace")
        if token and token != self.session_token:
            self._end_session()
            self.session_token = token
            self.session = AgentSession(self.dispatcher, self._reply)
            self.log.info("agent {name} joined {url}", name=self.agent_name, url=self.url)
        try:
            for message in messages:
                if self.session is not None:
                    self.session.received(message)
        except RemoteProtocolError as e:
            self.log.warn("controller sent {e}; saying hello again", e=e)
            self._end_session()
        if self.mode == "longpoll":
            if not self.posts:
                self._schedule(0)
        elif messages or self.outbox:
            self._schedule(0)
        else:
            self._schedule(self.interval)

    def _failed(self, failure: Any, carried: list[Any]) -> None:
        self.outbox[:0] = carried  # not delivered: they go with the next POST
        if failure.check(CancelledError):
            return
        status = getattr(failure.value, "status", None)
        if status == 410:  # the controller does not know this session (any more)
            self.log.info("agent {name}: session ended, saying hello again", name=self.agent_name)
            self._end_session()
            self._schedule(0)
            return
        self.failures += 1
        if status in (400, 401, 413):
            self._end_session()
        if self.failures == 1 or self.failures % 20 == 0:
            self.log.warn(
                "agent {name}: {url}: {error}",
                name=self.agent_name,
                url=self.url,
                error=failure.getErrorMessage(),
            )
        if self.mode == "heartbeat" or not self.posts:
            self._schedule(self.backoff(self.failures))

    def kill(self) -> None:
        """Stop at once, cutting open connections (what the agent's death looks like)."""
        self.running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        for d in list(self.posts):
            d.cancel()
        self.session = None


class _BodyReader(Protocol):
    """Collects a response body of at most ``limit`` bytes."""

    def __init__(self, done: Deferred[bytes], limit: int) -> None:
        self.done = done
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            self.transport.stopProducing()
            if not self.done.called:
                self.done.errback(_Refused(200, f"answer over {self.limit} bytes"))
            return
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


def _read_body(response: Any, limit: int) -> Deferred[bytes]:
    if response.length is not UNKNOWN_LENGTH and response.length > limit:
        response.deliverBody(_BodyReader(Deferred(), 0))
        raise _Refused(response.code, f"answer over {limit} bytes")
    reader: _BodyReader

    def cancel(_: Deferred[bytes]) -> None:
        reader.transport.stopProducing()

    reader = _BodyReader(Deferred(cancel), limit)
    response.deliverBody(reader)
    return reader.done


@implementer(IBodyProducer)
class _Body:
    """A request body already in memory, written in one go."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def _tls_policy(query: dict[str, list[str]]) -> dict[str, Any]:
    ca = query.get("ca")
    if not ca:
        return {}
    from twisted.internet.ssl import Certificate, optionsForClientTLS  # noqa: PLC0415
    from twisted.web.iweb import IPolicyForHTTPS  # noqa: PLC0415

    with open(ca[0], "rb") as f:
        root = Certificate.loadPEM(f.read())

    @implementer(IPolicyForHTTPS)
    class TrustOne:
        def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
            return optionsForClientTLS(hostname.decode(), trustRoot=root)

    return {"contextFactory": TrustOne()}
