"""A membership table in a JetStream key-value bucket.

Each process publishes its own entries (``publish(key, value)``) and refreshes them every
``ttl / 3`` seconds for as long as it lives; on a clean stop it withdraws them. Every
process watches the whole bucket and keeps a local view of all entries, with ``JOINED``,
``UPDATED`` and ``LEFT`` events.

A process that dies stops refreshing, and its entries go within the TTL: the bucket's
``max_age`` is the TTL, so JetStream removes an entry that many seconds after its last
refresh, and, because the bucket is made with limit markers (``subject_delete_marker_ttl``,
nats-server 2.11 and later), it leaves a marker in the bucket that every watcher sees as the
entry's removal. Per-key TTLs would do too, but nats-py sets them only on ``create``,
while a refresh is a ``put``: one TTL per bucket suits a table whose entries all live alike.

The bucket is created by the first process that finds it missing; the others bind to it
as it is, and when its TTL is shorter than theirs they refresh at its pace. Every new
connection (a reconnect, possibly to another server of the cluster) binds again, puts
the process's own entries at once and restarts the watch from a fresh snapshot, from
which the view is reconciled: entries that went while the process was cut off leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats.js.errors
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from txloom.cluster.connection import NatsConnection

__all__ = [
    "DEFAULT_TTL",
    "MIN_TTL",
    "Change",
    "Member",
    "MemberEvent",
    "Membership",
    "MembershipError",
    "valid_bucket",
    "valid_key",
]

#: Seconds an entry outlives its owner's last refresh.
DEFAULT_TTL = 10.0
#: The shortest TTL: JetStream's limit markers live at least a second.
MIN_TTL = 1.0
#: Refreshes per TTL: an entry survives two lost refreshes in a row.
REFRESHES_PER_TTL = 3
#: Seconds JetStream API calls (bind, put, delete) may take.
API_TIMEOUT = 5.0
#: Largest value accepted for an entry (JetStream's default max payload is 1 MiB).
MAX_VALUE_SIZE = 256 * 1024

_KEY = re.compile(r"^[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*$")
_BUCKET = re.compile(r"^[a-zA-Z0-9_-]+$")
_REMOVED = ("DEL", "PURGE")


def valid_bucket(name: str) -> bool:
    """A bucket name JetStream accepts (letters, digits, ``-`` and ``_``)."""
    return bool(_BUCKET.match(name))


def valid_key(key: str) -> bool:
    """A key JetStream KV accepts (letters, digits, ``-/_=``, dot-separated tokens)."""
    return bool(_KEY.match(key))


class MembershipError(Exception):
    """The bucket cannot serve as a membership table (one readable line)."""


class Change(enum.Enum):
    JOINED = "joined"
    UPDATED = "updated"
    LEFT = "left"


@dataclass(frozen=True, slots=True)
class Member:
    """One entry of the table: its key, value, and the bucket's revision of it."""

    key: str
    value: bytes
    revision: int


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """An entry joined, changed value, or left (its last value, for ``LEFT``)."""

    change: Change
    member: Member


class Membership:
    """The membership table in bucket ``bucket`` over ``connection`` (started by its owner).

    ``start`` fires once the first view is loaded; ``members`` is the view (key ->
    ``Member``), kept on the reactor thread; ``on_change`` listeners hear every event.
    """

    log = Logger()

    def __init__(
        self,
        connection: NatsConnection,
        bucket: str,
        *,
        ttl: float = DEFAULT_TTL,
        replicas: int = 1,
        reactor: Any = None,
    ) -> None:
        if not valid_bucket(bucket):
            raise ValueError(f"bad bucket name {bucket!r}: letters, digits, '-' and '_'")
        if not ttl >= MIN_TTL:
            raise ValueError(f"the membership TTL must be at least {MIN_TTL:g} s, not {ttl!r}")
        if replicas < 1:
            raise ValueError("replicas must be at least 1")
        self.connection = connection
        self.bucket = bucket
        self.ttl = ttl
        self.replicas = replicas
        self.reactor = reactor if reactor is not None else connection.reactor
        #: The view: every live entry of the bucket, by key.
        self.members: dict[str, Member] = {}
        #: The TTL in force (the bucket's, if it was made with a shorter one).
        self.bucket_ttl = ttl
        #: Refreshes that failed (NATS away or slow); each is retried at the next turn.
        self.failed_refreshes = 0
        self._own: dict[str, bytes] = {}
        self._listeners: list[Callable[[MemberEvent], None]] = []
        self._loaded: Deferred[None] = Deferred()
        self._started = False
        self._stopping = False
        self._refresher = LoopingCall(self._refresh)
        self._refresher.clock = self.reactor
        self._refreshing = False
        # loop side
        self._kv: Any = None
        self._watch_task: asyncio.Future[Any] | None = None
        self._watcher: Any = None

    # -- reactor side ---------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Bind (or create) the bucket and load the view; fires once it is loaded."""
        if not self._started:
            self._started = True
            self.connection.when_connected(self._connected)
            self._refresher.start(self.bucket_ttl / REFRESHES_PER_TTL, now=False)
        return _chained(self._loaded)

    def on_change(self, listener: Callable[[MemberEvent], None]) -> None:
        """Call ``listener(event)`` on the reactor thread for every change of the view."""
        self._listeners.append(listener)

    def publish(self, key: str, value: bytes) -> None:
        """Make ``key`` -> ``value`` this process's entry, now and for as long as it lives
        (or until ``withdraw``); publishing again changes the value."""
        if not valid_key(key):
            raise ValueError(f"bad membership key {key!r}")
        if len(value) > MAX_VALUE_SIZE:
            raise ValueError(f"membership value of {len(value)} bytes (at most {MAX_VALUE_SIZE})")
        if self._own.get(key) == value:
            return
        self._own[key] = value
        self._put(key, value)

    def withdraw(self, key: str) -> Deferred[None]:
        """Remove this process's entry ``key`` from the table (every view sees it leave)."""
        if self._own.pop(key, None) is None:
            return _chained(None)
        d = self.connection.run(lambda _nc: self._delete(key))
        d.addErrback(self._warn, "withdrawing {key}", key=key)
        return d

    def stop(self) -> Deferred[None]:
        """Stop refreshing, withdraw this process's entries and stop watching.

        The connection stays up (its owner stops it after this).
        """
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._refresher.running:
            self._refresher.stop()
        await DeferredList([self.withdraw(key) for key in list(self._own)])
        with contextlib.suppress(Exception):
            await self.connection.run(lambda _nc: self._stop_watching())

    def _put(self, key: str, value: bytes) -> Deferred[None]:
        d = self.connection.run(lambda _nc: self._put_in_loop(key, value))
        return d.addErrback(self._refresh_failed, key)

    def _refresh(self) -> Deferred[None] | None:
        if self._refreshing or not self._own:
            return None  # the last round is still out (NATS slow or away): skip this one
        self._refreshing = True
        d = DeferredList([self._put(k, v) for k, v in self._own.items()])

        def done(_: object) -> None:
            self._refreshing = False

        d.addBoth(done)
        return None

    def _refresh_failed(self, failure: Any, key: str) -> None:
        self.failed_refreshes += 1
        n = self.failed_refreshes
        if n & (n - 1) == 0:
            self.log.warn(
                "membership {bucket}: cannot refresh {key}: {error} ({n} failures so far)",
                bucket=self.bucket,
                key=key,
                error=failure.getErrorMessage() or failure.type.__name__,
                n=n,
            )

    def _warn(self, failure: Any, what: str, **fields: Any) -> None:
        self.log.warn(
            "membership {bucket}: " + what + " failed: {error}",
            bucket=self.bucket,
            error=failure.getErrorMessage() or failure.type.__name__,
            **fields,
        )

    def _set_ttl(self, ttl: float) -> None:
        if ttl == self.bucket_ttl:
            return
        self.log.info(
            "membership {bucket}: the bucket's TTL is {ttl:g} s; refreshing at its pace",
            bucket=self.bucket,
            ttl=ttl,
        )
        self.bucket_ttl = ttl
        if self._refresher.running:
            self._refresher.stop()
            self._refresher.start(ttl / REFRESHES_PER_TTL, now=True)

    def _snapshot(self, entries: dict[str, Member]) -> None:
        """A fresh watch's first view: what is missing from it left, the rest joined."""
        for key in [k for k in self.members if k not in entries]:
            self._emit(Change.LEFT, self.members.pop(key))
        for member in entries.values():
            self._apply(member, False)
        if not self._loaded.called:
            self._loaded.callback(None)

    def _apply(self, member: Member, removed: bool) -> None:
        old = self.members.get(member.key)
        if removed:
            if old is not None and old.revision < member.revision:
                del self.members[member.key]
                self._emit(Change.LEFT, old)
            return
        if old is not None and old.revision >= member.revision:
            return
        self.members[member.key] = member
        if old is None:
            self._emit(Change.JOINED, member)
        elif old.value != member.value:
            self._emit(Change.UPDATED, member)

    def _emit(self, change: Change, member: Member) -> None:
        event = MemberEvent(change, member)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                self.log.failure("membership listener failed on {key}", key=member.key)

    # -- loop side ------------------------------------------------------------------------

    async def _connected(self, nc: Any) -> None:
        """Every new connection: bind, put our entries, watch afresh."""
        await self._stop_watching()
        if self._stopping:
            return
        try:
            self._kv = await self._bind(nc)
        except MembershipError as e:
            self._say("error", "membership {bucket}: {error}", bucket=self.bucket, error=str(e))
            return
        for key, value in list(self._own.items()):
            with contextlib.suppress(Exception):
                await self._put_in_loop(key, value)
        self._watch_task = asyncio.ensure_future(self._watch(self._kv))

    async def _bind(self, nc: Any) -> Any:
        js = nc.jetstream(timeout=API_TIMEOUT)
        try:
            kv = await js.key_value(self.bucket)
        except nats.js.errors.BucketNotFoundError:
            try:
                kv = await js.create_key_value(
                    bucket=self.bucket,
                    history=1,
                    ttl=self.ttl,
                    replicas=self.replicas,
                    limit_marker_ttl=self.ttl,
                    max_value_size=MAX_VALUE_SIZE,
                )
            except nats.js.errors.KeyValueLimitMarkerTTLNotSupportedError:
                raise MembershipError(
                    "the NATS server cannot mark expired entries (it needs nats-server 2.11 "
                    "or later); departures would never be seen"
                ) from None
        status = await kv.status()
        if not status.ttl or not status.marker_ttl:
            raise MembershipError(
                f"bucket {self.bucket} exists without a TTL and limit markers; it cannot "
                "hold a membership table (delete it, or choose another bucket)"
            )
        self.connection.runner.to_reactor(self._set_ttl, min(self.ttl, status.ttl))
        return kv

    async def _put_in_loop(self, key: str, value: bytes) -> None:
        kv = self._kv
        if kv is not None:  # else binding puts every entry of ours once it is done
            await kv.put(key, value)

    async def _delete(self, key: str) -> None:
        kv = self._kv
        if kv is not None:
            await asyncio.wait_for(kv.delete(key), API_TIMEOUT)

    async def _watch(self, kv: Any) -> None:
        to_reactor = self.connection.runner.to_reactor
        try:
            self._watcher = watcher = await kv.watchall()
            snapshot: dict[str, Member] | None = {}
            # nats-py yields the bucket's entries, then None, then every change
            async for entry in watcher:
                if entry is None:
                    if snapshot is not None:
                        to_reactor(self._snapshot, snapshot)
                        snapshot = None
                    continue
                member = Member(entry.key, entry.value or b"", entry.revision)
                removed = entry.operation in _REMOVED
                if snapshot is None:
                    to_reactor(self._apply, member, removed)
                elif removed:
                    snapshot.pop(entry.key, None)
                else:
                    snapshot[entry.key] = member
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._say(
                "warn",
                "membership {bucket}: watch failed: {error}",
                bucket=self.bucket,
                error=repr(e),
            )

    async def _stop_watching(self) -> None:
        task, self._watch_task = self._watch_task, None
        watcher, self._watcher = self._watcher, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if watcher is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(watcher.stop(), API_TIMEOUT)

    def _say(self, level: str, text: str, **fields: Any) -> None:
        self.connection.runner.to_reactor(lambda: getattr(self.log, level)(text, **fields))


def _chained(result: Any) -> Deferred[Any]:
    """A new Deferred that fires with ``result`` (or after it, if it is a Deferred),
    leaving the original's own callbacks alone."""
    d: Deferred[Any] = Deferred()
    if isinstance(result, Deferred):
        result.addBoth(lambda r: (d.callback(r), r)[1])
    else:
        d.callback(result)
    return d
