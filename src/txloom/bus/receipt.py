"""Receipts: the handle ``send`` returns, for waiting on replies to what was sent."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred

if TYPE_CHECKING:
    from txloom.bus.message import Message
    from txloom.bus.pod import Pod

__all__ = ["MsgReceipt", "WaitFunction"]

#: Called with each candidate reply; raising or returning ``MsgNotWanted`` means "keep
#: waiting", raising anything else ends the wait with that error, anything else accepts.
WaitFunction = Callable[["Message"], Any]


class MsgReceipt:
    """A sent message's uuid plus the pod that sent it.

    A reply is a message whose ``response_to`` is this uuid. Replies reach the waiters here
    whatever the pod's type filter says, and a reply a waiter accepts is not also handed to
    the pod's handler. Set the wait up before returning to the reactor: replies are
    delivered on a later reactor turn, never inside ``send``.
    """

    __slots__ = ("_pod", "uuid")

    def __init__(self, pod: Pod, uuid: str) -> None:
        self._pod = pod
        self.uuid = uuid

    @property
    def pod(self) -> Pod:
        return self._pod

    def on_reply(self, fn: WaitFunction) -> Deferred[Message]:
        """Call ``fn`` with replies (in the background) until it accepts one.

        Errors from ``fn`` are logged rather than lost; the returned Deferred fires with
        the accepted reply and may be ignored.
        """
        d = self._pod._wait_for_reply(self.uuid, fn, None)
        d.addErrback(self._pod._log_reply_error, self.uuid)
        return d

    def wait_on(self, fn: WaitFunction | None = None) -> Deferred[Message]:
        """Fire with the first reply ``fn`` accepts (any reply when ``fn`` is None)."""
        return self._pod._wait_for_reply(self.uuid, fn, None)

    def wait_until(
        self, timeout: float | None, fn: WaitFunction | None = None
    ) -> Deferred[Message]:
        """``wait_on`` that fails with ``WaitTimeout`` after ``timeout`` seconds.

        A timeout of ``None`` or ``<= 0`` waits forever, as in Grav.
        """
        return self._pod._wait_for_reply(self.uuid, fn, timeout)

    def __repr__(self) -> str:
        return f"<MsgReceipt {self.uuid} pod={self._pod.id}>"
