"""Failures of a reverse-RPC call, as Python exceptions that carry the wire's error code.

Every failure a caller can see -- the agent's handler raised, no such agent, timed out, the
agent went away -- arrives as an ``RPCError`` whose ``code`` is one of
``txloom.wire.rpc.ERROR_CODES``. Each code has its own subclass, so callers may catch the
one they care about (``except NotFound``) or all of them (``except RPCError``). A handler
raises an ``RPCError`` to answer with a chosen code; anything else it raises is reported as
``internal`` with the exception's text (never a traceback on the wire).
"""

from __future__ import annotations

from typing import Any

from txloom.wire.rpc import ErrorResponse

__all__ = [
    "STATUS_NUMBERS",
    "Cancelled",
    "DeadlineExceeded",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "RPCError",
    "Unauthenticated",
    "Unavailable",
]


#: Error code -> its number where a wire wants numbers (gRPC's ``google.rpc.Code``): the
#: gRPC transport's status codes and the worker host's ``rpc`` service errors.
STATUS_NUMBERS: dict[str, int] = {
    "cancelled": 1,
    "invalid_argument": 3,
    "deadline_exceeded": 4,
    "not_found": 5,
    "internal": 13,
    "unavailable": 14,
    "unauthenticated": 16,
}


class RPCError(Exception):
    """A call failed with ``code`` (see the module doc)."""

    #: The code a subclass stands for; ``RPCError`` itself takes any code given.
    default_code = "internal"

    def __init__(self, code: str | None = None, message: str = "", details: Any = None) -> None:
        super().__init__(message)
        self.code = code if code is not None else self.default_code
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.message else self.code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RPCError):
            return NotImplemented
        return (self.code, self.message, self.details) == (other.code, other.message, other.details)

    __hash__ = Exception.__hash__

    @staticmethod
    def from_code(code: str, message: str = "", details: Any = None) -> RPCError:
        """The subclass for ``code`` (plain ``RPCError`` for a code txloom does not know)."""
        cls = _BY_CODE.get(code)
        if cls is None:
            return RPCError(code, message, details)
        return cls(message, details)

    @staticmethod
    def from_response(response: ErrorResponse) -> RPCError:
        return RPCError.from_code(response.code, response.message, response.details)

    def to_response(self, request_id: int) -> ErrorResponse:
        return ErrorResponse(request_id, self.code, self.message, self.details)


class _Coded(RPCError):
    """An error of one fixed code: ``NotFound("no agent named x")``."""

    def __init__(self, message: str = "", details: Any = None) -> None:
        super().__init__(self.default_code, message, details)


class Unavailable(_Coded):
    """The agent has no handler for the request's type, or cannot take more calls."""

    default_code = "unavailable"


class InvalidArgument(_Coded):
    """A payload that does not decode, or a name or hello that is not acceptable."""

    default_code = "invalid_argument"


class Internal(_Coded):
    """The handler raised; the message is the exception's text."""

    default_code = "internal"


class NotFound(_Coded):
    """No agent of that name is connected."""

    default_code = "not_found"


class DeadlineExceeded(_Coded, TimeoutError):
    """The call timed out (the agent was sent a cancel)."""

    default_code = "deadline_exceeded"


class Cancelled(_Coded):
    """The agent disconnected or was replaced, or the caller cancelled the call."""

    default_code = "cancelled"


class Unauthenticated(_Coded):
    """The agent's token was refused."""

    default_code = "unauthenticated"


_BY_CODE: dict[str, type[_Coded]] = {
    cls.default_code: cls
    for cls in (
        Unavailable,
        InvalidArgument,
        Internal,
        NotFound,
        DeadlineExceeded,
        Cancelled,
        Unauthenticated,
    )
}
