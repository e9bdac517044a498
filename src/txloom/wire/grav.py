"""The Grav v0.5.x mesh wire: message JSON, node handshakes, withdraw words, discovery datagrams.

Everything a txloom bus node puts on a socket or reads from one lives here as pure functions;
the per-connection state machine that turns WebSocket frames into events is
``txloom.wire.grav_session.GravSession``. The
WebSocket framing itself belongs to the transport; a "frame" here is one whole WebSocket
message payload.

Byte-exactness with Go matters because Grav nodes are peers, and because a reader of a
packet capture should see the same bytes whichever implementation wrote them. So the encoder
writes fields in Go's struct order, escapes strings as Go's ``encoding/json`` does (HTML
characters and U+2028/U+2029 as ``\\u`` escapes) and formats timestamps as Go's
``time.Time`` marshals them: RFC 3339 with trailing zeros of the fraction trimmed and ``Z``
for a zero offset.
"""

from __future__ import annotations

import binascii
import json
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from txloom.wire import gojson
from txloom.wire.errors import LocalProtocolError, RemoteProtocolError
from txloom.wire.rfc3339 import (
    ZERO_TIME_NS,
    BadTimestamp,
    format_timestamp,
    parse_timestamp,
)

__all__ = [
    "DEFAULT_MSG_TYPE",
    "MAX_DATAGRAM_SIZE",
    "MAX_HOPS",
    "WEBSOCKET_MSG_TYPE",
    "WITHDRAW",
    "WITHDRAW_ACK",
    "ZERO_TIME_NS",
    "Announcement",
    "BadAnnouncement",
    "BadHandshake",
    "BadTimestamp",
    "GravError",
    "Handshake",
    "HandshakeReply",
    "MessageFields",
    "MessageLike",
    "NotAMessage",
    "decode_announcement",
    "decode_handshake",
    "decode_handshake_reply",
    "decode_message",
    "encode_announcement",
    "encode_handshake",
    "encode_handshake_reply",
    "encode_message",
    "format_timestamp",
    "parse_timestamp",
]

#: The type a message gets when its sender named none (Grav's ``grav.DefaultMsgType``).
DEFAULT_MSG_TYPE = "grav.default"

#: The type given to a frame from a peer that is not a message: its bytes become the data.
WEBSOCKET_MSG_TYPE = "websocket.message"

#: The text frame a node sends to leave the mesh politely, and the peer's answer.
WITHDRAW = b"WITHDRAW"
WITHDRAW_ACK = b"WITHDRAW ACK"

#: Largest hop count a relayed message may carry (txloom's relay extension; see ``hops``).
MAX_HOPS = 255

#: Largest discovery datagram read; Grav's are under 100 bytes.
MAX_DATAGRAM_SIZE = 1024


# =============================================================================================
# Errors
# =============================================================================================


class GravError(RemoteProtocolError):
    """Base of the errors a peer can cause on the Grav wire."""


class NotAMessage(GravError):
    """The bytes are not a message JSON object (a peer's frame then becomes a
    ``websocket.message``; a bridge drops it)."""


class BadHandshake(GravError):
    """The first frame of a connection is not a handshake (or its answer is not one)."""


class BadAnnouncement(GravError):
    """A discovery datagram that is not a node announcement."""


# =============================================================================================
# JSON helpers shared by every Grav object
# =============================================================================================

_go_str = gojson.quote


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_json_decoder = json.JSONDecoder(parse_constant=_refuse_constant)
_decode_json = _json_decoder.decode


def _load_object(data: bytes | bytearray | memoryview | str, error: type[GravError]) -> dict:
    try:
        text = data if type(data) is str else bytes(data).decode("utf-8")
        value = _decode_json(text)
    except UnicodeDecodeError as e:
        raise error(f"not UTF-8: {e.reason} at byte {e.start}") from None
    except RecursionError:
        raise error("JSON nests too deeply") from None
    except ValueError as e:
        raise error(f"not JSON: {e}") from None
    if type(value) is not dict:
        raise error(f"JSON {type(value).__name__}, not an object")
    return value


_clean = gojson.valid_text


def _opt_str(obj: dict, key: str, error: type[GravError], default: str = "") -> str:
    value = obj.get(key, default)
    if value is None:
        return default
    if type(value) is not str:
        raise error(f"{key!r} is a {type(value).__name__}, not a string")
    return _clean(value)


# =============================================================================================
# Messages
# =============================================================================================


class MessageFields(NamedTuple):
    """The fields of one message as they travel; ``hops`` is txloom's relay counter."""

    uuid: str
    parent_id: str
    response_to: str
    msg_type: str
    timestamp_ns: int
    utc_offset: int
    data: bytes
    hops: int = 0
    #: The data is Go's nil slice, written ``null`` (empty data that is not nil is ``""``).
    data_null: bool = False


class MessageLike(Protocol):
    """Anything with a message's fields: ``MessageFields``, ``txloom.bus.Message``."""

    uuid: str
    parent_id: str
    response_to: str
    msg_type: str
    timestamp_ns: int
    utc_offset: int
    data: bytes
    data_null: bool


def encode_message(m: MessageLike, hops: int = 0) -> bytes:
    """The message JSON, byte for byte as a Grav node marshals it.

    Data that is Go's nil (``data_null``) is written ``null``, other empty data ``""``.
    A non-zero ``hops`` (only on relayed frames) adds a ``"hops"`` member at the end of
    ``meta``; Go's decoder ignores members it does not know, so Grav nodes still read the
    message. Strings are escaped as Go escapes them (see ``txloom.wire.gojson``).
    """
    data = m.data
    s = _go_str
    meta = (
        '{"meta":{"uuid":'
        + s(m.uuid)
        + ',"parent_id":'
        + s(m.parent_id)
        + ',"response_to":'
        + s(m.response_to)
        + ',"msg_type":'
        + s(m.msg_type)
        + ',"timestamp":"'
        + format_timestamp(m.timestamp_ns, m.utc_offset)
    )
    if hops:
        if not 0 < hops <= MAX_HOPS:
            raise LocalProtocolError(f"hop count {hops} out of range")
        meta += f'","hops":{hops}'
    else:
        meta += '"'
    if data:
        payload = '},"payload":{"data":"' + binascii.b2a_base64(data, newline=False).decode()
        text = meta + payload + '"}}'
    elif m.data_null:
        text = meta + '},"payload":{"data":null}}'
    else:
        text = meta + '},"payload":{"data":""}}'
    return text.encode("utf-8")


_META_FIELDS = ("uuid", "parent_id", "response_to", "msg_type")
_GO_META_KEYS = (*_META_FIELDS, "timestamp")


def _as_go_wrote_it(top: object) -> MessageFields | None:
    """The fields of a frame laid out exactly as Go writes one (the common case), read
    without the general loop; None for any other layout."""
    if type(top) is not gojson.JSONObject or len(top) != 2:
        return None
    (k1, meta), (k2, payload) = top
    if k1 != "meta" or k2 != "payload" or type(meta) is not gojson.JSONObject:
        return None
    if type(payload) is not gojson.JSONObject or len(meta) != 5 or len(payload) != 1:
        return None
    (ku, uuid), (kp, parent), (kr, reply), (km, msg_type), (kt, stamp) = meta
    ((kd, data),) = payload
    if (ku, kp, kr, km, kt) != _GO_META_KEYS or kd != "data":
        return None
    if not (type(uuid) is type(parent) is type(reply) is type(msg_type) is type(stamp) is str):
        return None  # nulls, escapes, other types: the general path decides
    if data is not None and type(data) is not str:
        return None
    try:
        ns, offset = parse_timestamp(stamp)
        raw = b"" if data is None else gojson.decode_base64(data)
    except (BadTimestamp, gojson.GoJSONError):
        return None
    return MessageFields(
        _clean(uuid),
        _clean(parent),
        _clean(reply),
        _clean(msg_type),
        ns,
        offset,
        raw,
        0,
        data is None,
    )


# The keys Go itself writes, found with one dict lookup before any case folding.
_EXACT = {n: n for n in ("meta", "payload", *_META_FIELDS, "timestamp", "hops", "data")}


def decode_message(frame: bytes | bytearray | memoryview | str) -> MessageFields:
    """Read a frame as a Grav node does (Go's ``json.Unmarshal`` into its message struct);
    raise ``NotAMessage`` where Go fails, and the frame becomes a ``websocket.message``.

    So ``{}``, ``null``, a frame with no ``meta`` or an empty uuid are messages with Go's
    zero values (empty strings, the zero time, nil data); keys match in any case; invalid
    UTF-8 in a string becomes U+FFFD; ``null`` leaves a field as it was; unknown members
    are ignored. A value of the wrong type, base64 Go would refuse, or a timestamp Go's
    ``time.Time`` would refuse fail the whole frame, as in Go. docs/bus.md has the table.
    txloom's own ``hops`` member, when it is not an integer within 0..``MAX_HOPS``, is
    taken as ``MAX_HOPS`` (Go ignores the member; such a message is delivered, never
    relayed).
    """
    try:
        top = gojson.loads(frame)
    except gojson.GoJSONError as e:
        raise NotAMessage(str(e)) from None
    fields = _as_go_wrote_it(top)
    if fields is not None:
        return fields
    strings = dict.fromkeys(_META_FIELDS, "")
    stamp: object = None
    hops = 0
    data: bytes | None = None
    if type(top) is not gojson.JSONObject:
        if top is not gojson.NULL:
            raise NotAMessage(f"JSON {type(top).__name__}, not an object")
        top = ()
    exact, fold, obj = _EXACT.get, gojson.field_name, gojson.JSONObject
    for key, value in top:
        name = exact(key) or fold(key)
        if name not in ("meta", "payload") or value is None:
            continue
        if type(value) is not obj:
            raise NotAMessage(f"{key!r} is a {type(value).__name__}, not an object")
        for inner_key, inner in value:
            field = exact(inner_key) or fold(inner_key)
            if name == "payload":
                if field == "data":
                    try:
                        data = gojson.decode_bytes_field(inner)
                    except gojson.GoJSONError as e:
                        raise NotAMessage(f"'payload.data': {e}") from None
            elif inner is None:
                continue  # Go: null leaves the field as it was
            elif field in strings:
                if type(inner) is not str and not isinstance(inner, str):
                    raise NotAMessage(f"{inner_key!r} is a {type(inner).__name__}, not a string")
                strings[field] = inner
            elif field == "timestamp":
                stamp = inner
            elif field == "hops":
                hops = inner if type(inner) is int and 0 <= inner <= MAX_HOPS else MAX_HOPS
    if stamp is None:
        ns, offset = ZERO_TIME_NS, 0
    elif not isinstance(stamp, str):
        raise NotAMessage(f"timestamp is a {type(stamp).__name__}, not a string")
    elif type(stamp) is not str:  # an EscapedString: Go parses the raw text, and fails
        raise NotAMessage(f"timestamp {stamp!r:.80} holds escapes, which Go does not read")
    else:
        try:
            ns, offset = parse_timestamp(stamp)
        except BadTimestamp as e:
            raise NotAMessage(str(e)) from None
    return MessageFields(
        _clean(strings["uuid"]),
        _clean(strings["parent_id"]),
        _clean(strings["response_to"]),
        _clean(strings["msg_type"]),
        ns,
        offset,
        data or b"",
        hops,
        data is None,
    )


# =============================================================================================
# Handshakes
# =============================================================================================


@dataclass(frozen=True, slots=True)
class Handshake:
    """What a dialling node says first: who it is and which group it belongs to."""

    uuid: str
    belongs_to: str
    interests: tuple[str, ...] | None = ()


@dataclass(frozen=True, slots=True)
class HandshakeReply:
    """The listening node's answer; on refusal it closes the connection."""

    accept: bool
    uuid: str
    belongs_to: str
    interests: tuple[str, ...] | None = ()


def _interests_json(interests: tuple[str, ...] | None) -> str:
    if interests is None:
        return "null"
    return "[" + ",".join(_go_str(i) for i in interests) + "]"


def encode_handshake(hs: Handshake) -> bytes:
    """``{"uuid":...,"belongsTo":...,"interests":[...]}``"""
    return (
        '{"uuid":'
        + _go_str(hs.uuid)
        + ',"belongsTo":'
        + _go_str(hs.belongs_to)
        + ',"interests":'
        + _interests_json(hs.interests)
        + "}"
    ).encode("utf-8")


def encode_handshake_reply(reply: HandshakeReply) -> bytes:
    """``{"accept":...,"uuid":...,"belongsTo":...,"interests":...}``"""
    return (
        '{"accept":'
        + ("true" if reply.accept else "false")
        + ',"uuid":'
        + _go_str(reply.uuid)
        + ',"belongsTo":'
        + _go_str(reply.belongs_to)
        + ',"interests":'
        + _interests_json(reply.interests)
        + "}"
    ).encode("utf-8")


def refusal(node_uuid: str) -> HandshakeReply:
    """The refusal exactly as a Grav node sends it (empty group, null interests)."""
    return HandshakeReply(False, node_uuid, "", None)


def _interests(obj: dict) -> tuple[str, ...] | None:
    value = obj.get("interests")
    if value is None:
        return None
    if type(value) is not list or any(type(i) is not str for i in value):
        raise BadHandshake("'interests' is not a list of strings")
    return tuple(_clean(i) for i in value)


def decode_handshake(frame: bytes | bytearray | memoryview | str) -> Handshake:
    obj = _load_object(frame, BadHandshake)
    uuid = obj.get("uuid")
    if type(uuid) is not str or not uuid:
        raise BadHandshake("handshake has no node uuid")
    if "accept" in obj:
        raise BadHandshake("a handshake reply where a handshake was expected")
    return Handshake(_clean(uuid), _opt_str(obj, "belongsTo", BadHandshake), _interests(obj))


def decode_handshake_reply(frame: bytes | bytearray | memoryview | str) -> HandshakeReply:
    obj = _load_object(frame, BadHandshake)
    accept = obj.get("accept")
    if type(accept) is not bool:
        raise BadHandshake("handshake reply has no boolean 'accept'")
    uuid = obj.get("uuid", "")
    if type(uuid) is not str or (accept and not uuid):
        raise BadHandshake("handshake reply has no node uuid")
    return HandshakeReply(
        accept, _clean(uuid), _opt_str(obj, "belongsTo", BadHandshake), _interests(obj)
    )


def groups_match(local: str, peer: str) -> bool:
    """Grav's rule: a peer is accepted when its group equals ours or is ``"*"``."""
    return peer in (local, "*")


# =============================================================================================
# Local discovery datagrams
# =============================================================================================


@dataclass(frozen=True, slots=True)
class Announcement:
    """What a node multicasts so that others on the LAN can dial it."""

    uuid: str
    port: int
    path: str


def encode_announcement(ann: Announcement) -> bytes:
    """``{"uuid":...,"port":"8080","path":"/meta/message"}`` (the port is a string, as in Grav)."""
    if not 0 < ann.port < 65536:
        raise LocalProtocolError(f"port {ann.port} out of range")
    return (
        '{"uuid":'
        + _go_str(ann.uuid)
        + ',"port":"'
        + str(ann.port)
        + '","path":'
        + _go_str(ann.path)
        + "}"
    ).encode("utf-8")


def decode_announcement(datagram: bytes) -> Announcement:
    if len(datagram) > MAX_DATAGRAM_SIZE:
        raise BadAnnouncement(f"datagram of {len(datagram)} bytes is too large")
    obj = _load_object(datagram, BadAnnouncement)
    uuid = obj.get("uuid")
    if type(uuid) is not str or not uuid:
        raise BadAnnouncement("announcement has no node uuid")
    port = obj.get("port")
    if type(port) is str and port.isascii() and port.isdigit() and len(port) <= 5:
        port = int(port)
    if type(port) is not int or not 0 < port < 65536:
        raise BadAnnouncement(f"announcement port {obj.get('port')!r:.20} is not a port")
    path = obj.get("path", "")
    if type(path) is not str or not path.startswith("/") or not path.isprintable():
        raise BadAnnouncement("announcement path is not an absolute path")
    return Announcement(_clean(uuid), port, path)
