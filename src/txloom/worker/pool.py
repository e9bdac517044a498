"""``WorkerPool``: one app's workers, its queue of waiting sessions, and their routing.

A session goes to the active worker with the fewest sessions, if one has a free slot
(``concurrency``); otherwise it waits in the queue, and a full queue (``queue-limit``)
refuses it at once. The pool grows when the queue grows: it aims at
``min(pool-limit, max(1, queued // grow-threshold))`` live workers. Idle workers are
terminated by their own ``WorkerControl``.

A worker that ends before its handshake is a failed start. The pool respawns after an
exponential backoff, and after ``crash-limit`` failures in a row reports the app broken:
the queue is failed, and calls fail at once until the backoff allows a new attempt (that
call then waits for the attempt). One successful handshake makes the app healthy again.

A reload changes a running pool in two ways. ``roll`` takes a new manifest: the workers
started from the old one take no new sessions, finish those they have and are then
terminated, while new sessions get workers started from the new one. ``drain`` is for an
app that is gone from the apps directory: no new sessions, and the pool stops once its
running and queued sessions have ended (each is bounded by its request timeout).

``keep_alive(n)`` (the app service's ``control`` method) keeps at least ``n`` workers
running, however short the queue, until it is set back to 0.
"""

from __future__ import annotations

import contextlib
import os
import uuid as uuidlib
from collections import deque
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from txloom.interfaces import IDownstream, IWorkerLauncher
from txloom.wire.cocaine import HeaderEntry, header_value
from txloom.worker import errors
from txloom.worker.control import ACTIVE, SPAWNING, WorkerControl
from txloom.worker.manifest import AppManifest
from txloom.worker.process import WorkerProcessProtocol
from txloom.worker.session import FlowStats, Session

#: Pool states reported by ``info``.
STOPPED = "stopped"
RUNNING = "running"
BROKEN = "broken"
STOPPING = "stopping"
#: Removed by a reload: running sessions finish, new ones are refused.
DRAINING = "draining"

#: States in which the pool runs workers for its sessions.
SERVING = (RUNNING, BROKEN, DRAINING)

#: Environment variables with timing hints for txloom's own worker library.
ENV_HEARTBEAT_INTERVAL = "TXLOOM_HEARTBEAT_INTERVAL"
ENV_DISOWN_TIMEOUT = "TXLOOM_DISOWN_TIMEOUT"

#: Worker heartbeats are asked for this many times per heartbeat-timeout.
HEARTBEATS_PER_TIMEOUT = 4


def _request_timeout(headers: tuple[HeaderEntry, ...], default: float) -> float:
    """Seconds from the ``request_timeout`` header (ASCII milliseconds), else ``default``."""
    raw = header_value(headers, b"request_timeout") if headers else None
    if raw is None:
        return default
    try:
        ms = float(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return default
    return ms / 1000.0 if ms > 0 else default


class WorkerPool:
    """Workers and queued sessions of one app."""

    log = Logger()

    def __init__(
        self,
        manifest: AppManifest,
        socket_path: str,
        locator_address: str,
        launcher: IWorkerLauncher,
        clock: Any,
    ) -> None:
        self.manifest = manifest
        self.name = manifest.name
        self.profile = manifest.profile
        self.socket_path = socket_path
        self.locator_address = locator_address
        self.launcher = launcher
        self.clock = clock
        self.state = STOPPED
        self.workers: dict[str, WorkerControl] = {}
        self.queue: deque[Session] = deque()
        #: Active workers, the only ones that take sessions.
        self._active: list[WorkerControl] = []
        self.failures = 0  # consecutive failed starts
        self.last_failure = ""
        self._next_spawn_at = 0.0
        self._respawn_call: Any = None
        self._stopped: Deferred[None] | None = None
        #: Sweeps of what exited workers left in their process groups (see ``GroupSweep``).
        self._sweeps: set[Deferred[None]] = set()
        self.counters = {"accepted": 0, "rejected": 0, "spawned": 0, "crashed": 0}
        #: Workers discarded for missing their heartbeats (the status site's metrics).
        self.heartbeat_misses = 0
        #: Bytes the app's sessions hold in host memory (backlogs, queued data).
        self.stats = FlowStats()
        #: Workers kept running whatever the queue (``keep_alive``).
        self.wanted = 0
        self._drained: Deferred[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self.state = RUNNING

    def stop(self, reason: str = "engine shutting down") -> Deferred[None]:
        """Fail the queue, terminate every worker; fires when all processes are gone.

        "All" includes what the workers started: the pool waits for their sweeps too.
        """
        if self.state == STOPPED and not self.workers and not self._sweeps:
            return succeed(None)
        self.state = STOPPING
        if self._respawn_call is not None and self._respawn_call.active():
            self._respawn_call.cancel()
        while self.queue:
            self.queue.popleft().fail(errors.ENGINE, errors.SHUTTING_DOWN, reason)
        end = (errors.SHUTTING_DOWN, reason)
        for worker in list(self.workers.values()):
            worker.terminate(reason, end)
        if not self.workers and not self._sweeps:
            self.state = STOPPED
            return succeed(None)
        self._stopped = Deferred()
        return self._stopped

    def roll(self, manifest: AppManifest) -> None:
        """Serve new sessions from ``manifest``; current workers finish theirs, then end."""
        self.manifest = manifest
        self.profile = manifest.profile
        # a new manifest is a new start: a broken app is tried again at once
        self.failures = 0
        self._next_spawn_at = 0.0
        if self.state == BROKEN:
            self.state = RUNNING
        for worker in list(self.workers.values()):
            worker.retire("app reloaded")
        self._rebalance()

    def drain(self, reason: str = "app removed") -> Deferred[None]:
        """Refuse new sessions; stop (fires) once running and queued sessions have ended."""
        if self.state not in SERVING:
            return self.stop(reason)
        self.state = DRAINING
        self.wanted = 0
        self._drained = Deferred()
        done = self._drained.addCallback(lambda _: self.stop(reason))
        self._maybe_drained()
        return done

    def resume(self) -> bool:
        """Serve again after ``drain`` (the app came back); False if already stopping."""
        if self.state != DRAINING:
            return False
        self.state = RUNNING
        self._drained = None  # the drain's Deferred never fires
        return True

    def _maybe_drained(self) -> None:
        if self.state != DRAINING or self._drained is None or self.queue:
            return
        if any(worker.sessions for worker in self.workers.values()):
            return
        drained, self._drained = self._drained, None
        drained.callback(None)

    def keep_alive(self, count: int) -> int:
        """Keep at least ``count`` workers running (at most pool-limit); the count kept."""
        self.wanted = max(0, min(count, self.profile.pool_limit))
        self._rebalance()
        return self.wanted

    def keeps(self, worker: WorkerControl) -> bool:
        """True if idle ``worker`` stays because ``keep_alive`` wants this many workers."""
        return self.state == RUNNING and worker in self._active and len(self._active) <= self.wanted

    def sweeping(self, done: Deferred[None]) -> None:
        """A sweep of an exited worker's group is under way; ``stop`` waits for it."""
        if done.called:
            return
        self._sweeps.add(done)
        done.addBoth(self._swept, done)

    def _swept(self, result: object, done: Deferred[None]) -> None:
        self._sweeps.discard(done)
        self._maybe_stopped()

    def _maybe_stopped(self) -> None:
        if self.state == STOPPING and not self.workers and not self._sweeps:
            self.state = STOPPED
            if self._stopped is not None:
                stopped, self._stopped = self._stopped, None
                stopped.callback(None)

    # -- sessions -------------------------------------------------------------------------

    def enqueue(
        self,
        event: bytes,
        headers: tuple[HeaderEntry, ...],
        downstream: IDownstream,
        feeder: Any = None,
    ) -> Session:
        """Start a session; failures (queue full, broken, stopping) reach ``downstream`` now.

        ``feeder`` is the caller's connection (``pause_reading``/``resume_reading``): it is
        no longer read while the session's worker does not keep up with what it sends.
        """
        session = Session(event, headers, downstream, self.stats, feeder)
        session.on_finish = self._session_finished
        profile = self.profile
        session.pending_limit = profile.max_message_size
        session.backlog_limit = profile.backlog_limit
        if self.state not in (RUNNING, BROKEN):
            self.counters["rejected"] += 1
            why = "is being removed" if self.state == DRAINING else "is not running"
            session.fail(errors.ENGINE, errors.SHUTTING_DOWN, f"app {self.name} {why}")
            return session
        worker = self._pick()
        if worker is not None:
            self.counters["accepted"] += 1
            self._arm_timeout(session)
            worker.start_session(session)
            return session
        if len(self.queue) >= self.profile.queue_limit:
            self.counters["rejected"] += 1
            session.fail(errors.ENGINE, errors.QUEUE_FULL, "queue is full")
            return session
        if self.state == BROKEN and not self._spawn_allowed():
            self.counters["rejected"] += 1
            wait = self._next_spawn_at - self.clock.seconds()
            session.fail(
                errors.ENGINE,
                errors.APP_BROKEN,
                f"app {self.name} is broken ({self.last_failure}); next attempt in {wait:.1f}s",
            )
            return session
        self.counters["accepted"] += 1
        self._arm_timeout(session)
        self.queue.append(session)
        self._rebalance()
        return session

    def _arm_timeout(self, session: Session) -> None:
        timeout = _request_timeout(session.headers, self.profile.request_timeout)
        session.timer = self.clock.callLater(timeout, self._timed_out, session, timeout)

    def _timed_out(self, session: Session, timeout: float) -> None:
        session.timer = None
        session.fail(
            errors.ENGINE, errors.TIMEOUT, f"request timed out after {timeout:g}s", tell_worker=True
        )

    def _pick(self) -> WorkerControl | None:
        best = None
        limit = self.profile.concurrency
        for worker in self._active:
            load = len(worker.sessions)
            if load < limit and (best is None or load < len(best.sessions)):
                best = worker
                if load == 0:
                    break
        return best

    def _session_finished(self, session: Session) -> None:
        worker = session.worker
        if worker is None:
            with contextlib.suppress(ValueError):
                self.queue.remove(session)
        else:
            worker.session_done(session)
            if self.queue and worker.state == ACTIVE:
                self._dispatch()
        self._maybe_drained()

    def _dispatch(self) -> None:
        queue = self.queue
        while queue:
            worker = self._pick()
            if worker is None:
                return
            worker.start_session(queue.popleft())

    # -- workers --------------------------------------------------------------------------

    def _live(self) -> int:
        return sum(
            1 for w in self.workers.values() if w.state in (SPAWNING, ACTIVE) and not w.retired
        )

    def _spawn_allowed(self) -> bool:
        return self.clock.seconds() >= self._next_spawn_at

    def _target(self) -> int:
        """How many live workers the queue and ``keep_alive`` ask for."""
        limit = self.profile.pool_limit
        target = self.wanted if self.state == RUNNING else 0
        if self.queue:
            grown = len(self.queue) // self.profile.effective_grow_threshold
            target = max(target, min(limit, max(1, grown)))
        if self.state == BROKEN:
            target = min(target, 1)  # one probe at a time while broken
        return target

    def _rebalance(self) -> None:
        if self.state not in SERVING:
            return
        target = self._target()
        live = self._live()
        if live >= target:
            return
        if not self._spawn_allowed():
            if self._respawn_call is None or not self._respawn_call.active():
                delay = self._next_spawn_at - self.clock.seconds()
                self._respawn_call = self.clock.callLater(delay, self._rebalance)
            return
        while live < target:
            self._spawn()
            live += 1

    def _spawn(self) -> None:
        uuid = str(uuidlib.uuid4())
        worker = WorkerControl(self, uuid)
        self.workers[uuid] = worker
        self.counters["spawned"] += 1
        argv = [
            *self.manifest.command,
            "--app",
            self.name,
            "--endpoint",
            self.socket_path,
            "--locator",
            self.locator_address,
            "--uuid",
            uuid,
            "--protocol",
            "1",
        ]
        hb = self.profile.heartbeat_timeout
        env = {
            **os.environ,
            **self.manifest.env,
            ENV_HEARTBEAT_INTERVAL: f"{hb / HEARTBEATS_PER_TIMEOUT:g}",
            ENV_DISOWN_TIMEOUT: f"{hb:g}",
        }
        self.log.debug("{app}: spawning worker {uuid}: {argv}", app=self.name, uuid=uuid, argv=argv)
        launched = maybeDeferred(
            self.launcher.launch, WorkerProcessProtocol(worker), argv, env, self.manifest.cwd
        )
        launched.addTimeout(self.profile.spawn_timeout, self.clock)
        launched.addCallbacks(worker.spawned, self._launch_failed, errbackArgs=(worker,))

    def _launch_failed(self, failure: Failure, worker: WorkerControl) -> None:
        self.log.error(
            "{app}: cannot start worker {uuid}: {error}",
            app=self.name,
            uuid=worker.uuid,
            error=failure.getErrorMessage(),
        )
        worker.ended(f"could not be started ({failure.getErrorMessage()})")

    def handshake(self, uuid: str) -> WorkerControl | None:
        return self.workers.get(uuid)

    def worker_ready(self, worker: WorkerControl) -> None:
        if self.state == BROKEN:
            self.log.info("{app}: worker started again; the app is no longer broken", app=self.name)
        if self.state == BROKEN:
            self.state = RUNNING
        self.failures = 0
        self._next_spawn_at = 0.0
        if self.state not in (RUNNING, DRAINING):
            worker.terminate("engine shutting down")
            return
        self._active.append(worker)
        self._dispatch()
        self._rebalance()

    def worker_leaving(self, worker: WorkerControl) -> None:
        """The worker takes no new sessions (terminating, discarded, connection lost)."""
        if worker in self._active:
            self._active.remove(worker)
        self._rebalance()

    def worker_gone(self, worker: WorkerControl, how: str) -> None:
        self.workers.pop(worker.uuid, None)
        if worker in self._active:
            self._active.remove(worker)
        if self.state == STOPPING:
            self._maybe_stopped()
            return
        if not worker.handshaken and not worker.retired:
            self._start_failed(worker, how)
        self._rebalance()
        self._maybe_drained()

    def _start_failed(self, worker: WorkerControl, how: str) -> None:
        self.failures += 1
        self.counters["crashed"] += 1
        self.last_failure = f"worker {how} before its handshake"
        delay = self.profile.backoff(self.failures)
        self._next_spawn_at = self.clock.seconds() + delay
        if self.failures >= self.profile.crash_limit:
            if self.state != BROKEN:
                self.log.error(
                    "{app}: app is broken: {failures} failed starts in a row ({why}); "
                    "retrying in {delay:.1f}s",
                    app=self.name,
                    failures=self.failures,
                    why=self.last_failure,
                    delay=delay,
                )
            if self.state != DRAINING:
                self.state = BROKEN
            while self.queue:
                self.queue.popleft().fail(
                    errors.ENGINE,
                    errors.APP_BROKEN,
                    f"app {self.name} is broken ({self.last_failure})",
                )
        else:
            self.log.warn(
                "{app}: failed start {failures} of {limit} ({why}); respawning in {delay:.1f}s",
                app=self.name,
                failures=self.failures,
                limit=self.profile.crash_limit,
                why=self.last_failure,
                delay=delay,
            )

    # -- state ----------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Pool and queue state, as the app service's ``info`` reports it."""
        workers = {
            w.uuid: {"state": w.state, "load": w.load, "pid": w.pid, "retired": w.retired}
            for w in self.workers.values()
        }
        return {
            "state": self.state,
            "pool": {
                "active": len(self._active),
                "spawning": sum(1 for w in self.workers.values() if w.state == SPAWNING),
                "capacity": self.profile.pool_limit,
                "workers": workers,
            },
            "queue": {"depth": len(self.queue), "capacity": self.profile.queue_limit},
            "sessions": sum(w.load for w in self.workers.values()),
            "keep-alive": self.wanted,
            "failures": self.failures,
            "last-failure": self.last_failure,
            "counters": dict(self.counters),
            "buffers": {
                **self.stats.as_dict(),
                "backlog-limit": self.profile.backlog_limit,
                "pending-limit": self.profile.max_message_size,
            },
            "profile": self.profile.as_dict(),
        }
