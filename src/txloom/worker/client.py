"""The client library: find a service through a Locator, call it, stream its replies.

::

    from txloom.worker.client import connect

    echo = await connect("echo", locator="127.0.0.1:10053")
    channel = echo.enqueue("ping")
    channel.tx.write(b"hello")
    channel.tx.close()
    async for chunk in channel.rx:
        print(chunk)

Every call is a ``Channel``: ``tx`` sends what the method's upstream protocol allows
(``write``, ``close``, ``error`` for ``enqueue``), ``rx`` yields the replies
(``await rx.read()`` -> next item or ``None`` at the end; ``async for``). An error reply
is raised as a ``ServiceError`` subclass carrying ``category``, ``code`` and ``reason``.
Methods that return Deferreds can be awaited or used from any Twisted code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    quoteStringArgument,
)
from twisted.internet.protocol import Factory
from zope.interface import implementer

from txloom.interfaces import IAddressResolver
from txloom.wire.cocaine import Header, HeaderEntry, Message
from txloom.worker import errors
from txloom.worker.appworker import parse_locator
from txloom.worker.connection import MessageConnection, default_reactor
from txloom.worker.dispatch import (
    PRIMITIVE,
    STREAMING,
    TERMINAL,
    Protocol,
    graph_from_wire,
    step,
)
from txloom.worker.errors import ServiceError
from txloom.worker.locator import DEFAULT_LOCATOR_PORT
from txloom.worker.streams import ChunkStream

__all__ = [
    "Channel",
    "LocatorAddressResolver",
    "LocatorClient",
    "LoggerClient",
    "Service",
    "ServiceError",
    "as_text",
    "connect",
]

#: Seconds to establish a TCP connection to a service.
CONNECT_TIMEOUT = 5.0

Address = tuple[str, int]
Graph = dict[int, tuple[str, Any, Any]]


def _address(locator: str | Address) -> Address:
    if isinstance(locator, tuple):
        return locator
    return parse_locator(locator)[0]


def _headers(headers: Any) -> list[HeaderEntry] | None:
    """Header entries from a mapping or a list of entries/pairs."""
    if not headers:
        return None
    items = headers.items() if hasattr(headers, "items") else headers
    out: list[HeaderEntry] = []
    for item in items:
        if isinstance(item, Header | int):
            out.append(item)
        else:
            name, value = item
            out.append(Header(_bytes(name), _bytes(value)))
    return out


def _bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")


def as_text(value: Any) -> Any:
    """``value`` with every UTF-8 ``bytes`` inside turned into ``str`` (for maps like info)."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    if isinstance(value, list | tuple):
        return [as_text(v) for v in value]
    if isinstance(value, dict):
        return {as_text(k): as_text(v) for k, v in value.items()}
    return value


class Sender:
    """The sending half of a channel (what the method's upstream protocol allows)."""

    def __init__(self, connection: ClientConnection, channel: int, protocol: Protocol) -> None:
        self._connection = connection
        self.channel = channel
        self.protocol = protocol

    def send(self, name: str, *args: Any) -> None:
        mtype = next((t for t, (n, _) in self.protocol.items() if n == name), None)
        if mtype is None:
            raise ServiceError(
                errors.DISPATCH, errors.UNKNOWN_METHOD, f"{name!r} is not allowed on this channel"
            )
        if self._connection.lost:
            raise ServiceError(errors.ENGINE, errors.CONNECTION_LOST, "connection lost")
        self.protocol = step(self.protocol, mtype)
        self._connection.send(self.channel, mtype, list(args))

    def write(self, chunk: bytes | str) -> None:
        self.send("write", _bytes(chunk))

    def close(self) -> None:
        self.send("close")

    def error(self, code: int, reason: str, category: int = errors.APPLICATION) -> None:
        self.send("error", [category, code], reason)


class Channel:
    """One call of a service method: ``tx`` to send, ``rx`` to read the replies."""

    def __init__(
        self, connection: ClientConnection, channel: int, upstream: Protocol, downstream: Protocol
    ) -> None:
        self.id = channel
        self.tx = Sender(connection, channel, upstream)
        self.rx = ChunkStream()
        self._downstream = downstream

    def received(self, mtype: int, args: list[Any]) -> bool:
        """Feed a reply; True when the reply stream has ended."""
        entry = self._downstream.get(mtype)
        if entry is None:
            self.rx.fail(
                ServiceError(errors.DISPATCH, errors.BAD_ARGUMENTS, f"unexpected reply {mtype}")
            )
            return True
        name, nxt = entry
        if name == "error":
            self.rx.fail(ServiceError.from_wire(args))
            return True
        if args:
            self.rx.push(args[0] if len(args) == 1 else list(args))
        if nxt is not None:
            self._downstream = nxt
        if not self._downstream:
            self.rx.close()
            return True
        return False


class ClientConnection(MessageConnection):
    """A client's connection to one service; channel ids count up from 1."""

    def __init__(self) -> None:
        self.channels: dict[int, Channel] = {}
        self.next_channel = 1
        self.lost = False

    def open(
        self, method: int, args: Sequence[Any], upstream: Any, downstream: Any, headers: Any
    ) -> Channel:
        if self.lost:
            raise ServiceError(errors.ENGINE, errors.CONNECTION_LOST, "connection lost")
        channel_id = self.next_channel
        self.next_channel += 1
        channel = Channel(
            self,
            channel_id,
            upstream if upstream is not None else STREAMING,
            downstream if downstream is not None else STREAMING,
        )
        if channel._downstream:
            self.channels[channel_id] = channel
        else:
            channel.rx.close()
        self.send(channel_id, method, list(args), _headers(headers))
        return channel

    def messageReceived(self, message: Message) -> None:
        channel = self.channels.get(message.channel)
        if channel is not None and channel.received(message.type, message.args):
            del self.channels[message.channel]

    def connectionLost(self, reason: object = None) -> None:
        self.lost = True
        lost = errors.ConnectionLost(errors.ENGINE, errors.CONNECTION_LOST, "connection lost")
        channels, self.channels = self.channels, {}
        for channel in channels.values():
            channel.rx.fail(lost)


class _ClientFactory(Factory):
    noisy = False
    protocol = ClientConnection


class Service:
    """A service at known endpoints with a known method graph."""

    def __init__(
        self,
        name: str,
        endpoints: Sequence[Address],
        graph: Graph,
        version: int = 0,
        reactor: Any = None,
    ) -> None:
        self.name = name
        self.endpoints = list(endpoints)
        self.graph = graph
        self.version = version
        self._methods = {mname: (mid, up, down) for mid, (mname, up, down) in graph.items()}
        self._reactor = reactor
        self.connection: ClientConnection | None = None

    @property
    def reactor(self) -> Any:
        if self._reactor is None:
            self._reactor = default_reactor()
        return self._reactor

    def connect(self) -> Deferred[Service]:
        """Connect to the first endpoint that answers; fires with ``self``."""
        return Deferred.fromCoroutine(self._connect())

    async def _connect(self) -> Service:
        last: Exception | None = None
        for raw_host, port in self.endpoints:
            host = raw_host.decode() if isinstance(raw_host, bytes) else raw_host
            endpoint_type = TCP6ClientEndpoint if isIPv6Address(host) else TCP4ClientEndpoint
            endpoint = endpoint_type(self.reactor, host, port, timeout=CONNECT_TIMEOUT)
            try:
                self.connection = await endpoint.connect(_ClientFactory())
                return self
            except Exception as e:
                last = e
        raise errors.ServiceNotAvailable(
            errors.LOCATOR,
            errors.SERVICE_NOT_AVAILABLE,
            f"cannot connect to {self.name} at {self.endpoints}: {last}",
        )

    def invoke(self, method: str, *args: Any, headers: Any = None) -> Channel:
        """Call ``method`` by name with ``args``; replies come on the channel's ``rx``."""
        if self.connection is None:
            raise ServiceError(errors.ENGINE, errors.CONNECTION_LOST, "not connected")
        try:
            mid, up, down = self._methods[method]
        except KeyError:
            raise errors.UnknownMethod(
                errors.DISPATCH, errors.UNKNOWN_METHOD, f"{self.name} has no method {method!r}"
            ) from None
        return self.connection.open(mid, args, up, down, headers)

    def call(self, method: str, *args: Any, headers: Any = None) -> Deferred[Any]:
        """A method with a single reply (``info``, ``resolve``...): fires with the value."""
        return self.invoke(method, *args, headers=headers).rx.read()

    def enqueue(self, event: str, headers: Any = None) -> Channel:
        """Invoke an app's ``event``; write the request on ``tx``, read the reply on ``rx``."""
        return self.invoke("enqueue", event, headers=headers)

    def close(self) -> None:
        if self.connection is not None and self.connection.transport is not None:
            self.connection.transport.loseConnection()


class LocatorClient(Service):
    """The Locator, whose graph every client knows in advance."""

    GRAPH: Graph = {
        0: ("resolve", TERMINAL, PRIMITIVE),
        16: ("services", TERMINAL, PRIMITIVE),
        17: ("reload", TERMINAL, PRIMITIVE),
    }

    def __init__(
        self, locator: str | Address = ("127.0.0.1", DEFAULT_LOCATOR_PORT), reactor: Any = None
    ) -> None:
        super().__init__("locator", [_address(locator)], self.GRAPH, reactor=reactor)

    def resolve(self, name: str) -> Deferred[tuple[list[Address], int, Graph]]:
        """Fires with ``(endpoints, version, graph)`` or fails with ``ServiceNotAvailable``."""

        def decode(value: list[Any]) -> tuple[list[Address], int, Graph]:
            endpoints, version, graph = value
            return (
                [(h.decode() if isinstance(h, bytes) else h, int(p)) for h, p in endpoints],
                int(version),
                graph_from_wire(graph),
            )

        return self.call("resolve", name).addCallback(decode)

    def services(self) -> Deferred[list[str]]:
        """Names of every service the host publishes (apps, ``logging``, ``locator``)."""
        return self.call("services").addCallback(lambda names: [as_text(n) for n in names])

    def reload(self) -> Deferred[dict[str, list[str]]]:
        """Have the host re-read its apps directory; fires with the names per change.

        Fails with ``ReloadRefused`` (the reason) if a manifest could not be used.
        """
        return self.call("reload").addCallback(as_text)


def connect(
    name: str, locator: str | Address = ("127.0.0.1", DEFAULT_LOCATOR_PORT), reactor: Any = None
) -> Deferred[Service]:
    """Resolve ``name`` through the Locator and connect to it."""

    async def run() -> Service:
        loc = LocatorClient(locator, reactor)
        await loc.connect()
        try:
            endpoints, version, graph = await loc.resolve(name)
        finally:
            loc.close()
        return await Service(name, endpoints, graph, version, reactor).connect()

    return Deferred.fromCoroutine(run())


class LoggerClient:
    """Sends log lines to the host's Logging service as ``source`` (``app/NAME``)."""

    DEBUG, INFO, WARNING, ERROR = 0, 1, 2, 3

    def __init__(self, service: Service, source: str, **attributes: str) -> None:
        self.service = service
        self.source = source
        self.attributes = attributes

    @classmethod
    def connect(
        cls,
        source: str,
        locator: str | Address = ("127.0.0.1", DEFAULT_LOCATOR_PORT),
        reactor: Any = None,
        **attributes: str,
    ) -> Deferred[LoggerClient]:
        return connect("logging", locator, reactor).addCallback(
            lambda s: cls(s, source, **attributes)
        )

    def emit(self, priority: int, message: str, **attributes: Any) -> None:
        attrs = {**self.attributes, **attributes}
        self.service.invoke(
            "emit", priority, self.source, message, [[k, str(v)] for k, v in attrs.items()]
        )

    def debug(self, message: str, **attributes: Any) -> None:
        self.emit(self.DEBUG, message, **attributes)

    def info(self, message: str, **attributes: Any) -> None:
        self.emit(self.INFO, message, **attributes)

    def warning(self, message: str, **attributes: Any) -> None:
        self.emit(self.WARNING, message, **attributes)

    def error(self, message: str, **attributes: Any) -> None:
        self.emit(self.ERROR, message, **attributes)

    def verbosity(self) -> Deferred[int]:
        return self.service.call("verbosity")

    def set_verbosity(self, level: int) -> Deferred[Any]:
        return self.service.call("set_verbosity", level)

    def close(self) -> None:
        self.service.close()


def _endpoint_string(host: str, port: int) -> str:
    kind = "tcp6" if isIPv6Address(host) else "tcp"
    return f"{kind}:host={quoteStringArgument(host)}:port={port}"


@implementer(IAddressResolver)
class LocatorAddressResolver:
    """A Locator as an ``IAddressResolver``: service name -> client endpoint strings.

    Lets other parts of txloom (nested streams, for one) find services the worker host
    publishes. An unknown name resolves to an empty list.
    """

    def __init__(
        self, locator: str | Address = ("127.0.0.1", DEFAULT_LOCATOR_PORT), reactor: Any = None
    ) -> None:
        self.locator = _address(locator)
        self._reactor = reactor

    def resolve(self, address: str) -> Deferred[list[str]]:
        async def run() -> list[str]:
            client = LocatorClient(self.locator, self._reactor)
            await client.connect()
            try:
                endpoints, _version, _graph = await client.resolve(address)
            except errors.ServiceNotAvailable:
                return []
            finally:
                client.close()
            return [_endpoint_string(host, port) for host, port in endpoints]

        return Deferred.fromCoroutine(run())
