"""One call of an app event, from ``enqueue`` until both directions are closed.

A session has two halves. Upstream (caller -> worker) is buffered while the session waits
in the queue and flushed when a worker takes it; downstream (worker -> caller) goes to an
``IDownstream``. The session ends when both halves are closed, or at once when the engine
fails it (worker lost, timeout, shutdown) or the caller goes away; the pool learns of the
end through ``on_finish`` and gives the worker's slot to the next session in the queue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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


@implementer(IUpstream)
class Session:
    """A streaming call of one event on one worker (once the pool has found one)."""

    log = Logger()

    __slots__ = (
        "_pending",
        "_pending_bytes",
        "channel",
        "downstream",
        "downstream_open",
        "event",
        "finished",
        "headers",
        "on_finish",
        "pending_limit",
        "timer",
        "upstream_open",
        "worker",
    )

    def __init__(
        self, event: bytes, headers: tuple[HeaderEntry, ...], downstream: IDownstream
    ) -> None:
        self.event = event
        self.headers = headers
        self.downstream = downstream
        self.worker: WorkerControl | None = None
        self.channel = 0
        self._pending: list[tuple[int, list[Any]]] | None = []
        self._pending_bytes = 0
        #: Bytes of chunks a caller may send while the session waits for a worker.
        self.pending_limit = DEFAULT_PENDING_LIMIT
        self.upstream_open = True
        self.downstream_open = True
        self.finished = False
        self.timer: IDelayedCall | None = None
        self.on_finish: Callable[[Session], None] | None = None

    def __repr__(self) -> str:
        where = f"channel {self.channel}" if self.worker else "queued"
        return f"<Session {self.event!r} {where}>"

    # -- caller -> worker ---------------------------------------------------------------

    def message(self, mtype: int, args: list[Any]) -> bool:
        """Pass a caller's message on (or buffer it); False if upstream is already closed."""
        if not self.upstream_open:
            return False
        if mtype != CHUNK:
            self.upstream_open = False
        if self.worker is None:
            assert self._pending is not None
            if mtype == CHUNK and args and isinstance(args[0], bytes):
                self._pending_bytes += len(args[0])
                if self._pending_bytes > self.pending_limit:
                    self.fail(
                        errors.ENGINE,
                        errors.QUEUE_FULL,
                        f"more than {self.pending_limit} bytes sent before a worker was free",
                    )
                    return False
            self._pending.append((mtype, args))
        else:
            self.worker.send(self.channel, mtype, args)
        if not self.upstream_open and not self.downstream_open:
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
        cancellation through an error on its upstream and is expected to stop.
        """
        if self.finished:
            return
        self.downstream_open = False
        self._stop_upstream(errors.CLIENT_DISCONNECTED, reason)
        self._finish()

    def _stop_upstream(self, code: int, reason: str) -> None:
        """Close upstream; a worker that holds the session gets an error on it."""
        if self.upstream_open and self.worker is not None and self.worker.connected:
            self.worker.send(self.channel, ERROR, [[errors.ENGINE, code], reason])
        self.upstream_open = False

    def attach(self, worker: WorkerControl, channel: int) -> None:
        """A worker takes the session: send the invoke and whatever the caller sent so far."""
        self.worker = worker
        self.channel = channel
        worker.send(channel, 0, [self.event], self.headers)
        pending, self._pending = self._pending, None
        if pending:
            for mtype, args in pending:
                worker.send(channel, mtype, args)

    # -- worker -> caller ---------------------------------------------------------------

    def from_worker(self, mtype: int, args: list[Any]) -> None:
        if not self.downstream_open:
            return
        if mtype == CHUNK and len(args) == 1 and isinstance(args[0], bytes):
            self.downstream.write(args[0])
            return
        if mtype == CHOKE:
            self.downstream_open = False
            self.downstream.close()
        elif mtype == ERROR:
            self.downstream_open = False
            failure = errors.ServiceError.from_wire(args)
            self.downstream.error(failure.category, failure.code, failure.reason)
        else:
            self.log.warn(
                "worker sent message type {mtype} with {args!r:.80} on {session}; failing it",
                mtype=mtype,
                args=args,
                session=self,
            )
            self.fail(errors.DISPATCH, errors.BAD_ARGUMENTS, f"worker sent bad message {mtype}")
            return
        if not self.upstream_open:
            self._finish()

    def fail(self, category: int, code: int, reason: str, tell_worker: bool = False) -> None:
        """End the session with an engine-side error; the caller always hears about it.

        With ``tell_worker`` (a timeout, say) a worker still holding the session gets the
        error on its upstream too, so that it stops working for nobody.
        """
        if self.finished:
            return
        if tell_worker:
            self._stop_upstream(code, reason)
        self.upstream_open = False
        if self.downstream_open:
            self.downstream_open = False
            self.downstream.error(category, code, reason)
        self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.timer is not None:
            if self.timer.active():
                self.timer.cancel()
            self.timer = None
        if self.on_finish is not None:
            self.on_finish(self)
