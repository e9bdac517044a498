"""The aperture wire's protobuf messages <-> txloom's four reverse-RPC messages.

Sans-I/O: bytes of ``ClientToServer`` / ``ServerToClient`` in, ``txloom.wire.rpc`` messages
out, and back. Both transports of this package call only these functions, so everything
the two wires disagree on is settled here:

* A request's type name travels as ``Any.type_url`` (``type.googleapis.com/<name>``) and
  its payload as ``Any.value``; any URL prefix is accepted on the way in, as ``Any`` allows.
* The timeout is a ``google.protobuf.Duration``; txloom counts whole milliseconds.
* Errors are ``google.rpc.Status`` with gRPC's numeric codes (``STATUS_NUMBERS`` in
  ``txloom.rpc.errors``); a code txloom does not name is read as the closest one
  (``_CODE_FALLBACK``), else ``internal``.
* An error's ``details`` travel as one ``Any`` holding a ``google.protobuf.Value`` (any
  JSON-shaped value); details of other types arriving from a peer are kept as
  ``{"type_url": ..., "value": bytes}`` maps.
* The token of a hello is not in the message: it rides in the call's metadata
  (``TOKEN_METADATA_KEY``), so the transports add it.
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict, ParseDict
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

from txloom.rpc.errors import STATUS_NUMBERS
from txloom.rpc.grpc.proto.aperture.rpc.v1 import rpc_pb2
from txloom.wire.errors import LocalProtocolError
from txloom.wire.rpc import (
    Cancel,
    ErrorResponse,
    Hello,
    InvalidMessage,
    Request,
    Response,
)

__all__ = [
    "CODE_NAMES",
    "METHOD",
    "SERVICE",
    "TOKEN_METADATA_KEY",
    "TYPE_URL_PREFIX",
    "decode_client_message",
    "decode_server_message",
    "encode_client_message",
    "encode_server_message",
    "token_from_metadata",
    "token_metadata",
]

#: The gRPC service and the full path of its one method.
SERVICE = "aperture.rpc.v1.Coordinator"
METHOD = f"/{SERVICE}/Connect"
#: Prefix of ``Any.type_url`` written for a request's type name.
TYPE_URL_PREFIX = "type.googleapis.com/"
#: Call metadata carrying an agent's token, as ``Bearer <token>`` (gRPC's usual header).
TOKEN_METADATA_KEY = "authorization"

#: gRPC status code -> txloom error code (``STATUS_NUMBERS`` read backwards).
CODE_NAMES: dict[int, str] = {number: name for name, number in STATUS_NUMBERS.items()}
# gRPC codes txloom has no name for, read as the one a caller would act on the same way.
_CODE_FALLBACK = {7: "unauthenticated", 8: "unavailable", 10: "unavailable"}

_MAX_ID = 2**63  # txloom ids are non-negative and below 2**63 (CBOR's signed range)
_VALUE_TYPE_URL = TYPE_URL_PREFIX + "google.protobuf.Value"


def token_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata an agent sends for ``token`` (none without one)."""
    return () if token is None else ((TOKEN_METADATA_KEY, f"Bearer {token}"),)


def token_from_metadata(metadata: Any) -> str | None:
    """The token in a call's metadata pairs (``Bearer`` optional), or None."""
    for key, raw in metadata or ():
        if key.lower() == TOKEN_METADATA_KEY:
            value = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            scheme, _, rest = value.partition(" ")
            return rest if scheme.lower() == "bearer" and rest else value
    return None


# =============================================================================================
# Server -> client: Request, Cancel
# =============================================================================================


def encode_server_message(msg: Request | Cancel) -> bytes:
    """A ``ServerToClient`` carrying ``msg``, serialized."""
    out = rpc_pb2.ServerToClient()
    if isinstance(msg, Request):
        req = out.request
        req.id = msg.id
        req.timeout.seconds, millis = divmod(msg.timeout_ms, 1000)
        req.timeout.nanos = millis * 1_000_000
        req.payload.type_url = TYPE_URL_PREFIX + msg.type
        req.payload.value = msg.payload
    elif isinstance(msg, Cancel):
        out.cancel_id = msg.id
    else:
        raise LocalProtocolError(f"not a server-to-client message: {msg!r}")
    return out.SerializeToString()


def decode_server_message(data: bytes) -> Request | Cancel:
    """Parse a ``ServerToClient``; anything else raises ``InvalidMessage``."""
    msg = _parse(rpc_pb2.ServerToClient, data)
    which = msg.WhichOneof("command")
    if which == "cancel_id":
        return Cancel(_check_id(msg.cancel_id, "cancel_id"))
    if which != "request":
        raise InvalidMessage("ServerToClient carries neither a request nor a cancel")
    req = msg.request
    if not req.HasField("payload"):
        raise InvalidMessage("request has no payload (its type chooses the handler)")
    type_name = req.payload.type_url.rpartition("/")[2]
    if not type_name:
        raise InvalidMessage(f"request payload has no type name: {req.payload.type_url!r}")
    timeout = req.timeout
    if timeout.seconds < 0 or timeout.nanos < 0:
        raise InvalidMessage("request timeout is negative")
    return Request(
        _check_id(req.id, "request.id"),
        type_name,
        timeout.seconds * 1000 + math.ceil(timeout.nanos / 1_000_000),
        req.payload.value,
    )


# =============================================================================================
# Client -> server: Hello, Response, ErrorResponse
# =============================================================================================


def encode_client_message(msg: Hello | Response | ErrorResponse) -> bytes:
    """A ``ClientToServer`` carrying ``msg``, serialized (a hello's token is not in it)."""
    out = rpc_pb2.ClientToServer()
    if isinstance(msg, Hello):
        out.hello.name = msg.name
        out.hello.next_id = msg.next_id
    elif isinstance(msg, Response):
        out.response.id = msg.id
        out.response.payload = msg.payload
    elif isinstance(msg, ErrorResponse):
        out.response.id = msg.id
        out.response.error.CopyFrom(_status(msg))
    else:
        raise LocalProtocolError(f"not a client-to-server message: {msg!r}")
    return out.SerializeToString()


def decode_client_message(
    data: bytes, token: str | None = None
) -> Hello | Response | ErrorResponse:
    """Parse a ``ClientToServer``; a hello gets ``token`` (from the call's metadata)."""
    msg = _parse(rpc_pb2.ClientToServer, data)
    which = msg.WhichOneof("msg")
    if which == "hello":
        return Hello(msg.hello.name, _check_id(msg.hello.next_id, "hello.next_id"), token)
    if which != "response":
        raise InvalidMessage("ClientToServer carries neither a hello nor a response")
    resp = msg.response
    rid = _check_id(resp.id, "response.id")
    if resp.WhichOneof("result") == "error":
        error = resp.error
        return ErrorResponse(rid, _code_name(error.code), error.message, _details(error.details))
    # An unset result is an empty payload: proto3 writers may leave empty bytes out.
    return Response(rid, resp.payload)


def _parse(cls: Any, data: bytes) -> Any:
    msg = cls()
    try:
        msg.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        # RuntimeError: the protobuf runtime's nesting limit; ValueError: bad UTF-8 in a string.
        raise InvalidMessage(f"not a {cls.DESCRIPTOR.full_name}: {e}") from None
    return msg


def _check_id(value: int, where: str) -> int:
    if value >= _MAX_ID:
        raise InvalidMessage(f"{where} out of range ({value})")
    return value


def _code_name(code: int) -> str:
    name = CODE_NAMES.get(code) or _CODE_FALLBACK.get(code)
    return name if name is not None else "internal"


def _status(msg: ErrorResponse) -> status_pb2.Status:
    status = status_pb2.Status(code=STATUS_NUMBERS.get(msg.code, 13), message=msg.message)
    if msg.details is not None:
        value = struct_pb2.Value()
        try:
            ParseDict(msg.details, value)
        except Exception:
            # Not JSON-shaped (bytes, tags...): its text is the most a peer could use.
            value.string_value = repr(msg.details)
        status.details.add().Pack(value)
    return status


def _details(details: Any) -> Any:
    if not details:
        return None
    out: list[Any] = []
    for item in details:
        if item.type_url == _VALUE_TYPE_URL:
            value = struct_pb2.Value()
            if item.Unpack(value):
                out.append(_integral(MessageToDict(value)))
                continue
        out.append({"type_url": item.type_url, "value": bytes(item.value)})
    return out[0] if len(out) == 1 else out


def _integral(value: Any) -> Any:
    """JSON numbers come back as floats; whole ones were most likely ints when sent."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, list):
        return [_integral(v) for v in value]
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    return value
