"""The stream transport: one long-lived connection per agent over any Twisted endpoint.

Frames are a u32 big-endian length and a CBOR message (``txloom.wire.rpc``). The controller
listens on a server endpoint string (``tcp:7300``, ``unix:/run/rpc.sock``,
``ssl:7300:privateKey=key.pem:certKey=cert.pem``); an agent connects to a URL
(``tcp://host:7300``, ``unix:///run/rpc.sock``, ``tls://host:7300?trustRoots=ca-dir``) and
reconnects with backoff and jitter for as long as it runs.

The protocols are thin: bytes go to ``RpcStreamDecoder``, messages to the registry
(controller) or to an ``AgentSession`` (agent). What belongs to one socket lives here: the
hello deadline, and a bounded send queue driven by the socket's flow control, so a slow
agent costs bounded memory and is dropped rather than let it hold the others up.
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txloom.interfaces import IRPCClientTransport, IRPCPeer, IRPCServerTransport
from txloom.rpc.backoff import RECONNECT_INITIAL, RECONNECT_MAX, reconnect_policy
from txloom.rpc.errors import RPCError
from txloom.rpc.session import AgentSession
from txloom.sendwindow import SendWindow
from txloom.wire.decoder import NEED_DATA, ConnectionClosed
from txloom.wire.errors import RemoteProtocolError
from txloom.wire.rpc import (
    DEFAULT_MAX_FRAME_SIZE,
    Cancel,
    ErrorResponse,
    Hello,
    Message,
    Request,
    Response,
    RpcStreamDecoder,
    encode_frame,
)

__all__ = [
    "HELLO_TIMEOUT",
    "SEND_QUEUE_LIMIT",
    "StreamClientTransport",
    "StreamServerTransport",
    "endpoint_for_url",
]

#: Seconds a new connection has to send its hello before it is dropped.
HELLO_TIMEOUT = 10.0

#: Bytes of frames that may wait for a slow agent (beyond the socket's own buffer); past
#: it the agent is dropped (its calls fail with ``cancelled``).
SEND_QUEUE_LIMIT = 8 * 1024 * 1024

_STREAM_SCHEMES = ("tcp", "unix", "tls", "ssl")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def endpoint_for_url(url: str) -> str:
    """A Twisted client endpoint string for an agent's ``--connect`` URL.

    ``tcp://host:port``, ``unix:///path`` and ``tls://host:port?trustRoots=dir&
    certificate=cert.pem&privateKey=key.pem`` (``ssl://`` is the same as ``tls://``); query
    parameters become endpoint options.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    options = [f"{k}={_escape(v)}" for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    if scheme == "unix":
        path = unquote(parts.netloc + parts.path)
        if not path:
            raise ValueError(f"{url}: a unix URL needs a path (unix:///run/rpc.sock)")
        return ":".join([f"unix:path={_escape(path)}", *options])
    if scheme not in _STREAM_SCHEMES:
        raise ValueError(f"{url}: not a stream URL (schemes: {', '.join(_STREAM_SCHEMES)})")
    if not parts.hostname or parts.port is None:
        raise ValueError(f"{url}: a {scheme} URL needs a host and a port")
    kind = "tcp" if scheme == "tcp" else "tls"
    host = _escape(parts.hostname)
    return ":".join([f"{kind}:host={host}:port={parts.port}", *options])


def _no_delay(transport: Any) -> None:
    # Small frames answered at once: Nagle's algorithm would hold each one back for the
    # peer's delayed ACK. TLS and Unix transports may not have the option.
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        with contextlib.suppress(OSError):
            set_no_delay(True)


# -- controller side --------------------------------------------------------------------------


@implementer(IRPCPeer)
class StreamPeer:
    """The registry's handle on one connection (``transport`` here is the transport's
    name, as ``IRPCPeer`` has it; the protocol's ``transport`` is its socket)."""

    __slots__ = ("address", "name", "protocol")
    transport = "stream"

    def __init__(self, protocol: StreamPeerProtocol) -> None:
        self.protocol = protocol
        self.name = ""
        self.address = ""

    def __repr__(self) -> str:
        return f"<StreamPeer {self.name!r} {self.address}>"

    def send_request(self, request: Request) -> None:
        self.protocol.send(request)

    def send_cancel(self, request_id: int) -> None:
        self.protocol.send(Cancel(request_id))

    def close(self, code: str, reason: str) -> None:
        self.protocol.close(code, reason)


class StreamPeerProtocol(Protocol):
    """One agent's connection, on the controller."""

    log = Logger()

    def __init__(self, server: StreamServerTransport) -> None:
        self.server = server
        self.decoder = RpcStreamDecoder(server.max_frame_size)
        self.peer = StreamPeer(self)
        self.joined = False
        self.closing = False
        self._hello_timer: Any = None

    def connectionMade(self) -> None:
        _no_delay(self.transport)
        peer = self.transport.getPeer()
        host = getattr(peer, "host", None)
        self.peer.address = f"{host}:{peer.port}" if host is not None else str(peer.name or "unix")
        self.window = SendWindow(self.transport.write, self.server.send_queue_limit)
        self.transport.registerProducer(self.window, True)
        self.server.connections.add(self)
        self._hello_timer = self.server.clock.callLater(
            self.server.hello_timeout, self._drop, "no hello in time"
        )

    def dataReceived(self, data: bytes) -> None:
        decoder = self.decoder
        decoder.receive_data(data)
        try:
            while not self.closing:
                event = decoder.next_event()
                if event is NEED_DATA:
                    return
                self._received(event)
        except RemoteProtocolError as e:
            self._drop(f"malformed frame: {e}")

    def _received(self, message: Message) -> None:
        if isinstance(message, (Response, ErrorResponse)) and self.joined:
            self.server.registry.received(self.peer, message)
        elif isinstance(message, Hello) and not self.joined:
            self._hello(message)
        else:
            self._drop(f"unexpected {type(message).__name__}")

    def _hello(self, hello: Hello) -> None:
        if self._hello_timer is not None and self._hello_timer.active():
            self._hello_timer.cancel()
        self.peer.name = hello.name
        # Joined before the registry hears of it: whoever waits for the join may call at once.
        self.joined = True
        try:
            self.server.registry.join(self.peer, hello)
        except RPCError as e:
            self.joined = False
            self.log.warn(
                "refused agent {name!r} from {address}: {e}",
                name=hello.name,
                address=self.peer.address,
                e=e,
            )
            self._hang_up()

    def _drop(self, reason: str) -> None:
        if self.closing:
            return
        self.log.warn(
            "dropping RPC agent {name!r} from {address}: {reason}",
            name=self.peer.name,
            address=self.peer.address,
            reason=reason,
        )
        self.closing = True
        if self.joined:
            self.joined = False
            self.server.registry.left(self.peer, reason)
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure) -> None:
        self.server.connections.discard(self)
        if self._hello_timer is not None and self._hello_timer.active():
            self._hello_timer.cancel()
        self.window.stopProducing()
        if self.joined:
            self.joined = False
            self.server.registry.left(self.peer, f"connection lost: {reason.getErrorMessage()}")

    # -- what StreamPeer asks for -------------------------------------------------------------

    def send(self, message: Message) -> None:
        if self.closing:
            return
        if not self.window.offer(encode_frame(message, self.server.max_frame_size)):
            self._drop(f"more than {self.window.limit} bytes waiting to be sent")

    def close(self, code: str, reason: str) -> None:
        if self.closing:
            return
        self.joined = False
        self._hang_up()

    def _hang_up(self) -> None:
        # A registered producer holds a TLS close open until it is unregistered.
        self.closing = True
        self.window.stopProducing()
        self.transport.unregisterProducer()
        self.transport.loseConnection()


@implementer(IRPCServerTransport)
class StreamServerTransport:
    """Listens on ``listen`` and reports agents to ``registry`` (an ``IRPCPeerRegistry``)."""

    name = "stream"
    log = Logger()

    def __init__(
        self,
        registry: Any,
        listen: str = "tcp:7300",
        *,
        reactor: Any = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        send_queue_limit: int = SEND_QUEUE_LIMIT,
        hello_timeout: float = HELLO_TIMEOUT,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor  # noqa: PLC0415 - the installed one
        self.registry = registry
        self.listen = listen
        self.reactor = reactor
        self.clock = reactor
        self.max_frame_size = max_frame_size
        self.send_queue_limit = send_queue_limit
        self.hello_timeout = hello_timeout
        self.connections: set[StreamPeerProtocol] = set()
        self.port: Any = None

    @property
    def address(self) -> Any:
        """The listening address (``.port`` for TCP) once started."""
        return None if self.port is None else self.port.getHost()

    def start(self) -> Deferred[Any]:
        factory = Factory.forProtocol(lambda: StreamPeerProtocol(self))
        factory.noisy = False
        d = serverFromString(self.reactor, self.listen).listen(factory)

        def listening(port: Any) -> None:
            self.port = port
            self.log.info("reverse RPC (stream) listening on {address}", address=port.getHost())

        return d.addCallback(listening)

    def stop(self) -> Deferred[Any]:
        port, self.port = self.port, None
        waits = []
        if port is not None:
            waits.append(Deferred.fromCoroutine(_none(port.stopListening())))
        for conn in list(self.connections):
            conn._drop("controller transport stopped")
        return DeferredList(waits).addCallback(lambda _: None)


async def _none(d: Any) -> None:
    if d is not None:
        await d


# -- agent side -------------------------------------------------------------------------------


class StreamAgentProtocol(Protocol):
    """One session with the controller, on the agent."""

    log = Logger()

    def __init__(self, client: StreamClientTransport) -> None:
        self.client = client
        self.decoder = RpcStreamDecoder(client.max_frame_size)
        self.session = AgentSession(client.dispatcher, self._send)

    def connectionMade(self) -> None:
        _no_delay(self.transport)
        self.client._session_started(self)
        hello = Hello(self.client.name, 1, self.client.token)
        self.transport.write(encode_frame(hello, self.client.max_frame_size))

    def _send(self, message: Message) -> None:
        self.transport.write(encode_frame(message, self.client.max_frame_size))

    def dataReceived(self, data: bytes) -> None:
        self.decoder.receive_data(data)
        try:
            for event in self.decoder:
                if isinstance(event, ConnectionClosed):
                    return
                self.session.received(event)
        except RemoteProtocolError as e:
            self.log.warn("controller sent a malformed frame: {e}", e=e)
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure) -> None:
        self.session.close()
        self.client._session_ended(self)


@implementer(IRPCClientTransport)
class StreamClientTransport:
    """Keeps an agent connected to the controller at ``url`` (see the module doc).

    ``clock`` schedules the reconnect attempts (the reactor unless given).
    """

    name = "stream"
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
        reconnect_initial: float = RECONNECT_INITIAL,
        reconnect_max: float = RECONNECT_MAX,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor  # noqa: PLC0415 - the installed one
        self.url = url
        self.name = name
        self.dispatcher = dispatcher
        self.token = token
        self.reactor = reactor
        self.max_frame_size = max_frame_size
        self.protocol: StreamAgentProtocol | None = None
        endpoint = clientFromString(reactor, endpoint_for_url(url))
        factory = Factory.forProtocol(lambda: StreamAgentProtocol(self))
        factory.noisy = False
        self.service = ClientService(
            endpoint,
            factory,
            retryPolicy=reconnect_policy(reconnect_initial, reconnect_max),
            clock=reactor if clock is None else clock,
        )

    @property
    def connected(self) -> bool:
        return self.protocol is not None

    def _session_started(self, protocol: StreamAgentProtocol) -> None:
        self.protocol = protocol

    def _session_ended(self, protocol: StreamAgentProtocol) -> None:
        if self.protocol is protocol:
            self.protocol = None

    def when_connected(self) -> Deferred[Any]:
        """Fires with the session's protocol once connected (at once if it is)."""
        return self.service.whenConnected()

    def start(self) -> Deferred[None]:
        self.service.startService()
        return succeed(None)

    def stop(self) -> Deferred[None]:
        if not self.service.running:
            return succeed(None)
        return self.service.stopService()

    def disconnect(self) -> None:
        """Cut the current session at once (the agent then reconnects); for failover tests
        and for an operator's "reconnect now"."""
        if self.protocol is not None:
            self.protocol.transport.abortConnection()
