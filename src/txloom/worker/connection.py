"""The Twisted glue under every Cocaine-protocol connection: bytes to messages and back.

Engine <-> worker sockets, service connections and client connections differ only in what
they do with a message, so they all subclass ``MessageConnection`` and implement
``messageReceived``. A peer that breaks the stream is logged and dropped; nobody else is
affected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from txloom.wire.cocaine import (
    DEFAULT_MAX_MESSAGE_SIZE,
    NEED_DATA,
    Decoder,
    Encoder,
    HeaderEntry,
    Message,
)
from txloom.wire.errors import RemoteProtocolError

#: Bytes a host-side connection's transport buffers before it asks its producer to pause.
#: Twisted's default (64 KiB) is one 64 KiB chunk: every chunk would pause and resume the
#: stream and leave the socket idle between them; a few chunks in flight keep it busy.
SEND_BUFFER = 256 * 1024


def default_reactor() -> Any:
    """The global reactor, imported only when first needed (importing installs it)."""
    from twisted.internet import reactor  # noqa: PLC0415 - deliberately late

    return reactor


def describe_peer(transport: Any) -> str:
    """``tcp:HOST:PORT`` / ``unix:PATH`` for logs; best effort."""
    try:
        peer = transport.getPeer()
    except Exception:
        return "?"
    host = getattr(peer, "host", None)
    if host is not None:
        return f"tcp:{host}:{peer.port}"
    name = getattr(peer, "name", None)
    return f"unix:{name.decode() if isinstance(name, bytes) else name or '-'}"


class MessageConnection(Protocol):
    """A connection carrying the Cocaine message stream."""

    log = Logger()
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    #: Set when the connection has been dropped for a protocol error (reason text).
    protocol_error: str | None = None

    def connectionMade(self) -> None:
        self._decoder = Decoder(self.max_message_size)
        self._encoder = Encoder()
        self.peer = describe_peer(self.transport)

    def dataReceived(self, data: bytes) -> None:
        decoder = self._decoder
        decoder.receive_data(data)
        try:
            while (message := decoder.next_event()) is not NEED_DATA:
                self.messageReceived(message)
        except RemoteProtocolError as e:
            self.protocol_error = str(e)
            self.log.warn(
                "{kind} {peer}: protocol error: {error}; dropping the connection",
                kind=type(self).__name__,
                peer=self.peer,
                error=str(e),
            )
            self.transport.abortConnection()

    def messageReceived(self, message: Message) -> None:
        raise NotImplementedError

    def watch_send_buffer(self) -> None:
        """Become the transport's push producer, paused past ``SEND_BUFFER`` bytes."""
        if hasattr(self.transport, "bufferSize"):
            self.transport.bufferSize = SEND_BUFFER
        self.transport.registerProducer(self, True)

    def send(
        self,
        channel: int,
        mtype: int,
        args: Sequence[Any] = (),
        headers: Sequence[HeaderEntry] | None = None,
    ) -> None:
        self.transport.write(self._encoder.encode(channel, mtype, args, headers))
