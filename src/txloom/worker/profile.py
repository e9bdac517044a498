"""An app's profile: every limit and timeout of its pool, with the protocol's defaults.

A manifest's ``[profile]`` table overrides any of these by its dashed name
(``pool-limit = 4``); everything not named keeps the default below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

#: Workers per app.
POOL_LIMIT = 10
#: Sessions one worker runs at once.
CONCURRENCY = 10
#: Sessions waiting for a worker, per app; one more fails at once with "queue is full".
QUEUE_LIMIT = 100
#: Seconds the launcher may take to start a worker process.
SPAWN_TIMEOUT = 1.0
#: Seconds from spawn until the worker must have sent its handshake.
HANDSHAKE_TIMEOUT = 5.0
#: Seconds of silence after which a worker is discarded.
HEARTBEAT_TIMEOUT = 30.0
#: Seconds a worker may sit without sessions before it is terminated (0 = never).
IDLE_TIMEOUT = 600.0
#: Seconds between a polite terminate and SIGKILL.
TERMINATE_TIMEOUT = 10.0
#: Seconds a session may last, unless the ``request_timeout`` header (ms) says otherwise.
REQUEST_TIMEOUT = 86400.0
#: Consecutive failed starts after which the app is reported broken.
CRASH_LIMIT = 3
#: First delay before respawning after a failed start; doubles per failure up to the max.
BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 60.0
#: Largest message on a worker's socket (bytes). Also what one session may send while it
#: waits in the queue for a worker.
MAX_MESSAGE_SIZE = 64 * 1024 * 1024
#: Bytes of one session's replies the host holds while the caller is not reading them
#: (its connection's send buffer is full). One byte more fails the session with "client
#: too slow": the protocol has no flow-control message, and pausing the worker's socket
#: would stall every other session on that worker.
BACKLOG_LIMIT = 8 * 1024 * 1024
#: Seconds the host may stop reading a worker's socket at a time so that a caller reading
#: slower than the worker writes catches up (and at most half of the time); 0 = never,
#: such a caller then fails at backlog-limit.
STALL_LIMIT = 0.05


class ProfileError(ValueError):
    """A profile value has the wrong type or is out of range."""


@dataclasses.dataclass(frozen=True)
class Profile:
    """Limits and timeouts of one app's pool (seconds for times)."""

    pool_limit: int = POOL_LIMIT
    concurrency: int = CONCURRENCY
    queue_limit: int = QUEUE_LIMIT
    spawn_timeout: float = SPAWN_TIMEOUT
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    terminate_timeout: float = TERMINATE_TIMEOUT
    request_timeout: float = REQUEST_TIMEOUT
    crash_limit: int = CRASH_LIMIT
    backoff_initial: float = BACKOFF_INITIAL
    backoff_max: float = BACKOFF_MAX
    max_message_size: int = MAX_MESSAGE_SIZE
    backlog_limit: int = BACKLOG_LIMIT
    stall_limit: float = STALL_LIMIT
    #: Queued sessions per worker that make the pool grow; None = derived from the limits.
    grow_threshold: int | None = None

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "grow_threshold" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ProfileError(f"{_dashed(field.name)} must be a number, not {value!r}")
            if field.type in ("int", "int | None") and not isinstance(value, int):
                raise ProfileError(f"{_dashed(field.name)} must be an integer, not {value!r}")
            # idle-timeout 0 means "never"; a queue-limit of 0 would refuse the very call
            # that has to wait for the first worker, so at least 1
            minimum = 0 if field.name in ("idle_timeout", "stall_limit") else 1e-9
            if value < minimum:
                raise ProfileError(f"{_dashed(field.name)} must be positive, not {value!r}")

    @property
    def effective_grow_threshold(self) -> int:
        """``max(1, queue-limit / pool-limit / 2)`` unless the profile names its own."""
        if self.grow_threshold is not None:
            return self.grow_threshold
        return max(1, self.queue_limit // self.pool_limit // 2)

    def backoff(self, failures: int) -> float:
        """Delay before the next spawn after ``failures`` consecutive failed starts."""
        if failures <= 0:
            return 0.0
        return min(self.backoff_max, self.backoff_initial * 2 ** (failures - 1))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], base: Profile | None = None) -> Profile:
        """A profile from a manifest table; keys may be dashed or underscored."""
        known = {f.name for f in dataclasses.fields(cls)}
        changes: dict[str, Any] = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name not in known:
                raise ProfileError(f"unknown profile setting {key!r}")
            changes[name] = value
        return dataclasses.replace(base or cls(), **changes)

    def as_dict(self) -> dict[str, Any]:
        """Dashed names to values (what ``info`` reports)."""
        out = {_dashed(k): v for k, v in dataclasses.asdict(self).items()}
        out["grow-threshold"] = self.effective_grow_threshold
        return out


def _dashed(name: str) -> str:
    return name.replace("_", "-")
