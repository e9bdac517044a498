"""One agent session: the requests the controller sent on it, and their answers.

Every client transport feeds what the controller sends (``Request``, ``Cancel``) to an
``AgentSession`` and writes what it hands to ``send``. The session keeps the requests
running on this connection by id: a ``cancel`` cancels the handler, an answer to a request
that is no longer running (cancelled, or its session closed) is dropped, and closing the
session cancels everything still running on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from txloom.wire.rpc import Cancel, ErrorResponse, InvalidMessage, Message, Request, Response

__all__ = ["AgentSession"]


class AgentSession:
    """Requests in, answers out, for one connection (see the module doc)."""

    log = Logger()

    def __init__(self, dispatcher: Any, send: Callable[[Response | ErrorResponse], Any]) -> None:
        self.dispatcher = dispatcher
        self.send = send
        self.running: dict[int, Deferred[Any]] = {}
        self.closed = False

    def received(self, message: Message) -> None:
        """A message from the controller; ``InvalidMessage`` if it may not send that."""
        if isinstance(message, Request):
            if message.id in self.running:
                raise InvalidMessage(f"request id {message.id} is already running")
            d = self.dispatcher.dispatch(message)
            if d.called:  # answered at once (no handler, bad payload, plain function)
                d.addBoth(self._answered, message.id, False)
                return
            self.running[message.id] = d
            d.addBoth(self._answered, message.id, True)
        elif isinstance(message, Cancel):
            d = self.running.pop(message.id, None)
            if d is not None:
                d.cancel()
        else:
            raise InvalidMessage(f"a controller does not send {type(message).__name__}")

    def _answered(self, answer: Any, request_id: int, tracked: bool) -> None:
        if tracked and self.running.pop(request_id, None) is None:
            return  # cancelled: the late answer is dropped
        if self.closed:
            return
        if isinstance(answer, (Response, ErrorResponse)):
            self.send(answer)
        else:  # a dispatcher broke its contract; never leave the caller waiting
            self.log.error("dispatcher answered {answer!r}", answer=answer)
            self.send(ErrorResponse(request_id, "internal", "dispatcher failed"))

    def close(self) -> None:
        """The connection is gone for good: cancel what still runs."""
        self.closed = True
        running, self.running = self.running, {}
        for d in running.values():
            d.cancel()
