"""Error codes of the store protocol and the exception clients raise for them.

The reference server answers most failures with a generic internal error carrying a Ruby
backtrace; txloom names each failure so that a client can act on it (retry on
``overloaded``, page on ``frame_too_large``, fix the caller on ``invalid_fact``).
"""

from __future__ import annotations

from typing import Any

UNKNOWN_OP = "unknown_op"
INVALID_FACT = "invalid_fact"
INVALID_REQUEST = "invalid_request"
FRAME_TOO_LARGE = "frame_too_large"
BAD_FRAME = "bad_frame"
UNAUTHORIZED = "unauthorized"
OVERLOADED = "overloaded"
STORAGE_FAILED = "storage_failed"
INTERNAL_ERROR = "internal_error"

#: Every code the server may answer with.
ERROR_CODES = frozenset(
    {
        UNKNOWN_OP,
        INVALID_FACT,
        INVALID_REQUEST,
        FRAME_TOO_LARGE,
        BAD_FRAME,
        UNAUTHORIZED,
        OVERLOADED,
        STORAGE_FAILED,
        INTERNAL_ERROR,
    }
)


class StoreError(Exception):
    """A request failed: the server answered ``ok: false``, or the connection is gone.

    ``code`` is one of the protocol's error codes, or ``None`` when the failure is local
    (connection refused, closed before the answer).
    """

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message if code is None else f"{code}: {message}")
        self.code = code
        self.message = message

    @classmethod
    def from_response(cls, response: dict[str, Any]) -> StoreError:
        """The exception for a response without ``ok: true``."""
        code = response.get("error_code")
        message = response.get("error")
        return cls(
            str(message) if message is not None else f"request failed: {response!r}",
            code if isinstance(code, str) else None,
        )


class StoreConnectionError(StoreError):
    """The connection failed or closed before the answer arrived."""


class StorageFailure(Exception):
    """A backend could not do what it was asked: the disk refused a write or an fsync.

    Raised by (or failing the Deferreds of) ``IStorageBackend`` methods; the server
    answers ``storage_failed`` and goes on serving reads. A backend that raises it for a
    write refuses further writes until it has repaired itself (see ``StoreBackend``).
    """


class OperationFailed(StorageFailure):
    """A backend operation failed before it changed anything (a snapshot file that could
    not be written): only that operation fails, and writes go on."""


class RequestError(Exception):
    """Raised inside the server by an op handler: becomes an error response."""

    def __init__(self, code: str, message: str, close: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        #: Close the connection after answering (auth failures, broken frames).
        self.close = close


def error_response(code: str, message: str) -> dict[str, Any]:
    """The error body; ``request_id`` is added by the caller when the request had one."""
    return {"ok": False, "error_code": code, "error": message}
