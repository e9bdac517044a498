"""One call of an app event, from ``enqueue`` until both directions are closed.

A session has two halves. Upstream (caller -> worker) is buffered while the session waits
in the queue and flushed when a worker takes it; downstream (worker -> caller) goes to an
``IDownstream``. The session ends when both halves are closed, or at once when the engine
fails it (worker lost, timeout, shutdown) or the caller goes away; the pool learns of the
end through ``on_finish`` and gives the worker's slot to the next session in the queue.

Flow control. Sessions share one worker socket and the protocol has no flow-control
message, so each direction is bounded on its own terms:

* worker -> caller: a downstream that is also a consumer (``registerProducer``: a client
  connection, an HTTP response) gets the session as its push producer. While the caller
  is not reading, the worker's replies wait in the session's *backlog*; past
  ``backlog_limit`` bytes the session fails with "client too slow", to the worker (an
  error on the channel) and to the caller. A caller that reads, only slower than the
  worker writes, would get there too on a long stream; so past a quarter of the limit the
  session asks its worker's socket to stop being read a moment (``WorkerConnection.
  lagging``: at most stall-limit at a time, at most half of the time), which paces the
  worker to that caller without stalling its other sessions for longer. The worker's
  slot stays taken until the backlog has reached the caller, which bounds what an app
  can hold at pool-limit x concurrency x backlog-limit.
* caller -> worker: when the worker's socket is not keeping up, the connection the
  message came from (``feeder``) is no longer read until the socket drains (see
  ``WorkerConnection.hold``). While the session waits in the queue, what the caller sends
  is kept here, up to ``pending_limit`` bytes (object overhead included).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgpack
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from txloom.interfaces import IUpstream
from txloom.wire.cocaine import CHOKE, CHUNK, ERROR, HeaderEntry
from txloom.worker import errors

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from txloom.interfaces import IDownstream
    from txloom.worker.control import WorkerControl


#: Default of ``Session.pending_limit`` (the pool sets its profile's max-message-size).
DEFAULT_PENDING_LIMIT = 64 * 1024 * 1024
#: Default of ``Session.backlog_limit`` (the pool sets its profile's backlog-limit).
DEFAULT_BACKLOG_LIMIT = 8 * 1024 * 1024
#: Past backlog-limit / PACE_DIVISOR held bytes a session asks its worker's socket to
#: pause for a moment; below half of that it lets it go again.
PACE_DIVISOR = 4
#: What a message held for a queued session costs besides its payload: the Python
#: objects around it (tuple, list, bytes header).
MESSAGE_OVERHEAD = 128
#: A held message whose payload is not one byte string is charged this many times its
#: packed size: decoded MessagePack objects can take that much more room in memory.
OBJECT_AMPLIFICATION = 64


def message_cost(args: list[Any]) -> int:
    """Bytes of memory a caller's message is charged while it waits for a worker."""
    if len(args) == 1 and isinstance(args[0], bytes):
        return MESSAGE_OVERHEAD + len(args[0])
    if not args:
        return MESSAGE_OVERHEAD
    return MESSAGE_OVERHEAD + OBJECT_AMPLIFICATION * len(msgpack.packb(args))


class FlowStats:
    """What one app's sessions hold in host memory, for ``info`` and for tests.

    ``backlog``: replies waiting for callers that do not read; ``pending``: what callers
    sent to sessions still in the queue; ``overshoot``: bytes written to a worker's socket
    after it stopped keeping up (the message in hand and what else arrived in the same
    read, before the feeding connection was paused). Each has its high-water mark.
    ``overflows`` counts sessions failed as too slow, ``stalls`` the moments a worker's
    socket was not read for a caller to catch up, ``throttled`` the pauses of callers'
    connections for a lagging worker.
    """

    __slots__ = (
        "backlog",
        "backlog_peak",
        "overflows",
        "overshoot_peak",
        "pending",
        "pending_peak",
        "stalls",
        "throttled",
    )

    def __init__(self) -> None:
        self.backlog = 0
        self.backlog_peak = 0
        self.overflows = 0
        self.pending = 0
        self.pending_peak = 0
        self.overshoot_peak = 0
        self.throttled = 0
        self.stalls = 0

    def as_dict(self) -> dict[str, int]:
        return {name.replace("_", "-"): getattr(self, name) for name in self.__slots__}


@implementer(IUpstream, IPushProducer)
class Session:
    """A streaming call of one event on one worker (once the pool has found one)."""

    log = Logger()

    __slots__ = (
        "_backlog",
        "_backlog_bytes",
        "_consumer",
        "_flushing",
        "_lagging",
        "_pending",
        "_pending_bytes",
        "backlog_limit",
        "channel",
        "downstream",
        "downstream_open",
        "event",
        "feeder",
        "finished",
        "headers",
        "on_finish",
        "paused",
        "pending_limit",
        "stats",
        "timer",
        "upstream_open",
        "worker",
        "worker_ended",
    )

    def __init__(
        self,
        event: bytes,
        headers: tuple[HeaderEntry, ...],
        downstream: IDownstream,
        stats: FlowStats | None = None,
        feeder: Any = None,
    ) -> None:
        self.event = event
        self.headers = headers
        self.downstream = downstream
        self.worker: WorkerControl | None = None
        self.channel = 0
        #: The caller's messages not yet passed to a worker, with what each costs.
        self._pending: deque[tuple[int, list[Any], int]] | None = deque()
        self._pending_bytes = 0
        #: Bytes (object overhead included) a caller may send while the session waits.
        self.pending_limit = DEFAULT_PENDING_LIMIT
        #: Bytes of replies held for a caller that does not read; one more fails the session.
        self.backlog_limit = DEFAULT_BACKLOG_LIMIT
        #: Replies held for the caller (made when first needed: most sessions never wait).
        self._backlog: deque[tuple[int, Any]] | None = None
        self._backlog_bytes = 0
        self._flushing = False
        self._lagging = False
        self.stats = stats if stats is not None else FlowStats()
        #: The caller's connection (``pause_reading``/``resume_reading``), if it has one.
        self.feeder = feeder
        self.paused = False
        self.upstream_open = True
        #: False once the worker has ended its side, or the engine has ended the session.
        self.downstream_open = True
        self.worker_ended = False
        self.finished = False
        self.timer: IDelayedCall | None = None
        self.on_finish: Callable[[Session], None] | None = None
        # A consumer downstream (registerProducer) tells us when its caller stops reading.
        register = getattr(downstream, "registerProducer", None)
        self._consumer = register is not None
        if register is not None:
            register(self, True)

    def __repr__(self) -> str:
        where = f"channel {self.channel}" if self.worker else "queued"
        return f"<Session {self.event!r} {where}>"

    # -- caller -> worker ---------------------------------------------------------------

    def message(self, mtype: int, args: list[Any]) -> bool:
        """Pass a caller's message on (or keep it); False if upstream is already closed."""
        if not self.upstream_open:
            return False
        if mtype != CHUNK:
            self.upstream_open = False
        pending = self._pending
        if pending is not None:  # no worker yet, or its socket has not taken them all
            cost = message_cost(args)
            self._pending_bytes += cost
            stats = self.stats
            stats.pending += cost
            stats.pending_peak = max(stats.pending_peak, stats.pending)
            if self._pending_bytes > self.pending_limit:
                waiting_for = "a worker was free" if self.worker is None else "its worker took them"
                self.fail(
                    errors.ENGINE,
                    errors.QUEUE_FULL,
                    f"more than {self.pending_limit} bytes sent before {waiting_for}",
                )
                return False
            pending.append((mtype, args, cost))
        else:
            # WorkerControl.forward, inlined: this is every chunk a caller sends
            connection = self.worker.connection  # type: ignore[union-attr]
            if connection is not None:
                connection.send(self.channel, mtype, args)
                if connection.congested and self.feeder is not None:
                    connection.hold(self.feeder)
        if not self.upstream_open and not self.downstream_open and not self._backlog:
            self._finish()
        return True

    def write(self, chunk: bytes) -> bool:
        return self.message(CHUNK, [chunk])

    def error(self, category: int, code: int, reason: str) -> bool:
        return self.message(ERROR, [[category, code], reason])

    def close(self) -> bool:
        return self.message(CHOKE, [])

    def cancel(self, reason: str) -> None:
        """The caller is gone: tell the worker (if it has the session) and end it now.

        Later output of the worker on this channel is dropped; the worker learns of the
        cancellation through an error on the channel and is expected to stop.
        """
        if self.finished:
            return
        self.downstream_open = False
        self._drop_backlog()
        self._stop_worker(errors.CLIENT_DISCONNECTED, reason)
        self._finish()

    def _stop_worker(self, code: int, reason: str) -> None:
        """Close upstream; a worker still working on the session gets an error on it.

        The error goes out even when the caller had closed its side already: it is the
        only way to tell a worker that streams replies to stop.
        """
        worker = self.worker
        if (
            (self.upstream_open or not self.worker_ended)
            and worker is not None
            and worker.connected
        ):
            worker.send(self.channel, ERROR, [[errors.ENGINE, code], reason])
        self.upstream_open = False

    def attach(self, worker: WorkerControl, channel: int) -> None:
        """A worker takes the session: send the invoke and whatever the caller sent so far."""
        self.worker = worker
        self.channel = channel
        worker.send(channel, 0, [self.event], self.headers)
        if self._pending:
            self.flush_pending()
        else:
            self._pending = None

    def flush_pending(self) -> None:
        """Pass on what the caller sent meanwhile, as fast as the worker's socket drains.

        Called again by the worker's connection when its send buffer has drained.
        """
        pending = self._pending
        worker = self.worker
        if pending is None or worker is None or self.finished:
            return
        connection = worker.connection
        feeder = self.feeder
        stats = self.stats
        while pending:
            if connection is not None and connection.congested:
                connection.when_drained(self)
                if feeder is not None:
                    connection.hold(feeder)
                return
            mtype, args, cost = pending.popleft()
            self._pending_bytes -= cost
            stats.pending -= cost
            worker.forward(self.channel, mtype, args, None)
        self._pending = None

    def _release_pending(self) -> None:
        if self._pending_bytes:
            self.stats.pending -= self._pending_bytes
            self._pending_bytes = 0

    # -- worker -> caller ---------------------------------------------------------------

    def from_worker(self, mtype: int, args: list[Any]) -> None:
        if not self.downstream_open:
            return
        if mtype == CHUNK and len(args) == 1 and isinstance(args[0], bytes):
            if self.paused or self._backlog:
                self._hold(CHUNK, args[0], len(args[0]))
            else:
                self.downstream.write(args[0])
            return
        if mtype == CHOKE:
            end: Any = None
        elif mtype == ERROR:
            end = errors.ServiceError.from_wire(args)
        else:
            self.log.warn(
                "worker sent message type {mtype} with {args!r:.80} on {session}; failing it",
                mtype=mtype,
                args=args,
                session=self,
            )
            self.fail(
                errors.DISPATCH,
                errors.BAD_ARGUMENTS,
                f"worker sent bad message {mtype}",
                tell_worker=True,
            )
            return
        self.downstream_open = False
        self.worker_ended = True
        if self.paused or self._backlog:
            self._hold(mtype, end, 0)  # the end waits behind the replies it follows
        elif mtype == CHOKE:
            self.downstream.close()
            if not self.upstream_open:
                self._finish()
        else:
            self._deliver_end(mtype, end)

    def _deliver_end(self, mtype: int, end: Any) -> None:
        if mtype == CHOKE:
            self.downstream.close()
        else:
            self.downstream.error(end.category, end.code, end.reason)
        if not self.upstream_open:
            self._finish()

    def _hold(self, mtype: int, item: Any, size: int) -> None:
        backlog = self._backlog
        if backlog is None:
            backlog = self._backlog = deque()
        backlog.append((mtype, item))
        if not size:
            return
        self._backlog_bytes += size
        stats = self.stats
        stats.backlog += size
        stats.backlog_peak = max(stats.backlog_peak, stats.backlog)
        if self._backlog_bytes > self.backlog_limit:
            self._overflow()
        elif not self._lagging and self._backlog_bytes > self.backlog_limit // PACE_DIVISOR:
            worker = self.worker
            if worker is not None and worker.connection is not None:
                self._lagging = True
                worker.connection.lagging(self)

    def _caught_up(self) -> None:
        self._lagging = False
        worker = self.worker
        if worker is not None and worker.connection is not None:
            worker.connection.caught_up(self)

    def _overflow(self) -> None:
        held = self._backlog_bytes
        self.stats.overflows += 1
        worker = self.worker
        self.log.warn(
            "{app}: caller of {event} on worker {uuid} channel {channel} is not reading; "
            "{held} bytes of replies waiting (backlog-limit {limit}); failing the session",
            app=worker.app if worker else "?",
            event=self.event.decode("utf-8", "replace"),
            uuid=worker.uuid if worker else "-",
            channel=self.channel,
            held=held,
            limit=self.backlog_limit,
        )
        self.fail(
            errors.ENGINE,
            errors.CLIENT_TOO_SLOW,
            f"client too slow: more than {self.backlog_limit} bytes of replies were waiting",
            tell_worker=True,
        )

    def _drop_backlog(self) -> None:
        if self._lagging:
            self._caught_up()
        if self._backlog:
            self._backlog = None
        if self._backlog_bytes:
            self.stats.backlog -= self._backlog_bytes
            self._backlog_bytes = 0

    # -- IPushProducer: the downstream's consumer says when its caller keeps up ----------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        """Deliver held replies until the consumer pauses again (maybe at once)."""
        self.paused = False
        if self._flushing or self.finished:
            return
        backlog = self._backlog
        if backlog is None:
            return
        self._flushing = True
        try:
            while backlog and not self.paused:
                mtype, item = backlog.popleft()
                if mtype == CHUNK:
                    size = len(item)
                    self._backlog_bytes -= size
                    self.stats.backlog -= size
                    self.downstream.write(item)
                else:
                    self._deliver_end(mtype, item)
                if self.finished:
                    break
        finally:
            self._flushing = False
        if self._lagging and self._backlog_bytes < self.backlog_limit // (2 * PACE_DIVISOR):
            self._caught_up()

    def stopProducing(self) -> None:
        self.cancel("the caller's connection was closed")

    # -- ending -------------------------------------------------------------------------

    def fail(self, category: int, code: int, reason: str, tell_worker: bool = False) -> None:
        """End the session with an engine-side error; the caller always hears about it.

        With ``tell_worker`` (a timeout, say) a worker still holding the session gets the
        error on the channel too, so that it stops working for nobody. Replies still held
        for the caller are dropped: the error replaces them.
        """
        if self.finished:
            return
        if tell_worker:
            self._stop_worker(code, reason)
        self.upstream_open = False
        undelivered = self.downstream_open or bool(self._backlog)
        self.downstream_open = False
        self._drop_backlog()
        if undelivered:
            self.downstream.error(category, code, reason)
        self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self._pending_bytes:
            self._release_pending()
        if self._backlog_bytes or self._backlog or self._lagging:
            self._drop_backlog()
        if self.timer is not None:
            if self.timer.active():
                self.timer.cancel()
            self.timer = None
        if self._consumer:
            self._consumer = False
            self.downstream.unregisterProducer()
        if self.on_finish is not None:
            self.on_finish(self)
