"""Which messages reach a pod's handler: Grav's type and uuid allow/deny maps."""

from __future__ import annotations

from collections.abc import Iterable

from txloom.bus.message import Message

__all__ = ["MessageFilter"]


class MessageFilter:
    """Allow/deny entries by message type and by message uuid.

    As in Grav, an entry's boolean is respected (true allows, false denies) and a missing
    entry allows unless the map was made exclusive; ``on_type`` makes the type map
    exclusive so that only the listed types pass. A pod with no filter at all skips this
    object entirely, which is what keeps the common case cheap.
    """

    __slots__ = ("type_inclusive", "types", "uuids")

    def __init__(self) -> None:
        self.types: dict[str, bool] = {}
        self.uuids: dict[str, bool] = {}
        self.type_inclusive = True

    @classmethod
    def only(cls, msg_types: Iterable[str]) -> MessageFilter:
        f = cls()
        f.type_inclusive = False
        for t in msg_types:
            f.types[t] = True
        return f

    @property
    def is_empty(self) -> bool:
        return self.type_inclusive and not self.types and not self.uuids

    def allows(self, msg: Message) -> bool:
        allowed = self.types.get(msg.msg_type)
        if allowed is False or (allowed is None and not self.type_inclusive):
            return False
        return self.uuids.get(msg.uuid) is not False

    def __repr__(self) -> str:
        mode = "all types" if self.type_inclusive else "listed types only"
        return f"<MessageFilter {mode} types={self.types} uuids={len(self.uuids)}>"
