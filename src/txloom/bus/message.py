"""Messages: what pods send, what the bus delivers and what the mesh carries.

A ``Message`` is a plain mutable record (as in Grav, where ``SetReplyTo`` exists) whose
wire form is the Grav message JSON. The timestamp is kept as integer nanoseconds plus the
zone offset it was written with, because Go nodes send nanoseconds and a Python
``datetime`` would silently cut them to microseconds; ``timestamp`` gives the ``datetime``
view for code that wants one.

Treat a message as frozen once sent: the same object is handed to every receiving pod.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from txloom.wire import grav
from txloom.wire.grav import DEFAULT_MSG_TYPE, WEBSOCKET_MSG_TYPE

__all__ = ["DEFAULT_MSG_TYPE", "WEBSOCKET_MSG_TYPE", "Message", "new_uuid"]

_urandom = os.urandom
_time_ns = time.time_ns
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def new_uuid() -> str:
    """A random (version 4) UUID string; about twice as fast as ``str(uuid.uuid4())``."""
    b = bytearray(_urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _as_bytes(data: Any) -> bytes:
    if data is None:
        return b""
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"message data must be bytes or str, not {type(data).__name__}")


class Message:
    """One bus message: ``uuid``, ``parent_id``, ``response_to``, ``msg_type``, a timestamp
    and ``data`` bytes.

    ``timestamp_ns`` is nanoseconds since the Unix epoch (UTC) and ``utc_offset`` the zone
    offset in minutes the time is shown at (0 for messages made here).

    ``data`` is always bytes; ``data_null`` says it is Go's nil rather than an empty slice
    (the wire writes ``null`` instead of ``""``): true when a message is made without data
    or arrives with ``"data":null``.
    """

    __slots__ = (
        "data",
        "data_null",
        "msg_type",
        "parent_id",
        "response_to",
        "timestamp_ns",
        "utc_offset",
        "uuid",
    )

    def __init__(
        self,
        msg_type: str = DEFAULT_MSG_TYPE,
        data: bytes | str | None = None,
        *,
        uuid: str | None = None,
        parent_id: str = "",
        response_to: str = "",
        timestamp_ns: int | None = None,
        utc_offset: int = 0,
    ) -> None:
        self.uuid = uuid if uuid is not None else new_uuid()
        self.parent_id = parent_id
        self.response_to = response_to
        self.msg_type = msg_type
        self.timestamp_ns = timestamp_ns if timestamp_ns is not None else _time_ns()
        self.utc_offset = utc_offset
        self.data = data if type(data) is bytes else _as_bytes(data)
        self.data_null = data is None

    # -- constructors named as Grav names them ------------------------------------------------

    @classmethod
    def new(cls, msg_type: str = DEFAULT_MSG_TYPE, data: bytes | str | None = None) -> Message:
        """A fresh message (Grav's ``NewMsg``)."""
        return cls(msg_type, data)

    @classmethod
    def new_with_parent_id(
        cls, msg_type: str, parent_id: str, data: bytes | str | None = None
    ) -> Message:
        """A fresh message tied to a parent event, e.g. an HTTP request id."""
        return cls(msg_type, data, parent_id=parent_id)

    @classmethod
    def new_reply_to(
        cls, msg_type: str, response_to: str, data: bytes | str | None = None
    ) -> Message:
        """A fresh message answering the message whose uuid is ``response_to``."""
        return cls(msg_type, data, response_to=response_to)

    @classmethod
    def from_fields(cls, fields: grav.MessageFields) -> Message:
        msg = cls.__new__(cls)
        (
            msg.uuid,
            msg.parent_id,
            msg.response_to,
            msg.msg_type,
            msg.timestamp_ns,
            msg.utc_offset,
            msg.data,
            _,
            msg.data_null,
        ) = fields
        return msg

    @classmethod
    def foreign(cls, data: bytes) -> Message:
        """The ``websocket.message`` a node makes of a peer's frame that is not a message."""
        return cls(WEBSOCKET_MSG_TYPE, data)

    # -- wire form ---------------------------------------------------------------------------

    @classmethod
    def from_json(cls, data: bytes | bytearray | memoryview | str) -> Message:
        """Parse the Grav message JSON; raises ``txloom.wire.grav.NotAMessage``."""
        return cls.from_fields(grav.decode_message(data))

    def to_json(self) -> bytes:
        """The Grav message JSON, byte for byte as a Go node writes it."""
        return grav.encode_message(self)

    # -- views -------------------------------------------------------------------------------

    @property
    def timestamp(self) -> datetime:
        """The time as an aware ``datetime`` (to the microsecond) in the sender's zone."""
        tz = timezone.utc if not self.utc_offset else timezone(timedelta(minutes=self.utc_offset))
        return (_EPOCH + timedelta(microseconds=self.timestamp_ns // 1000)).astimezone(tz)

    @property
    def timestamp_text(self) -> str:
        """The RFC 3339 form that goes on the wire (with nanoseconds)."""
        return grav.format_timestamp(self.timestamp_ns, self.utc_offset)

    def _key(self) -> tuple:
        return (
            self.uuid,
            self.parent_id,
            self.response_to,
            self.msg_type,
            self.timestamp_ns,
            self.utc_offset,
            self.data,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        extra = ""
        if self.parent_id:
            extra += f" parent_id={self.parent_id!r}"
        if self.response_to:
            extra += f" response_to={self.response_to!r}"
        data = self.data if len(self.data) <= 32 else self.data[:32] + b"..."
        return f"<Message {self.msg_type!r} {self.uuid}{extra} data={data!r}>"
