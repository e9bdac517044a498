"""Pods: a connection to the bus that sends messages and receives everyone else's.

Delivery to a pod is a small state machine. While the pod is *idle* (handler set, no
filter, no waiters, nothing queued, no failures) the bus calls the handler directly in its
dispatch loop; that is the hot path and it allocates nothing per delivery. Anything else
(a filter, a waiter, a handler that returned a pending Deferred, a failure) moves the pod to
the general path here: messages are filtered, offered to waiters, queued in order and run
one at a time, so a pod sees one sender's messages in the order they were sent and never
runs two handler calls at once.

The queue is bounded (``Bus.pod_queue_limit``); what happens beyond it is the bus's slow-pod
policy. Failures follow Grav: a failed message is kept and re-delivered after the pod's next
success, and ``max_failures`` failures in a row disconnect the pod.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Callable, Iterable
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from txloom.bus.errors import ConnectionClosed, MsgNotWanted, NoReceipt, WaitTimeout
from txloom.bus.filter import MessageFilter
from txloom.bus.message import Message
from txloom.bus.receipt import MsgReceipt, WaitFunction

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from txloom.bus.bus import Bus

__all__ = ["Handler", "Pod", "PodStats"]

#: A pod's handler: called with each message; raising, or returning a Deferred (or
#: coroutine, or asyncio future) that fails, counts as a failure.
Handler = Callable[[Message], Any]


class PodStats:
    """Counters a pod keeps for observability (cheap to read, never reset)."""

    __slots__ = ("delivered", "dropped", "failed", "max_queued", "redelivered")

    def __init__(self) -> None:
        self.delivered = 0
        self.failed = 0
        self.redelivered = 0
        self.dropped = 0
        self.max_queued = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class _Waiter:
    __slots__ = ("deferred", "fn", "key", "timer")

    def __init__(self, fn: WaitFunction | None, key: str | None) -> None:
        self.fn = fn
        self.key = key
        self.deferred: Deferred[Message] = Deferred()
        self.timer: IDelayedCall | None = None

    def offer(self, msg: Message) -> bool | None:
        """True if accepted, None if not wanted, False if the wait failed (it is over)."""
        if self.fn is not None:
            try:
                result = self.fn(msg)
            except MsgNotWanted:
                return None
            except Exception:
                self.finish(Failure())
                return False
            if result is MsgNotWanted or isinstance(result, MsgNotWanted):
                return None
        self.finish(msg)
        return True

    def finish(self, outcome: Message | Failure) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if not self.deferred.called:
            if isinstance(outcome, Failure):
                self.deferred.errback(outcome)
            else:
                self.deferred.callback(outcome)


class Pod:
    """One participant on the bus. Made by ``Bus.connect()``; not thread-safe (use it from
    the reactor thread, or hand calls over with ``reactor.callFromThread``)."""

    log = Logger()

    __slots__ = (
        "_bus",
        "_busy",
        "_close_reason",
        "_close_watchers",
        "_connected",
        "_draining",
        "_failed",
        "_failures",
        "_fast",
        "_filter",
        "_handler",
        "_queue",
        "_replay_pending",
        "_reply_waiters",
        "_waiters",
        "id",
        "stats",
    )

    def __init__(self, bus: Bus, pod_id: int, replay: bool = False) -> None:
        self._bus = bus
        self.id = pod_id
        self.stats = PodStats()
        self._handler: Handler | None = None
        self._filter: MessageFilter | None = None
        self._queue: deque[Message] = deque()
        self._failed: list[Message] = []
        self._failures = 0
        self._busy = False
        self._draining = False
        self._connected = True
        self._replay_pending = replay
        self._waiters: list[_Waiter] = []
        self._reply_waiters: dict[str, list[_Waiter]] = {}
        self._close_reason: str | None = None
        self._close_watchers: list[Deferred[str]] = []
        self._fast = False

    # =========================================================================================
    # Public API
    # =========================================================================================

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def queued(self) -> int:
        """Messages waiting for the handler (the slow-pod measure)."""
        return len(self._queue)

    def on(self, fn: Handler | None) -> None:
        """Set the handler for every message (resets the filter, as Grav does).

        ``None`` ignores messages. The first handler set on a pod connected with replay
        first receives the replay buffer, in order.
        """
        self._handler = fn
        self._filter = None
        self._after_handler_change()

    def on_type(self, msg_type: str | Iterable[str], fn: Handler) -> None:
        """Set the handler and let only ``msg_type`` (a type or several) through."""
        types = (msg_type,) if isinstance(msg_type, str) else tuple(msg_type)
        self._handler = fn
        self._filter = MessageFilter.only(types)
        self._after_handler_change()

    def filter_type(self, msg_type: str, allow: bool) -> None:
        """Allow or deny one message type (in addition to what the handler set)."""
        self._edit_filter().types[msg_type] = allow

    def filter_uuid(self, uuid: str, allow: bool) -> None:
        """Allow or deny one message by uuid."""
        self._edit_filter().uuids[uuid] = allow

    def send(self, msg: Message) -> MsgReceipt:
        """Hand ``msg`` to the bus for every other connected pod; returns its receipt.

        Never blocks and never delivers inside the call: delivery happens on the next
        reactor turn, in send order. Raises ``NoReceipt`` once the pod is disconnected.
        """
        if not self._connected:
            raise NoReceipt(f"pod {self.id} is disconnected; message {msg.uuid} was not sent")
        if msg.__class__ is not Message and not isinstance(msg, Message):
            raise TypeError(f"send takes a Message, not {type(msg).__name__}")
        self._bus.post(msg, self)
        return MsgReceipt(self, msg.uuid)

    def reply_to(self, msg: Message, reply: Message) -> MsgReceipt:
        """Send ``reply`` as the answer to ``msg`` (sets its ``response_to``)."""
        reply.response_to = msg.uuid
        return self.send(reply)

    def wait_on(self, fn: WaitFunction | None = None) -> Deferred[Message]:
        """Fire with the next message to this pod that ``fn`` accepts.

        Unlike Grav this does not replace the handler: messages ``fn`` does not want still
        reach it, the accepted one does not. Type filters do not apply to waiters.
        """
        return self._add_waiter(fn, None, None)

    def wait_until(
        self, timeout: float | None, fn: WaitFunction | None = None
    ) -> Deferred[Message]:
        """``wait_on`` that fails with ``WaitTimeout`` after ``timeout`` seconds."""
        return self._add_waiter(fn, None, timeout)

    def writable(self) -> Deferred[None]:
        """Fires when the bus accepts more without pausing (immediately if it does now)."""
        return self._bus.writable()

    def disconnect(self, reason: str = "disconnected by its owner") -> None:
        """Leave the bus: stop receiving, fail every wait with ``ConnectionClosed``.

        ``reason`` is what ``when_disconnected`` fires with (a transport that owns the pod
        says why it went).
        """
        self._close(reason)

    def when_disconnected(self) -> Deferred[str]:
        """Fires with the reason once the pod is disconnected (by its owner or the bus)."""
        if self._close_reason is not None:
            return succeed(self._close_reason)
        d: Deferred[str] = Deferred()
        self._close_watchers.append(d)
        return d

    def __repr__(self) -> str:
        state = "connected" if self._connected else "disconnected"
        return f"<Pod {self.id} {state} queued={len(self._queue)} failures={self._failures}>"

    # =========================================================================================
    # State
    # =========================================================================================

    def _refresh(self) -> None:
        """Recompute whether the bus may call the handler directly (see the module doc)."""
        self._fast = (
            self._connected
            and self._handler is not None
            and self._filter is None
            and not self._busy
            and not self._queue
            and not self._failed
            and not self._failures
            and not self._waiters
            and not self._reply_waiters
        )

    def _edit_filter(self) -> MessageFilter:
        if self._filter is None:
            self._filter = MessageFilter()
        self._fast = False
        return self._filter

    def _after_handler_change(self) -> None:
        self._fast = False
        if self._replay_pending and self._handler is not None and self._connected:
            self._replay_pending = False
            replay = self._bus._replay_for(self)
            if self._filter is not None:
                replay = [m for m in replay if self._filter.allows(m)]
            self._queue.extendleft(reversed(replay))
            self._drain()
        elif not self._bus._flushing:
            # During a flush the bus may hold the old handler in its fast loop; leaving
            # ``_fast`` off sends the rest of the batch down the general path, which reads
            # the new handler, and refreshes the flag at its end.
            self._refresh()

    # =========================================================================================
    # Delivery (called by the bus)
    # =========================================================================================

    def _offer_from(self, msgs: list[Message], senders: list[object], start: int) -> None:
        """The general path for ``msgs[start:]`` (the bus's batch)."""
        offer = self._offer
        for i in range(start, len(msgs)):
            if senders[i] is not self:
                offer(msgs[i])
        self._drain()

    def _offer(self, msg: Message) -> None:
        if not self._connected:
            return
        replies = self._reply_waiters
        if replies and msg.response_to in replies and self._offer_to(replies, msg.response_to, msg):
            return
        if self._waiters and self._offer_to_pod_waiters(msg):
            return
        if self._handler is None:
            return
        if self._filter is not None and not self._filter.allows(msg):
            return
        queue = self._queue
        if len(queue) >= self._bus.pod_queue_limit and not self._bus._admit_over_limit(self):
            self.stats.dropped += 1
            return
        queue.append(msg)
        self.stats.max_queued = max(self.stats.max_queued, len(queue))

    def _drain(self) -> None:
        """Run queued messages one at a time until the queue is empty or a handler waits."""
        if self._draining:
            return
        self._draining = True
        try:
            queue = self._queue
            while queue and not self._busy and self._connected:
                self._run(queue.popleft())
        finally:
            self._draining = False
        bus = self._bus
        if self in bus._over_limit and len(self._queue) <= bus.pod_queue_limit // 2:
            bus._pod_below_limit(self)
        self._refresh()

    def _run(self, msg: Message) -> None:
        handler = self._handler
        if handler is None:
            return
        try:
            result = handler(msg)
        except Exception:
            self._failure(msg, Failure())
            return
        if result is None:
            self._success()
        else:
            self._result(msg, result)

    def _result(self, msg: Message, result: Any) -> None:
        """A handler returned something: a Deferred, a coroutine, a future, or a value."""
        if isinstance(result, Deferred):
            d = result
        elif type(result) is CoroutineType:
            d = Deferred.fromCoroutine(result)
        elif isinstance(result, asyncio.Future):
            d = Deferred.fromFuture(result)
        elif inspect.isawaitable(result):
            d = ensureDeferred(result)
        else:
            self._success()
            return
        self._busy = True
        self._fast = False
        d.addCallbacks(self._async_done, self._async_failed, (msg,), None, (msg,), None)

    def _async_done(self, _: object, msg: Message) -> None:
        self._busy = False
        self._success()
        self._drain()

    def _async_failed(self, failure: Failure, msg: Message) -> None:
        self._busy = False
        self._failure(msg, failure)
        self._drain()

    def _success(self) -> None:
        self.stats.delivered += 1
        if self._failures:
            self._failures = 0
            failed, self._failed = self._failed, []
            self.stats.redelivered += len(failed)
            self._queue.extendleft(reversed(failed))
            self._fast = False

    def _failure(self, msg: Message, failure: Failure) -> None:
        self.stats.failed += 1
        self._failures += 1
        self._failed.append(msg)
        self._fast = False
        limit = self._bus.max_failures
        if self._failures == 1:
            self.log.failure(
                "pod {pod} failed to handle {msg_type} {uuid}; it will be re-delivered after the "
                "pod's next success ({limit} failures in a row disconnect it)",
                failure,
                pod=self.id,
                msg_type=msg.msg_type,
                uuid=msg.uuid,
                limit=limit,
            )
        if self._failures >= limit:
            self.log.error(
                "pod {pod} disconnected after {count} failures in a row (last: {error})",
                pod=self.id,
                count=self._failures,
                error=failure.getErrorMessage(),
            )
            self._close(f"{self._failures} failures in a row")

    # =========================================================================================
    # Waiters
    # =========================================================================================

    def _add_waiter(
        self, fn: WaitFunction | None, reply_to: str | None, timeout: float | None
    ) -> Deferred[Message]:
        if not self._connected:
            return fail(ConnectionClosed(f"pod {self.id} is disconnected"))
        waiter = _Waiter(fn, reply_to)
        if reply_to is None:
            self._waiters.append(waiter)
        else:
            self._reply_waiters.setdefault(reply_to, []).append(waiter)
        self._fast = False
        if timeout is not None and timeout > 0:
            waiter.timer = self._bus.reactor.callLater(timeout, self._time_out, waiter, timeout)
        waiter.deferred.addBoth(self._waiter_done, waiter)
        return waiter.deferred

    def _wait_for_reply(
        self, uuid: str, fn: WaitFunction | None, timeout: float | None
    ) -> Deferred[Message]:
        return self._add_waiter(fn, uuid, timeout)

    def _time_out(self, waiter: _Waiter, timeout: float) -> None:
        waiter.timer = None
        what = f"a reply to {waiter.key}" if waiter.key else "a wanted message"
        waiter.finish(Failure(WaitTimeout(f"pod {self.id} saw no {what} within {timeout}s")))

    def _waiter_done(self, result: object, waiter: _Waiter) -> object:
        if waiter.key is None:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        else:
            group = self._reply_waiters.get(waiter.key)
            if group is not None and waiter in group:
                group.remove(waiter)
                if not group:
                    del self._reply_waiters[waiter.key]
        if not self._draining:
            self._refresh()
        return result

    def _offer_to(self, table: dict[str, list[_Waiter]], key: str, msg: Message) -> bool:
        consumed = False
        for waiter in tuple(table.get(key, ())):
            if waiter.offer(msg) is not None:
                consumed = True
        return consumed

    def _offer_to_pod_waiters(self, msg: Message) -> bool:
        consumed = False
        for waiter in tuple(self._waiters):
            if waiter.offer(msg) is not None:
                consumed = True
        return consumed

    def _log_reply_error(self, failure: Failure, uuid: str) -> None:
        self.log.failure(
            "pod {pod}: reply handler for {uuid} failed", failure, pod=self.id, uuid=uuid
        )

    # =========================================================================================
    # Leaving
    # =========================================================================================

    def _close(self, reason: str) -> None:
        if not self._connected:
            return
        self._connected = False
        self._fast = False
        self._queue.clear()
        self._failed = []
        self._bus._remove(self)
        waiters = list(self._waiters)
        for group in self._reply_waiters.values():
            waiters.extend(group)
        self._waiters = []
        self._reply_waiters = {}
        for waiter in waiters:
            waiter.finish(Failure(ConnectionClosed(f"pod {self.id} {reason}")))
        self._close_reason = reason
        watchers, self._close_watchers = self._close_watchers, []
        for d in watchers:
            d.callback(reason)
