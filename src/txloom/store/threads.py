"""Blocking work on threads of its own, with answers back on the reactor thread.

The file backend keeps three kinds apart, so that none waits behind another: one writer
thread (group commits, in order), reader threads (replays and catch-up subscriptions,
which may wait on a cold disk) and one maintenance thread (snapshot and compaction
scans, which take time proportional to the store). The memory backend runs the same
work inline, on the calling thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python.threadpool import ThreadPool

__all__ = ["WorkerThreads", "defer_to_pool", "let_others_run"]


def let_others_run() -> None:
    """Give the interpreter lock to a thread that waits for it, if any.

    A thread running Python code gives the lock up only when another one has waited a
    whole switch interval (5 ms) for it; a long loop on a background thread therefore
    adds up to that to every step of the reactor and the writer thread. Loops that run
    for long on background threads call this every millisecond or so of work, which
    keeps those waits well under a millisecond.
    """
    time.sleep(0)


def _daemon_thread(*args: Any, **kwargs: Any) -> threading.Thread:
    return threading.Thread(*args, daemon=True, **kwargs)


def defer_to_pool(
    reactor: Any, pool: ThreadPool, fn: Callable[..., Any], *args: Any
) -> defer.Deferred:
    """``deferToThreadPool`` without the context copy: this runs once per group commit."""
    d: defer.Deferred = defer.Deferred()

    def done(success: bool, result: Any) -> None:
        if success:
            reactor.callFromThread(d.callback, result)
        else:
            reactor.callFromThread(d.errback, result)

    pool.callInThreadWithCallback(done, fn, *args)
    return d


class WorkerThreads:
    """``threads`` threads named ``name`` (0: run inline); ``run`` returns a Deferred."""

    def __init__(self, reactor: Any, name: str, threads: int) -> None:
        self.reactor = reactor
        self.name = name
        self.threads = threads
        self._pool: ThreadPool | None = None

    @property
    def inline(self) -> bool:
        return self.threads == 0

    def start(self) -> None:
        if self.threads and self._pool is None:
            self._pool = ThreadPool(self.threads, self.threads, name=self.name)
            # Daemon threads: a process that ends without stop() must not hang on them
            # (nothing is lost: a write is answered only after its job finished).
            self._pool.threadFactory = _daemon_thread
            self._pool.start()

    def stop(self) -> None:
        """Join the threads (callers stop only when no job is left)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.stop()

    def run(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        if self._pool is None:
            return defer.maybeDeferred(fn, *args)
        return defer_to_pool(self.reactor, self._pool, fn, *args)
