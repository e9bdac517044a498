"""Error categories and codes carried by ``[id, 1, [[category, code], reason]]``.

Category 42 is the application's (the protocol fixes codes 100 and 200). The other
categories are txloom's own: Cocaine numbers its categories at run time, so peers compare
the reason text rather than the numbers, and clients of txloom match on the exception
classes below.
"""

from __future__ import annotations

from typing import ClassVar

#: Protocol-level mistakes on a service connection.
DISPATCH = 1
UNKNOWN_METHOD = 1
CLOSED_CHANNEL = 2
BAD_ARGUMENTS = 3
NOT_IMPLEMENTED = 4

#: The Locator.
LOCATOR = 2
SERVICE_NOT_AVAILABLE = 1

#: The engine (pool, sessions, workers).
ENGINE = 3
QUEUE_FULL = 1
WORKER_DISCARDED = 2
WORKER_LOST = 3
TIMEOUT = 4
APP_BROKEN = 5
SHUTTING_DOWN = 6
CLIENT_DISCONNECTED = 7
CONNECTION_LOST = 8
BAD_HTTP_REPLY = 9
#: The caller did not read the replies: more than backlog-limit bytes were waiting for it.
CLIENT_TOO_SLOW = 10
#: A reload found a manifest it cannot use; the apps running before go on unchanged.
RELOAD_REFUSED = 11

#: Engine errors that mean "the engine has given up on this session": a worker stops
#: working on it (txloom's worker library cancels the response).
CANCELLING = frozenset(
    {(ENGINE, CLIENT_DISCONNECTED), (ENGINE, CLIENT_TOO_SLOW), (ENGINE, TIMEOUT)}
)

#: Errors raised by an app's own code.
APPLICATION = 42
UNCAUGHT_EXCEPTION = 100
NO_HANDLER = 200


class ServiceError(Exception):
    """An error reply from a service, or a local failure reported the same way."""

    kinds: ClassVar[dict[tuple[int, int], type[ServiceError]]] = {}
    key: ClassVar[tuple[int, int] | None] = None

    def __init_subclass__(cls, **kw: object) -> None:
        super().__init_subclass__(**kw)
        if cls.key is not None:
            ServiceError.kinds[cls.key] = cls

    def __init__(self, category: int, code: int, reason: str) -> None:
        super().__init__(f"[{category}, {code}] {reason}")
        self.category = category
        self.code = code
        self.reason = reason

    @staticmethod
    def from_wire(args: list[object]) -> ServiceError:
        """Build the most specific exception for the arguments of an error message."""
        try:
            (category, code), reason = args  # type: ignore[misc]
            category, code = int(category), int(code)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return ServiceError(DISPATCH, BAD_ARGUMENTS, f"malformed error message {args!r:.80}")
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        cls = ServiceError.kinds.get((category, code), ServiceError)
        return cls(category, code, str(reason))


class ServiceNotAvailable(ServiceError):
    key = (LOCATOR, SERVICE_NOT_AVAILABLE)


class QueueFull(ServiceError):
    key = (ENGINE, QUEUE_FULL)


class WorkerDiscarded(ServiceError):
    key = (ENGINE, WORKER_DISCARDED)


class WorkerLost(ServiceError):
    key = (ENGINE, WORKER_LOST)


class RequestTimeout(ServiceError):
    key = (ENGINE, TIMEOUT)


class AppBroken(ServiceError):
    key = (ENGINE, APP_BROKEN)


class ShuttingDown(ServiceError):
    key = (ENGINE, SHUTTING_DOWN)


class ConnectionLost(ServiceError):
    key = (ENGINE, CONNECTION_LOST)


class ClientTooSlow(ServiceError):
    key = (ENGINE, CLIENT_TOO_SLOW)


class ReloadRefused(ServiceError):
    key = (ENGINE, RELOAD_REFUSED)


class NoHandler(ServiceError):
    key = (APPLICATION, NO_HANDLER)


class UncaughtException(ServiceError):
    key = (APPLICATION, UNCAUGHT_EXCEPTION)


class UnknownMethod(ServiceError):
    key = (DISPATCH, UNKNOWN_METHOD)
