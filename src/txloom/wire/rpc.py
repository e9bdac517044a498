"""Reverse-RPC messages: CBOR maps, framed with a u32 big-endian length on streams.

Four messages go between a server and its clients (``docs`` in ``specs/reverse-rpc``):
``hello`` and ``response`` up, ``request`` and ``cancel`` down. Every transport carries the
same messages: the stream transport frames each one, the HTTP transports put a CBOR array
of them in a request or response body (``encode_batch`` / ``decode_batch``). Decoding
checks every field's type, so the layers above never see a malformed message.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import cbor2

from txloom.wire.errors import LocalProtocolError, RemoteProtocolError
from txloom.wire.framing import U32_BE, LengthPrefixDecoder, encode_length_prefixed

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "ERROR_CODES",
    "Cancel",
    "ErrorResponse",
    "Hello",
    "InvalidMessage",
    "Message",
    "Request",
    "Response",
    "RpcStreamDecoder",
    "decode_batch",
    "decode_message",
    "encode_batch",
    "encode_frame",
    "encode_message",
]

#: Largest frame on the stream transport (and largest HTTP body) by default: 16 MiB.
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024

#: The error codes a response or a failed call may carry.
ERROR_CODES = frozenset(
    {
        "unavailable",
        "invalid_argument",
        "internal",
        "not_found",
        "deadline_exceeded",
        "cancelled",
        "unauthenticated",
    }
)


class InvalidMessage(RemoteProtocolError):
    """A well-framed body that is not one of the four messages."""


@dataclass(frozen=True, slots=True)
class Hello:
    """First message of a client: who it is and where its request ids start."""

    name: str
    next_id: int
    token: str | None = None


@dataclass(frozen=True, slots=True)
class Request:
    """The server asks the client to run the handler registered for ``type``."""

    id: int
    type: str
    timeout_ms: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Cancel:
    """The server gives up on request ``id``; the client cancels its handler."""

    id: int


@dataclass(frozen=True, slots=True)
class Response:
    """A handler's result."""

    id: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """A handler's failure, or the client's refusal to run it."""

    id: int
    code: str
    message: str
    details: Any = None


Message = Hello | Request | Cancel | Response | ErrorResponse


def _to_map(msg: Message) -> dict[str, Any]:
    if isinstance(msg, Hello):
        hello: dict[str, Any] = {"name": msg.name, "next_id": msg.next_id}
        if msg.token is not None:
            hello["token"] = msg.token
        return {"hello": hello}
    if isinstance(msg, Request):
        return {
            "request": {
                "id": msg.id,
                "type": msg.type,
                "timeout_ms": msg.timeout_ms,
                "payload": msg.payload,
            }
        }
    if isinstance(msg, Cancel):
        return {"cancel": msg.id}
    if isinstance(msg, Response):
        return {"response": {"id": msg.id, "payload": msg.payload}}
    if isinstance(msg, ErrorResponse):
        error: dict[str, Any] = {"code": msg.code, "message": msg.message}
        if msg.details is not None:
            error["details"] = msg.details
        return {"response": {"id": msg.id, "error": error}}
    raise LocalProtocolError(f"not a reverse-RPC message: {msg!r}")


def encode_message(msg: Message) -> bytes:
    """One message as a CBOR map."""
    try:
        return cbor2.dumps(_to_map(msg))
    except cbor2.CBOREncodeError as e:
        raise LocalProtocolError(f"cannot encode {type(msg).__name__}: {e}") from e


def encode_frame(msg: Message, max_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """One message framed for the stream transport."""
    return encode_length_prefixed(U32_BE, encode_message(msg), max_size)


def encode_batch(msgs: Iterable[Message]) -> bytes:
    """Several messages as one CBOR array (an HTTP transport's body)."""
    return cbor2.dumps([_to_map(m) for m in msgs])


def _field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise InvalidMessage(f"{where} has no {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidMessage(f"{where}.{key} has the wrong type ({type(value).__name__})")
    return value


def _id(obj: dict[str, Any], where: str) -> int:
    value = _field(obj, "id", int, where)
    if isinstance(value, bool) or not 0 <= value < 2**63:
        raise InvalidMessage(f"{where}.id out of range")
    return value


def _from_map(obj: Any) -> Message:
    if not isinstance(obj, dict) or len(obj) != 1:
        raise InvalidMessage("a message is a map with exactly one key")
    ((kind, body),) = obj.items()
    if kind == "cancel":
        if isinstance(body, bool) or not isinstance(body, int) or not 0 <= body < 2**63:
            raise InvalidMessage("cancel takes a request id")
        return Cancel(body)
    if not isinstance(body, dict):
        raise InvalidMessage(f"{kind!r} must hold a map")
    if kind == "hello":
        token = body.get("token")
        if token is not None and not isinstance(token, str):
            raise InvalidMessage("hello.token must be a string")
        next_id = _field(body, "next_id", int, "hello")
        if isinstance(next_id, bool) or not 0 <= next_id < 2**63:
            raise InvalidMessage("hello.next_id out of range")
        return Hello(_field(body, "name", str, "hello"), next_id, token)
    if kind == "request":
        timeout = _field(body, "timeout_ms", int, "request")
        if isinstance(timeout, bool) or timeout < 0:
            raise InvalidMessage("request.timeout_ms must be a non-negative integer")
        return Request(
            _id(body, "request"),
            _field(body, "type", str, "request"),
            timeout,
            bytes(_field(body, "payload", (bytes, bytearray), "request")),
        )
    if kind == "response":
        rid = _id(body, "response")
        if "error" in body:
            error = _field(body, "error", dict, "response")
            return ErrorResponse(
                rid,
                _field(error, "code", str, "response.error"),
                _field(error, "message", str, "response.error"),
                error.get("details"),
            )
        return Response(rid, bytes(_field(body, "payload", (bytes, bytearray), "response")))
    raise InvalidMessage(f"unknown message kind {kind!r}")


def _loads(body: bytes) -> Any:
    try:
        return cbor2.loads(body)
    except RecursionError:
        raise InvalidMessage("CBOR nests too deeply") from None
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, MemoryError) as e:
        raise InvalidMessage(f"not CBOR: {e}") from None


def decode_message(body: bytes) -> Message:
    """Parse and check one CBOR message body."""
    return _from_map(_loads(body))


def decode_batch(body: bytes) -> list[Message]:
    """Parse an HTTP transport's body: a CBOR array of messages."""
    items = _loads(body)
    if not isinstance(items, list):
        raise InvalidMessage("a batch is a CBOR array of messages")
    return [_from_map(item) for item in items]


class RpcStreamDecoder(LengthPrefixDecoder):
    """Message events out of a stream transport's bytes: any split, bounded frames.

    Events are the message dataclasses themselves (``Hello``, ``Request``, ...), then
    ``ConnectionClosed`` at a clean end (see ``txloom.wire.decoder``).
    """

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        super().__init__(U32_BE, max_frame_size)

    def _event(self, payload: bytes) -> Message:
        return decode_message(payload)
