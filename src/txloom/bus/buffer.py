"""The replay ring: the last N messages that crossed the bus, for pods connected with replay."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

from txloom.bus.message import Message

__all__ = ["DEFAULT_REPLAY_SIZE", "MsgBuffer"]

#: Messages kept for replay (Grav keeps 128).
DEFAULT_REPLAY_SIZE = 128


class MsgBuffer:
    """A bounded ring of ``(message, sender)`` pairs, oldest first.

    The sender (an opaque token, the sending pod in practice) is kept beside each message so
    that a replay never hands a pod what it sent itself; the ring never holds more than
    ``size`` entries, whatever the traffic.
    """

    __slots__ = ("_ring", "size")

    def __init__(self, size: int = DEFAULT_REPLAY_SIZE) -> None:
        if size < 0:
            raise ValueError("replay buffer size must not be negative")
        self.size = size
        self._ring: deque[tuple[Message, object]] = deque(maxlen=size)

    def push(self, msg: Message, sender: object = None) -> None:
        self._ring.append((msg, sender))

    def extend(self, msgs: Iterable[Message], senders: Iterable[object]) -> None:
        """Add a batch (the bus's hot path: one C-level call per batch)."""
        self._ring.extend(zip(msgs, senders, strict=True))

    def __len__(self) -> int:
        return len(self._ring)

    def __iter__(self) -> Iterator[Message]:
        return (msg for msg, _ in tuple(self._ring))

    def messages(self, exclude: object = None) -> list[Message]:
        """The buffered messages, oldest first, minus those ``exclude`` sent."""
        if exclude is None:
            return [msg for msg, _ in self._ring]
        return [msg for msg, sender in self._ring if sender is not exclude]

    def find(self, uuid: str) -> Message | None:
        for msg, _ in reversed(self._ring):
            if msg.uuid == uuid:
                return msg
        return None

    def since(self, uuid: str) -> list[Message]:
        """Messages after the one with ``uuid`` (all of them if it has left the ring)."""
        out: list[Message] = []
        for msg, _ in reversed(self._ring):
            if msg.uuid == uuid:
                break
            out.append(msg)
        out.reverse()
        return out
