"""The agent side: run the handler a request names, and always answer.

A transport hands each ``Request`` to ``Dispatcher.dispatch`` and sends back what the
returned Deferred fires with: a ``Response`` or an ``ErrorResponse``, never a failure.
Cancelling that Deferred (the controller sent ``cancel``, or the session is gone) cancels
the handler itself: its Deferred is cancelled, or its coroutine has ``CancelledError``
thrown in at its current ``await``. A request's own ``timeout_ms`` is enforced here too, on
an injectable clock, so a handler never outlives the caller's interest by more than
``DEADLINE_GRACE`` even when the controller's cancel is lost.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txloom.interfaces import IRPCDispatcher
from txloom.rpc.codecs import encode_value
from txloom.rpc.deadlines import Deadlines
from txloom.rpc.errors import Cancelled, DeadlineExceeded, Internal, RPCError, Unavailable
from txloom.rpc.handlers import HandlerRegistry
from txloom.wire.rpc import ErrorResponse, Request, Response

__all__ = ["DEADLINE_GRACE", "Dispatcher"]

#: Seconds a handler may run past its request's timeout before the agent cancels it itself
#: (the controller has given up by then and normally sent ``cancel`` already).
DEADLINE_GRACE = 1.0

Answer = Response | ErrorResponse


@implementer(IRPCDispatcher)
class Dispatcher:
    """Runs requests against a ``HandlerRegistry`` (see the module doc)."""

    log = Logger()

    def __init__(
        self,
        handlers: HandlerRegistry,
        clock: Any = None,
        deadline_grace: float = DEADLINE_GRACE,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # noqa: PLC0415 - the installed one
        self.handlers = handlers
        self.clock = clock
        self.deadline_grace = deadline_grace
        self._deadlines = Deadlines(clock)
        #: Requests running now (for stats and tests).
        self.running = 0

    def dispatch(self, request: Request) -> Deferred[Answer]:
        registration = self.handlers.lookup(request.type)
        if registration is None:
            error = Unavailable(f"no handler for {request.type!r}")
            return succeed(error.to_response(request.id))
        try:
            argument = registration.codec.decode(request.payload)
            result = registration.handler(argument)
        except RPCError as e:
            return succeed(e.to_response(request.id))
        except Exception as e:
            return succeed(_internal(request, registration.type_name, e))
        if isinstance(result, asyncio.Future):
            result = Deferred.fromFuture(result)
        elif inspect.isawaitable(result) and not isinstance(result, Deferred):
            result = ensureDeferred(result)
        if not isinstance(result, Deferred):
            return succeed(_answer(request, result))
        return self._running(request, registration.type_name, result)

    def _running(self, request: Request, type_name: str, work: Deferred[Any]) -> Deferred[Answer]:
        self.running += 1
        expired = False

        def cancel(_: Deferred[Answer]) -> None:
            work.cancel()
            if not answer.called:  # the handler ignored its cancellation: answer anyway
                answer.callback(Cancelled("cancelled").to_response(request.id))

        answer: Deferred[Answer] = Deferred(cancel)

        def expire() -> None:
            nonlocal expired
            if not answer.called:
                expired = True
                work.cancel()

        if request.timeout_ms > 0:
            self._deadlines.after(request.timeout_ms / 1000 + self.deadline_grace, expire)

        def done(result: Any) -> None:
            self.running -= 1
            if isinstance(result, Failure):
                if result.check(CancelledError):
                    err: RPCError = (
                        DeadlineExceeded("handler timed out") if expired else Cancelled("cancelled")
                    )
                    out: Answer = err.to_response(request.id)
                elif result.check(RPCError):
                    out = result.value.to_response(request.id)
                else:
                    out = _internal(request, type_name, result.value)
            else:
                try:
                    out = _answer(request, result)
                except Exception as e:
                    out = _internal(request, type_name, e)
            if not answer.called:
                answer.callback(out)

        work.addBoth(done)
        return answer


def _answer(request: Request, result: Any) -> Answer:
    return Response(request.id, encode_value(result))


def _internal(request: Request, type_name: str, error: BaseException) -> ErrorResponse:
    Dispatcher.log.debug("handler for {type} failed: {error!r}", type=type_name, error=error)
    message = str(error) or type(error).__name__
    return Internal(message).to_response(request.id)
