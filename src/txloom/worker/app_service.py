"""The app service: one per running app, registered in the Locator under the app's name.

``enqueue(event)`` opens a session on the app's pool (both directions stream);
``info()`` reports pool and queue state; ``control`` keeps workers running: each ``write``
of an integer on its channel keeps that many workers alive (at most pool-limit) whatever
the queue, for as long as the channel is open; closing it answers the count kept and
hands the pool back to its queue (Cocaine's ``keep_alive``).
"""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from txloom.interfaces import IReplyChannel, IService, IUpstream
from txloom.wire.cocaine import CHOKE, CHUNK, HeaderEntry
from txloom.worker import errors
from txloom.worker.dispatch import PRIMITIVE, STREAMING, TERMINAL
from txloom.worker.pool import WorkerPool

#: Version reported by the Locator for app services.
APP_SERVICE_VERSION = 1

ENQUEUE = 0
INFO = 1
CONTROL = 2


@implementer(IUpstream)
class IgnoredUpstream:
    """Upstream of a method that takes nothing more (``control``, refused calls)."""

    def message(self, mtype: int, args: list[Any]) -> None:
        pass

    def cancel(self, reason: str) -> None:
        pass


@implementer(IUpstream)
class PoolControl:
    """The caller's side of one ``control`` channel: worker counts to keep alive."""

    def __init__(self, pool: WorkerPool, reply: IReplyChannel) -> None:
        self.pool = pool
        self.reply = reply
        self.kept = 0
        self.open = True

    def message(self, mtype: int, args: list[Any]) -> None:
        if not self.open:
            return
        if mtype == CHUNK and len(args) == 1 and _is_count(args[0]):
            self.kept = self.pool.keep_alive(args[0])
            return
        self.open = False
        self.pool.keep_alive(0)
        if mtype == CHOKE:
            self.reply.value(self.kept)
        elif mtype == CHUNK:
            self.reply.error(errors.DISPATCH, errors.BAD_ARGUMENTS, "control takes [count >= 0]")

    def cancel(self, reason: str) -> None:
        if self.open:
            self.open = False
            self.pool.keep_alive(0)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@implementer(IService)
class AppService:
    version = APP_SERVICE_VERSION
    graph = {
        ENQUEUE: ("enqueue", STREAMING, STREAMING),
        INFO: ("info", TERMINAL, PRIMITIVE),
        CONTROL: ("control", STREAMING, PRIMITIVE),
    }

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.name = pool.name

    def invoke(
        self,
        method: int,
        args: list[Any],
        headers: tuple[HeaderEntry, ...],
        reply: IReplyChannel,
    ) -> IUpstream | None:
        if method == ENQUEUE:
            if len(args) != 1 or not isinstance(args[0], bytes):
                reply.error(errors.DISPATCH, errors.BAD_ARGUMENTS, "enqueue takes [event]")
                return IgnoredUpstream()
            # the connection the caller's chunks arrive on; held while its worker lags
            return self.pool.enqueue(args[0], headers, reply, reply.feeder)
        if method == INFO:
            reply.value(self.pool.info())
            return None
        return PoolControl(self.pool, reply)
