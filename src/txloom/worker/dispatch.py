"""Serving an ``IService`` on a connection: channels, method graphs, replies.

A client opens channels with ids larger than any before on its connection; the first
message on a new channel invokes the method whose id is the message type. From then on
each direction follows the method's protocol graph: a message type leads to the next
protocol, to the same one (``None``, recursive) or to the end (``{}``, terminal). A channel
is forgotten when both directions have ended. A message on a forgotten or never-opened
channel is logged and dropped; it never takes the connection down.

Flow control: the connection is its transport's push producer, so it knows when the
client stops reading. A channel's reply may get a producer of its own (a session,
``ChannelReply.registerProducer``) which is paused and resumed with the connection, in
turn so that no channel starves; what such a producer holds meanwhile is its own
business (a session bounds it). Reading from the client can be held by others
(``pause_reading``): a worker that is not keeping up holds the connections feeding it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import Factory
from zope.interface import implementer

from txloom.interfaces import IReplyChannel, IService, IUpstream
from txloom.wire.cocaine import CHOKE, CHUNK, DEFAULT_MAX_MESSAGE_SIZE, ERROR, Message
from txloom.worker import errors
from txloom.worker.connection import MessageConnection

#: A protocol: message type -> (name, next protocol); None = recursive, {} = terminal.
Protocol = dict[int, tuple[str, Any]]

TERMINAL: Protocol = {}
PRIMITIVE: Protocol = {0: ("value", TERMINAL), 1: ("error", TERMINAL)}
STREAMING: Protocol = {0: ("write", None), 1: ("error", TERMINAL), 2: ("close", TERMINAL)}

#: Channels one client may hold open on one connection.
MAX_OPEN_CHANNELS = 10_000


def graph_to_wire(graph: dict[int, tuple[str, Protocol | None, Protocol | None]]) -> dict:
    """The ``graph`` of a resolve reply: ``{id: [name, upstream, downstream]}``."""

    def proto(p: Protocol | None) -> Any:
        if p is None:
            return None
        return {mtype: [name, proto(nxt)] for mtype, (name, nxt) in p.items()}

    return {mid: [name, proto(up), proto(down)] for mid, (name, up, down) in graph.items()}


def graph_from_wire(raw: Any) -> dict[int, tuple[str, Any, Any]]:
    """The inverse of ``graph_to_wire`` for a graph received from a Locator."""

    def proto(p: Any) -> Any:
        if p is None:
            return None
        if not isinstance(p, dict):
            raise ValueError(f"bad protocol {p!r:.60}")
        return {int(k): (_text(v[0]), proto(v[1])) for k, v in p.items()}

    if not isinstance(raw, dict):
        raise ValueError("graph is not a map")
    return {int(k): (_text(v[0]), proto(v[1]), proto(v[2])) for k, v in raw.items()}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def step(current: Protocol, mtype: int) -> Protocol:
    """The protocol after ``mtype`` in ``current`` (``{}`` once ended); KeyError if unknown."""
    _name, nxt = current[mtype]
    return current if nxt is None else nxt


@implementer(IReplyChannel, IConsumer)
class ChannelReply:
    """The server side of one channel: replies go out on the connection.

    As a consumer it takes a push producer (a session streaming a worker's replies) that
    is paused while the client does not read; writes are never refused.
    """

    __slots__ = ("channel", "connection", "protocol")

    def __init__(self, connection: ServiceConnection, channel: int, protocol: Protocol) -> None:
        self.connection = connection
        self.channel = channel
        self.protocol = protocol

    @property
    def open(self) -> bool:
        return bool(self.protocol)

    def send(self, mtype: int, args: list[Any]) -> None:
        if not self.protocol or self.connection.gone:
            return
        try:
            self.protocol = step(self.protocol, mtype)
        except KeyError:
            raise ValueError(f"message type {mtype} is not allowed here") from None
        self.connection.send(self.channel, mtype, args)
        if not self.protocol:
            self.connection.downstream_done(self.channel)

    def value(self, *args: Any) -> None:
        self.send(0, list(args))

    def write(self, chunk: bytes) -> None:
        self.send(CHUNK, [chunk])

    def error(self, category: int, code: int, reason: str) -> None:
        self.send(ERROR, [[category, code], reason])

    def close(self) -> None:
        self.send(CHOKE, [])

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self.connection.add_producer(self.channel, producer)

    def unregisterProducer(self) -> None:
        self.connection.remove_producer(self.channel)

    @property
    def feeder(self) -> ServiceConnection:
        """The connection the channel's requests arrive on (its reading can be held)."""
        return self.connection


class _Channel:
    __slots__ = ("protocol", "reply", "upstream")

    def __init__(self, upstream: IUpstream | None, protocol: Protocol, reply: ChannelReply) -> None:
        self.upstream = upstream
        self.protocol = protocol
        self.reply = reply


@implementer(IPushProducer)
class ServiceConnection(MessageConnection):
    """One client's connection to a service."""

    def __init__(self, service: IService) -> None:
        self.service = service
        self.channels: dict[int, _Channel] = {}
        self.last_channel = 0
        self.gone = False
        #: True while the client does not read (the transport's send buffer is full).
        self.paused = False
        self._producers: dict[int, IPushProducer] = {}
        self._holds: set[object] = set()

    def connectionMade(self) -> None:
        super().connectionMade()
        self.watch_send_buffer()

    # -- the client's reading: producers of the channels' replies --------------------------

    def add_producer(self, channel_id: int, producer: IPushProducer) -> None:
        self._producers[channel_id] = producer
        if self.paused:
            producer.pauseProducing()

    def remove_producer(self, channel_id: int) -> None:
        self._producers.pop(channel_id, None)

    def pauseProducing(self) -> None:
        if self.paused:  # the transport says so again on every write while full
            return
        self.paused = True
        for producer in list(self._producers.values()):
            producer.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        producers = self._producers
        if not producers:
            return
        order = list(producers.items())
        served = 0
        for _channel_id, producer in order:
            if self.paused:  # a producer filled the send buffer again
                break
            served += 1
            producer.resumeProducing()
        # the next round starts after the last channel served in this one, so that none
        # starves (or with the second, when every one was served)
        for channel_id, producer in order[: served if self.paused else 1]:
            if producers.get(channel_id) is producer:
                del producers[channel_id]
                producers[channel_id] = producer

    def stopProducing(self) -> None:
        pass  # connectionLost cancels what is open

    # -- our reading: held while a worker this client feeds does not keep up -------------

    def pause_reading(self, by: object) -> None:
        """Stop reading from the client until ``resume_reading(by)`` (for every ``by``)."""
        if by in self._holds:
            return
        self._holds.add(by)
        if len(self._holds) == 1 and not self.gone:
            self.transport.pauseProducing()

    def resume_reading(self, by: object) -> None:
        if by not in self._holds:
            return
        self._holds.discard(by)
        if not self._holds and not self.gone:
            self.transport.resumeProducing()

    def messageReceived(self, message: Message) -> None:
        channel = self.channels.get(message.channel)
        if channel is not None:
            self._upstream(message, channel)
        elif message.channel > self.last_channel:
            self.last_channel = message.channel
            self._invoke(message)
        else:
            self._drop(message, "closed channel")

    def _drop(self, message: Message, why: str) -> None:
        self.log.info(
            "{service}: dropped type {mtype} on channel {channel} from {peer}: {why}",
            service=self.service.name,
            peer=self.peer,
            mtype=message.type,
            why=why,
            channel=message.channel,
        )

    def _invoke(self, message: Message) -> None:
        method = self.service.graph.get(message.type)
        reply = ChannelReply(self, message.channel, PRIMITIVE)
        if method is None:
            reply.error(
                errors.DISPATCH,
                errors.UNKNOWN_METHOD,
                f"service {self.service.name} has no method {message.type}",
            )
            return
        _name, upstream_protocol, downstream_protocol = method
        reply.protocol = downstream_protocol if downstream_protocol is not None else STREAMING
        if len(self.channels) >= MAX_OPEN_CHANNELS:
            reply.protocol = PRIMITIVE
            reply.error(errors.DISPATCH, errors.BAD_ARGUMENTS, "too many open channels")
            return
        upstream_open = upstream_protocol is None or bool(upstream_protocol)
        if upstream_open or reply.open:
            protocol = upstream_protocol if upstream_protocol is not None else STREAMING
            self.channels[message.channel] = _Channel(None, protocol, reply)
        try:
            upstream = self.service.invoke(message.type, message.args, message.headers, reply)
        except Exception:
            self.log.failure(
                "{service}: method {method} failed", service=self.service.name, method=_name
            )
            upstream = None
            if reply.open:
                reply.error(errors.DISPATCH, errors.BAD_ARGUMENTS, f"{_name} failed")
        channel = self.channels.get(message.channel)
        if channel is not None:
            channel.upstream = upstream
            if not upstream_open:
                channel.protocol = TERMINAL
            self._maybe_forget(message.channel, channel)

    def _upstream(self, message: Message, channel: _Channel) -> None:
        if not channel.protocol:
            self._drop(message, "closed channel (the client had closed its side)")
            return
        try:
            channel.protocol = step(channel.protocol, message.type)
        except KeyError:
            self._drop(message, "type not allowed by the method's protocol")
            return
        if channel.upstream is not None:
            channel.upstream.message(message.type, message.args)
        self._maybe_forget(message.channel, channel)

    def downstream_done(self, channel_id: int) -> None:
        self._producers.pop(channel_id, None)
        channel = self.channels.get(channel_id)
        if channel is not None:
            self._maybe_forget(channel_id, channel)

    def _maybe_forget(self, channel_id: int, channel: _Channel) -> None:
        if not channel.protocol and not channel.reply.protocol:
            # pop: a reply sent from inside the upstream's message has forgotten it already
            self.channels.pop(channel_id, None)

    def connectionLost(self, reason: object = None) -> None:
        self.gone = True
        self._producers.clear()
        self._holds.clear()
        channels, self.channels = self.channels, {}
        for channel in channels.values():
            if channel.upstream is not None:
                try:
                    channel.upstream.cancel("client disconnected")
                except Exception:
                    self.log.failure("cancelling a channel failed")


class ServiceFactory(Factory):
    """Builds a ``ServiceConnection`` per client for one service."""

    noisy = False

    def __init__(self, service: IService, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.service = service
        self.max_message_size = max_message_size

    def buildProtocol(self, addr: Any) -> ServiceConnection:
        connection = ServiceConnection(self.service)
        connection.factory = self
        connection.max_message_size = self.max_message_size
        return connection
