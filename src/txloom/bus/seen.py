"""A bounded memory of message uuids, for dropping copies that arrive twice.

The mesh (relayed copies, a peer that is reached two ways) and the NATS bridge (a message
that went out and comes back) both need "have I seen this uuid lately?". Memory must stay
bounded whatever the traffic, so the oldest uuids are forgotten first; the capacity is
chosen so that a copy arrives long before its uuid is forgotten.
"""

from __future__ import annotations

from collections import deque

__all__ = ["DEFAULT_SEEN_CAPACITY", "SeenSet"]

#: Uuids remembered (about 6 MiB at 36-character uuids); at 50k messages/s that is over a
#: second of history, far longer than a copy takes to come back round a mesh.
DEFAULT_SEEN_CAPACITY = 65_536


class SeenSet:
    """Set of the last ``capacity`` keys added (insertion order, oldest evicted first)."""

    __slots__ = ("_keys", "_order", "capacity")

    def __init__(self, capacity: int = DEFAULT_SEEN_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._keys: set[str] = set()
        self._order: deque[str] = deque()

    def add(self, key: str) -> bool:
        """Remember ``key``; True if it was new, False if it was already remembered."""
        keys = self._keys
        if key in keys:
            return False
        keys.add(key)
        order = self._order
        order.append(key)
        if len(order) > self.capacity:
            keys.discard(order.popleft())
        return True

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._order)
