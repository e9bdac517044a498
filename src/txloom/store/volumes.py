"""Numbers for the open volumes, so the fact index can name a file in four bytes."""

from __future__ import annotations

import threading

from txloom.store.directory import Volume

__all__ = ["VolumeTable"]


class VolumeTable:
    """Open volumes by number; a retired volume closes when its last reader lets go.

    The writer thread adds and retires volumes (rotation, compaction) while the reactor
    thread pins them for replay, hence the lock.
    """

    def __init__(self) -> None:
        self._volumes: dict[int, Volume] = {}
        self._next = 0
        self._lock = threading.Lock()

    def add(self, volume: Volume) -> int:
        with self._lock:
            number = self._next
            self._next += 1
            self._volumes[number] = volume
            return number

    def __getitem__(self, number: int) -> Volume:
        return self._volumes[number]

    def retire(self, number: int) -> None:
        """Forget the volume; it is closed once no replay plan holds it any more."""
        with self._lock:
            volume = self._volumes.pop(number, None)
        if volume is not None:
            volume.release()

    def pin(self) -> dict[int, Volume]:
        """Every open volume, each acquired once: a replay plan's consistent view."""
        with self._lock:
            return {n: v.acquire() for n, v in self._volumes.items()}

    def close(self) -> None:
        for number in list(self._volumes):
            self.retire(number)
