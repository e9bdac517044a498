"""The store server's connection: the thin glue between a transport and a ``StoreSession``.

Everything about requests and answers (order, barriers, the pipeline cap, auth, push
mode, deadlines) is the session's (``txloom.store.session``); this protocol admits the
connection, feeds the session the bytes it reads, writes what the session writes, and
carries flow control both ways. It registers itself as its transport's push producer:
when the peer stops reading and the transport's buffer fills, the session stops writing
answers and stops reading requests, or, on a push connection, the subscriber queues its
events (boundedly), so one slow peer costs a bounded amount of memory.
"""

from __future__ import annotations

import contextlib
import typing
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txloom.store import errors
from txloom.store.replies import error_frame, ok_frame
from txloom.store.session import SessionServer, StoreSession
from txloom.store.subscriptions import Subscriber, SubscriberQueue


class ConnectionServer(SessionServer, typing.Protocol):
    """What a connection asks of its server (``StoreServerFactory``) besides its session's
    needs: a place among the connections, and the subscription hub."""

    hub: Any

    def admit(self, conn: StoreServerProtocol) -> bool: ...

    def authenticated(self, conn: StoreServerProtocol) -> None: ...

    def release(self, conn: StoreServerProtocol) -> None: ...


__all__ = ["StoreServerProtocol"]


@implementer(IPushProducer)
class StoreServerProtocol(Protocol):
    log = Logger()

    factory: ConnectionServer

    def __init__(self, factory: ConnectionServer) -> None:
        self.factory = factory
        self.session: StoreSession | None = None
        self.subscriber: Subscriber | None = None
        #: True while the factory counts this connection.
        self.counted = False
        self.authenticated = factory.config.auth_token is None
        self.peer = "?"

    # -- connection lifetime ------------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer = str(getattr(peer, "host", "") or peer)
        factory = self.factory
        if not factory.admit(self):
            limit = factory.config.max_connections
            self.transport.write(
                error_frame(errors.OVERLOADED, f"connection limit of {limit} reached")
            )
            self.transport.loseConnection()  # no producer registered yet
            return
        self.counted = True
        self.session = StoreSession(factory, self, self.peer)
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            with contextlib.suppress(OSError, AttributeError):
                set_no_delay(True)
        self.transport.registerProducer(self, True)
        if factory.draining:
            self.drain()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.session is not None:
            self.session.connection_lost()
        if self.subscriber is not None:
            self.factory.hub.remove(self.subscriber)
            self.subscriber.queue.stopProducing()
            self.subscriber = None
        if self.counted:
            self.factory.release(self)

    def dataReceived(self, data: bytes) -> None:
        if self.session is not None:
            self.session.data_received(data)

    @property
    def closing(self) -> bool:
        return self.session is None or self.session.closing

    @property
    def idle(self) -> bool:
        return self.session is None or self.session.idle

    def evict(self) -> None:
        """Make room for a newcomer: this connection never authenticated."""
        if self.session is not None:
            self.session.evict()

    def drain(self) -> None:
        """Shutting down: read no more requests; answers in flight still go out."""
        if self.session is not None:
            self.session.drain()

    def lose_connection(self) -> None:
        if self.session is not None:
            self.session.lose()
        else:
            self.lose()

    # -- SessionOutput (what the session asks of the connection) ------------------------

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_reading(self) -> None:
        self.transport.pauseProducing()

    def resume_reading(self) -> None:
        self.transport.resumeProducing()

    def lose(self) -> None:
        """Close once the buffered bytes are out.

        The producer must go first: Twisted keeps a connection with a registered
        producer open until that producer is unregistered.
        """
        if self.connected:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def abort(self) -> None:
        self.transport.abortConnection()

    def became_authenticated(self) -> None:
        self.authenticated = True
        self.factory.authenticated(self)

    def drained(self) -> None:
        self.lose_connection()

    def start_push(self, stores: list[str] | None, since: int | None) -> None:
        """Register (before the ack goes out), ack, and turn into a push connection."""
        config = self.factory.config
        queue = SubscriberQueue(
            self.transport,
            max_events=config.subscriber_max_events,
            max_bytes=config.subscriber_max_bytes,
            policy=config.slow_subscriber,
            clock=self.factory.clock,
            close_timeout=config.overflow_close_timeout,
            close=self.lose_connection,
        )
        assert self.session is not None
        queue.paused = self.session.write_paused
        subscriber = Subscriber(self.factory.hub, queue, stores, since)
        self.factory.hub.add(subscriber)
        self.subscriber = subscriber
        self.transport.write(ok_frame())
        subscriber.start()

    # -- IPushProducer (the transport's view of us) -------------------------------------

    def pauseProducing(self) -> None:
        if self.subscriber is not None:
            self.subscriber.queue.pauseProducing()
        elif self.session is not None:
            self.session.pause_writing()

    def resumeProducing(self) -> None:
        if self.subscriber is not None:
            self.subscriber.queue.resumeProducing()
        elif self.session is not None:
            self.session.resume_writing()

    def stopProducing(self) -> None:
        if self.session is not None:
            self.session.closing = True
