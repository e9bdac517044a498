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
from queue import SimpleQueue
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

__all__ = ["WorkerThreads", "let_others_run"]


def let_others_run() -> None:
    """Give the interpreter lock to a thread that waits for it, if any.

    A thread running Python code gives the lock up only when another one has waited a
    whole switch interval (5 ms) for it; a long loop on a background thread therefore
    adds up to that to every step of the reactor and the writer thread. Loops that run
    for long on background threads call this every millisecond or so of work, which
    keeps those waits well under a millisecond.
    """
    time.sleep(0)


#: Tells a worker thread to end (one per thread, queued behind the jobs left).
_STOP: Any = object()


class WorkerThreads:
    """``threads`` threads named ``name`` (0: run inline); ``run`` returns a Deferred.

    Plain threads over one ``SimpleQueue`` rather than Twisted's ``ThreadPool``: the
    writer hands every group commit over and back, and the pool's layers (a team, a
    coordinator, a context copy per job) cost more on the reactor thread than the hand
    over itself, which for a single writer is on the path of every write.
    """

    def __init__(self, reactor: Any, name: str, threads: int) -> None:
        self.reactor = reactor
        self.name = name
        self.threads = threads
        self._jobs: SimpleQueue[Any] | None = None
        self._workers: list[threading.Thread] = []

    @property
    def inline(self) -> bool:
        return self.threads == 0

    def start(self) -> None:
        if self.threads and self._jobs is None:
            self._jobs = SimpleQueue()
            for n in range(self.threads):
                # Daemon threads: a process that ends without stop() must not hang on
                # them (nothing is lost: a write is answered only after its job finished).
                worker = threading.Thread(
                    target=self._work, args=(self._jobs,), name=f"{self.name}-{n}", daemon=True
                )
                worker.start()
                self._workers.append(worker)

    def stop(self) -> None:
        """Join the threads (callers stop only when no job is left)."""
        if self._jobs is not None:
            jobs, self._jobs = self._jobs, None
            for _ in self._workers:
                jobs.put(_STOP)
            for worker in self._workers:
                worker.join()
            self._workers = []

    def run(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        if self._jobs is None:
            return defer.maybeDeferred(fn, *args)
        d: defer.Deferred = defer.Deferred()
        self._jobs.put((d, fn, args))
        return d

    def _work(self, jobs: SimpleQueue[Any]) -> None:
        call = self.reactor.callFromThread
        while (job := jobs.get()) is not _STOP:
            d, fn, args = job
            try:
                result = fn(*args)
            except BaseException:
                call(d.errback, Failure())
            else:
                call(d.callback, result)
            del job, d  # no reference to the last job's result while waiting
