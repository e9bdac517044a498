"""A txloom storage backend on SQLite: facts in one database file, in WAL mode.

It implements ``txloom.interfaces.IStorageBackend`` with nothing but the public contract:

- Writes queue on the reactor thread; whatever is queued when the writer thread is free
  becomes one transaction (group commit). With ``--fsync always`` the database runs with
  ``synchronous=FULL``, so a fact is on stable storage when its writer is answered, and a
  ``kill -9`` loses nothing acknowledged.
- Two tables hold facts: ``log`` (every ``write_fact``) and ``snapshot`` (the last
  ``write_snapshot``); the ``visible`` view is what replay returns (the snapshot, and the
  log facts whose id it does not hold), as the store spec says.
- Replays and pages read on reader threads, each plan on its own connection inside a
  read transaction: WAL mode gives it a fixed view while writes go on.
- ``compact`` deletes the log facts the snapshot hides and gives the pages back to the
  file system (``auto_vacuum=INCREMENTAL``); with nothing hidden it does nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from txloom.interfaces import IReplayPlan, IStorageBackend
from txloom.store.errors import StorageFailure

__all__ = ["SQLiteBackend"]

#: Bytes of fact bodies a plan hands out per batch.
BATCH_BYTES = 256 * 1024

SCHEMA = """
PRAGMA auto_vacuum = INCREMENTAL;
CREATE TABLE IF NOT EXISTS log (
    seq INTEGER PRIMARY KEY, id TEXT, store TEXT NOT NULL, time REAL NOT NULL, body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS log_id ON log(id);
CREATE TABLE IF NOT EXISTS snapshot (
    seq INTEGER PRIMARY KEY, id TEXT, store TEXT NOT NULL, time REAL NOT NULL, body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('next_seq', 1);
CREATE VIEW IF NOT EXISTS visible AS
    SELECT seq, store, time, body FROM snapshot
    UNION ALL
    SELECT seq, store, time, body FROM log
    WHERE id IS NULL OR id NOT IN (SELECT id FROM snapshot WHERE id IS NOT NULL);
"""


class Committed(NamedTuple):
    """What listeners (push subscriptions) hear of a committed fact."""

    seq: int
    store: str
    body: bytes


def _connect(path: str) -> sqlite3.Connection:
    # autocommit mode: transactions are begun and ended explicitly below
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


@implementer(IReplayPlan)
class SQLitePlan:
    """Facts chosen by one query, read inside one read transaction (a fixed view)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        where: str,
        params: tuple[Any, ...],
        order: str,
        *,
        next_seq: int,
        more: bool = False,
    ) -> None:
        self._conn = conn
        self._where = where
        self._params = params
        self._order = order
        count, size = conn.execute(
            f"SELECT count(*), coalesce(sum(length(body)), 0) FROM visible {where}", params
        ).fetchone()
        self.count = count
        self.body_bytes = size
        self.next = next_seq
        self.more = more

    def encoded_size(self) -> int:
        return self.body_bytes + max(0, self.count - 1)

    def numbered_batches(self) -> Iterator[list[tuple[int, bytes]]]:
        if self._conn is None or not self.count:
            return
        cursor = self._conn.execute(
            f"SELECT seq, body FROM visible {self._where} ORDER BY {self._order}", self._params
        )
        batch: list[tuple[int, bytes]] = []
        size = 0
        for seq, body in cursor:
            batch.append((seq, bytes(body)))
            size += len(body)
            if size >= BATCH_BYTES:
                yield batch
                batch, size = [], 0
        if batch:
            yield batch

    def batches(self) -> Iterator[list[bytes]]:
        for batch in self.numbered_batches():
            yield [body for _seq, body in batch]

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            conn.close()


@implementer(IStorageBackend)
class SQLiteBackend:
    """Facts in a SQLite database (see the module docstring)."""

    log = Logger()
    name = "sqlite"

    def __init__(
        self, reactor: Any, path: str, *, fsync: Any = "always", reader_threads: int = 2
    ) -> None:
        self.reactor = reactor
        self.location = os.path.abspath(path)
        self.fsync = fsync
        self.durable = True
        self.last_seq = 0
        self.fact_count = 0
        self._writer = ThreadPool(1, 1, "txloom-sqlite-writer")
        self._readers = ThreadPool(0, reader_threads, "txloom-sqlite-reader")
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._snapshot_ids: set[str] = set()
        self._listeners: list[Callable[[list[Committed]], None]] = []
        self._queue: deque[tuple[Any, defer.Deferred]] = deque()
        self._busy = False
        self._scheduled = False
        self._idle: list[defer.Deferred] = []
        self._closed = False
        self._failures = 0
        self._error: str | None = None

    # -- lifetime -----------------------------------------------------------------------

    def prepare(self) -> None:
        """Lock the database: two servers numbering facts in one file would clash."""
        if self._lock_fd is not None:
            return
        os.makedirs(os.path.dirname(self.location), exist_ok=True)
        fd = os.open(self.location + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RuntimeError(f"{self.location} is in use by another process") from None
        self._lock_fd = fd

    def open(self) -> defer.Deferred:
        self.prepare()
        self._writer.start()
        self._readers.start()
        return self._write(self._load).addCallback(self._loaded)

    def _load(self) -> tuple[int, int, set[str]]:
        conn = self._conn = _connect(self.location)
        conn.execute("PRAGMA journal_mode = WAL")
        synchronous = "FULL" if str(self.fsync) == "always" else "NORMAL"
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.executescript(SCHEMA)
        (next_seq,) = conn.execute("SELECT value FROM counters WHERE name = 'next_seq'").fetchone()
        (count,) = conn.execute("SELECT count(*) FROM visible").fetchone()
        ids = {i for (i,) in conn.execute("SELECT id FROM snapshot WHERE id IS NOT NULL")}
        return next_seq - 1, count, ids

    def _loaded(self, loaded: tuple[int, int, set[str]]) -> str:
        self.last_seq, self.fact_count, self._snapshot_ids = loaded
        return f"opened {self.location}: {self.fact_count} facts (last seq {self.last_seq})"

    def close(self) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._close())

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.when_idle()
        if self._conn is not None:
            await self._write(self._conn.close)
        self._writer.stop()
        self._readers.stop()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def when_idle(self) -> defer.Deferred:
        if not self._busy and not self._queue:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._idle.append(d)
        return d

    def add_listener(self, listener: Callable[[list[Committed]], None]) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[list[Committed]], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def storage_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "storage": "ok" if self._error is None else "failed",
            "storage_failures": self._failures,
        }
        if self._error is not None:
            status["storage_error"] = self._error
        return status

    # -- the write line -----------------------------------------------------------------

    def _write(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        return deferToThreadPool(self.reactor, self._writer, fn, *args)

    def _enqueue(self, item: Any) -> defer.Deferred:
        if self._closed:
            return defer.fail(StorageFailure("the store is shutting down"))
        d: defer.Deferred = defer.Deferred()
        self._queue.append((item, d))
        if not self._busy and not self._scheduled:
            self._scheduled = True
            self.reactor.callLater(0, self._pump)  # let this turn's writes join the batch
        return d

    def append(self, body: bytes, meta: Any) -> defer.Deferred:
        return self._enqueue((body, meta))

    def write_snapshot(self, facts: Iterable[tuple[bytes, Any]]) -> defer.Deferred:
        return self._enqueue(_Snapshot(list(facts)))

    def compact(self) -> defer.Deferred:
        return self._enqueue(_Compact())

    def _pump(self) -> None:
        self._scheduled = False
        if self._busy:
            return
        if not self._queue:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)
            return
        self._busy = True
        item, d = self._queue[0]
        if isinstance(item, _Snapshot | _Compact):
            self._queue.popleft()
            self._write(item.run, self._conn, self.last_seq + 1).addCallbacks(
                self._exclusive_done, self._failed, (item, d), None, ([d],)
            )
            return
        batch = []
        while self._queue and not isinstance(self._queue[0][0], _Snapshot | _Compact):
            batch.append(self._queue.popleft())
        rows = [(body, meta.id, meta.store, meta.transaction_time) for (body, meta), _ in batch]
        self._write(_insert, self._conn, self.last_seq + 1, rows).addCallbacks(
            self._batch_done, self._failed, (batch,), None, ([d for _, d in batch],)
        )

    def _batch_done(self, first: int, batch: list[tuple[Any, defer.Deferred]]) -> None:
        committed = []
        for n, ((body, meta), _d) in enumerate(batch):
            committed.append(Committed(first + n, meta.store, body))
            if meta.id is None or meta.id not in self._snapshot_ids:
                self.fact_count += 1
        self.last_seq = first + len(batch) - 1
        self._settled()
        for listener in self._listeners:
            try:
                listener(committed)
            except Exception:
                self.log.failure("push listener failed")
        for fact, (_item, d) in zip(committed, batch, strict=True):
            d.callback(fact.seq)
        self._pump()

    def _exclusive_done(self, result: dict[str, Any], item: Any, d: defer.Deferred) -> None:
        self.last_seq = result.pop("last_seq")
        self.fact_count = result.pop("fact_count")
        if isinstance(item, _Snapshot):
            self._snapshot_ids = item.ids
        self._settled()
        d.callback(result.get("count", result))
        self._pump()

    def _settled(self) -> None:
        self._busy = False
        self._error = None

    def _failed(self, failure: Failure, deferreds: list[defer.Deferred]) -> None:
        # the transaction was rolled back: this batch fails, the next one tries again
        self._busy = False
        self._failures += 1
        self._error = failure.getErrorMessage()
        self.log.error("sqlite write failed: {error}", error=self._error)
        for d in deferreds:
            d.errback(StorageFailure(f"sqlite: {self._error}"))
        self._pump()

    # -- reading ------------------------------------------------------------------------

    def read(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        return deferToThreadPool(self.reactor, self._readers, fn, *args)

    def _reader(self) -> sqlite3.Connection:
        conn = _connect(self.location)
        conn.execute("BEGIN")  # the view a plan reads is fixed from its first select
        return conn

    def plan_replay(self) -> SQLitePlan:
        conn = self._reader()
        try:
            return SQLitePlan(conn, "", (), "time, seq", next_seq=self.last_seq)
        except BaseException:
            conn.close()
            raise

    def page(  # noqa: PLR0917 - IStorageBackend.page
        self,
        since: int,
        stores: Iterable[str] | None,
        limit: int | None,
        budget: int,
        scan_limit: int | None = None,
        then: Callable[[SQLitePlan], Any] | None = None,
    ) -> defer.Deferred:
        stores = None if stores is None else list(stores)
        d = self.read(self._page, since, stores, limit, budget, scan_limit, self.last_seq)
        return d if then is None else d.addCallback(lambda plan: self.read(then, plan))

    def _page(  # noqa: PLR0917 - the interface's arguments, on a reader thread
        self,
        since: int,
        stores: list[str] | None,
        limit: int | None,
        budget: int,
        scan_limit: int | None,
        covered: int,
    ) -> SQLitePlan:
        conn = self._reader()
        try:
            where, params = "WHERE seq > ?", (since,)
            scan = "" if scan_limit is None else f" LIMIT {int(scan_limit)}"
            rows = conn.execute(
                f"SELECT seq, store, length(body) FROM visible {where} ORDER BY seq{scan}",
                params,
            )
            wanted = None if stores is None else set(stores)
            taken = used = 0
            cursor = since
            more = False
            for seq, store, size in rows:
                if wanted is None or store in wanted:
                    if (limit is not None and taken >= limit) or used + size + 1 > budget:
                        more = True
                        break
                    taken += 1
                    used += size + 1
                cursor = seq
            else:
                more = (
                    scan_limit is not None
                    and conn.execute(
                        "SELECT 1 FROM visible WHERE seq > ? LIMIT 1", (cursor,)
                    ).fetchone()
                    is not None
                )
            if not more:
                cursor = max(cursor, covered)
            filters = "WHERE seq > ? AND seq <= ?"
            args: tuple[Any, ...] = (since, cursor)
            if wanted is not None:
                filters += f" AND store IN ({','.join('?' * len(wanted))})"
                args += tuple(sorted(wanted))
            return SQLitePlan(conn, filters, args, "seq", next_seq=cursor, more=more)
        except BaseException:
            conn.close()
            raise


def _insert(conn: sqlite3.Connection, first: int, rows: list[tuple]) -> int:
    """Writer thread: one transaction for a whole batch; the first number it took."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(
            "INSERT INTO log (seq, body, id, store, time) VALUES (?, ?, ?, ?, ?)",
            [(first + n, *row) for n, row in enumerate(rows)],
        )
        conn.execute("UPDATE counters SET value = ? WHERE name = 'next_seq'", (first + len(rows),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return first


class _Snapshot:
    """``write_snapshot``: numbered as the spec says, replaced in one transaction."""

    def __init__(self, facts: list[tuple[bytes, Any]]) -> None:
        self.facts = facts
        self.ids = {meta.id for _body, meta in facts if meta.id is not None}

    def run(self, conn: sqlite3.Connection, next_seq: int) -> dict[str, Any]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            known = dict(conn.execute("SELECT id, seq FROM snapshot WHERE id IS NOT NULL"))
            rows = []
            used: set[str] = set()
            for body, meta in self.facts:
                seq = None
                if meta.id is not None and meta.id not in used:
                    seq = known.get(meta.id)
                    if seq is None:
                        (seq,) = conn.execute(
                            "SELECT min(seq) FROM log WHERE id = ?", (meta.id,)
                        ).fetchone()
                    used.add(meta.id)
                if seq is None:
                    seq, next_seq = next_seq, next_seq + 1
                rows.append((seq, meta.id, meta.store, meta.transaction_time, body))
            conn.execute("DELETE FROM snapshot")
            conn.executemany("INSERT INTO snapshot VALUES (?, ?, ?, ?, ?)", rows)
            conn.execute("UPDATE counters SET value = ? WHERE name = 'next_seq'", (next_seq,))
            (count,) = conn.execute("SELECT count(*) FROM visible").fetchone()
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return {"count": len(rows), "last_seq": next_seq - 1, "fact_count": count}


class _Compact:
    """``compact``: drop the log facts the snapshot hides, give the pages back."""

    def run(self, conn: sqlite3.Connection, next_seq: int) -> dict[str, Any]:
        path = conn.execute("PRAGMA database_list").fetchone()[2]
        before = _size(path)
        hidden = "id IN (SELECT id FROM snapshot WHERE id IS NOT NULL)"
        (doomed,) = conn.execute(f"SELECT count(*) FROM log WHERE {hidden}").fetchone()
        if doomed:
            conn.execute(f"DELETE FROM log WHERE {hidden}")
            conn.execute("PRAGMA incremental_vacuum")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (kept,) = conn.execute("SELECT count(*) FROM log").fetchone()
        (count,) = conn.execute("SELECT count(*) FROM visible").fetchone()
        after = _size(path) if doomed else before
        return {
            "through": next_seq - 1,
            "facts": kept,
            "bytes_before": before,
            "bytes_after": after,
            "compacted": bool(doomed),
            "last_seq": next_seq - 1,
            "fact_count": count,
        }


def _size(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
