"""One Grav mesh connection as a sans-I/O decoder: WebSocket messages in, events out.

The codec of every frame is ``txloom.wire.grav``; this is the state a connection goes
through (handshake, open, closed) and the events the transport acts on.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Any

from txloom.wire.decoder import NEED_DATA, Decoder, ReceiveBuffer
from txloom.wire.errors import FrameTooLarge, LocalProtocolError
from txloom.wire.grav import (
    WITHDRAW,
    WITHDRAW_ACK,
    BadHandshake,
    Handshake,
    HandshakeReply,
    MessageFields,
    NotAMessage,
    decode_handshake,
    decode_handshake_reply,
    decode_message,
    encode_handshake,
    encode_handshake_reply,
    refusal,
)

__all__ = [
    "MAX_FRAME_SIZE",
    "Event",
    "ForeignFrame",
    "GravSession",
    "MessageFrame",
    "Role",
    "SessionState",
    "Withdraw",
    "WithdrawAck",
]


class Role(enum.Enum):
    DIALLER = "dialler"
    LISTENER = "listener"


class SessionState(enum.Enum):
    AWAITING_HANDSHAKE = "awaiting handshake"  # listener, before the peer said who it is
    AWAITING_REPLY = "awaiting reply"  # dialler, handshake sent
    DECIDING = "deciding"  # listener, handshake received, not yet answered
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class MessageFrame:
    """A message from the peer."""

    fields: MessageFields


@dataclass(frozen=True, slots=True)
class ForeignFrame:
    """Bytes from the peer that are not a message (they become a ``websocket.message``)."""

    data: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class Withdraw:
    """The peer leaves the mesh: stop sending to it."""


@dataclass(frozen=True, slots=True)
class WithdrawAck:
    """The peer saw our withdraw."""


Event = Handshake | HandshakeReply | MessageFrame | ForeignFrame | Withdraw | WithdrawAck


#: Largest WebSocket message a session takes (the mesh's default ``max_message_size``).
MAX_FRAME_SIZE = 16 * 1024 * 1024


class GravSession(Decoder):
    """One mesh connection's protocol state, in frames and events (no I/O).

    It has the shape of every txloom decoder (``txloom.wire.decoder``), with one
    difference: the WebSocket framing belongs to the transport, so ``receive_data`` takes
    one whole WebSocket message (and whether it was binary) rather than a slice of a byte
    stream. ``next_event`` then returns the event it makes, ``NEED_DATA`` when none is
    queued, and ``ConnectionClosed`` after ``receive_eof``; a frame over ``max_frame_size``
    (declared up front) raises ``FrameTooLarge``. The transport writes the bytes the other
    methods return (binary frames, except the withdraw words, which go out as text).

    A listener gets a ``Handshake`` event first and must answer it with ``accept`` or
    ``refuse``; a dialler sends ``handshake()`` first and gets a ``HandshakeReply``. Once
    open, frames become ``MessageFrame``, ``ForeignFrame``, ``Withdraw`` or ``WithdrawAck``
    events. Errors before the session is open raise ``BadHandshake`` and are sticky; after
    that nothing a peer sends is an error (Grav turns unknown frames into
    ``websocket.message`` messages). Frames that arrive once the session is closed are
    dropped.
    """

    def __init__(
        self,
        role: Role,
        node_uuid: str,
        belongs_to: str = "*",
        *,
        max_frame_size: int = MAX_FRAME_SIZE,
    ) -> None:
        super().__init__()
        self.role = role
        self.node_uuid = node_uuid
        self.belongs_to = belongs_to
        self.max_frame_size = max_frame_size
        #: The peer's handshake (listener) or reply (dialler), once received.
        self.peer: Handshake | HandshakeReply | None = None
        self.state = (
            SessionState.AWAITING_HANDSHAKE
            if role is Role.LISTENER
            else SessionState.AWAITING_REPLY
        )
        #: The peer said WITHDRAW: nothing more is to be sent to it.
        self.peer_withdrawn = False
        self._frames: deque[tuple[bytes, bool]] = deque()
        self._queued = 0

    @property
    def peer_uuid(self) -> str | None:
        return self.peer.uuid if self.peer is not None else None

    @property
    def pending(self) -> int:
        """Bytes of frames received and not yet turned into events."""
        return self._queued

    @property
    def in_frame(self) -> bool:
        return False  # frames arrive whole

    def handshake(self, interests: tuple[str, ...] = ()) -> bytes:
        """The dialler's first frame."""
        if self.role is not Role.DIALLER:
            raise LocalProtocolError("only the dialling side sends a handshake")
        return encode_handshake(Handshake(self.node_uuid, self.belongs_to, interests))

    def accept(self, interests: tuple[str, ...] = ()) -> bytes:
        """The listener's yes; the session is open."""
        self._expect(SessionState.DECIDING, "accept")
        self.state = SessionState.OPEN
        return encode_handshake_reply(
            HandshakeReply(True, self.node_uuid, self.belongs_to, interests)
        )

    def refuse(self) -> bytes:
        """The listener's no; the caller closes the connection after sending it."""
        self._expect(SessionState.DECIDING, "refuse")
        self.state = SessionState.CLOSED
        return encode_handshake_reply(refusal(self.node_uuid))

    def _expect(self, state: SessionState, what: str) -> None:
        if self.state is not state:
            raise LocalProtocolError(f"cannot {what} in state {self.state.value}")

    def closed(self) -> None:
        self.state = SessionState.CLOSED

    def receive_data(self, data: bytes | bytearray | memoryview, binary: bool = True) -> None:
        """One whole WebSocket message from the peer (``binary`` False for a text one)."""
        if self._eof:
            raise LocalProtocolError("receive_data after the end of stream")
        if self._error is not None:
            return
        if len(data) > self.max_frame_size:
            self._error = FrameTooLarge(len(data), self.max_frame_size)
            return
        self._frames.append((bytes(data), binary))
        self._queued += len(data)

    def next_event(self) -> Any:
        if self._error is not None:
            raise self._error
        return super().next_event()

    def receive_frame(self, payload: bytes, is_binary: bool = True) -> Event | None:
        """``receive_data`` then ``next_event``: the event of one frame, None if none."""
        self.receive_data(payload, is_binary)
        event = self.next_event()
        return None if event is NEED_DATA else event

    def _decode(self, buffer: ReceiveBuffer) -> Any:
        while self._frames:
            payload, binary = self._frames.popleft()
            self._queued -= len(payload)
            event = self._event(payload, binary)
            if event is not None:
                return event
        return NEED_DATA

    def _event(self, payload: bytes, is_binary: bool) -> Event | None:
        state = self.state
        if state is SessionState.OPEN:
            if not is_binary:
                if payload == WITHDRAW:
                    self.peer_withdrawn = True
                    return Withdraw()
                if payload == WITHDRAW_ACK:
                    return WithdrawAck()
            try:
                return MessageFrame(decode_message(payload))
            except NotAMessage as e:
                return ForeignFrame(payload, str(e))
        if state is SessionState.AWAITING_HANDSHAKE:
            hs = decode_handshake(payload)
            self.peer = hs
            self.state = SessionState.DECIDING
            return hs
        if state is SessionState.AWAITING_REPLY:
            reply = decode_handshake_reply(payload)
            self.peer = reply
            self.state = SessionState.OPEN if reply.accept else SessionState.CLOSED
            return reply
        if state is SessionState.DECIDING:
            raise BadHandshake("peer sent a frame before its handshake was answered")
        return None
