"""The engine's side of one worker: handshake, heartbeats, sessions, terminate, death.

A ``WorkerControl`` lives from spawn until the process has been reaped::

    spawning --handshake--> active --terminate/idle--> terminating --exit--> gone
        |                      |--missed heartbeats--> discarded (SIGKILL) --exit--> gone
        '--no handshake in time / exit before handshake--> gone (a failed start)

Whatever the way out, every session still on the worker gets an error: the one the engine
chose (discarded, shutting down) or "worker has been lost". ``WorkerConnection`` is the
protocol on the app's Unix socket; its first message must be a handshake naming a uuid the
pool spawned.

The socket is never paused for one session's sake (that would stall the others); when
the worker does not keep up with what callers send, the connections feeding it are
paused instead (``WorkerConnection.hold``) until the socket's send buffer has drained.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from txloom.wire.cocaine import (
    CHOKE,
    CONTROL_CHANNEL,
    ERROR,
    HANDSHAKE,
    HEARTBEAT,
    TERMINATE,
    HeaderEntry,
    Message,
)
from txloom.worker import errors
from txloom.worker.connection import MessageConnection
from txloom.worker.process import GroupSweep

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from txloom.worker.pool import WorkerPool
    from txloom.worker.session import Session

SPAWNING = "spawning"
ACTIVE = "active"
TERMINATING = "terminating"
GONE = "gone"

#: Terminate codes of the protocol.
TERMINATE_NORMAL = 1
TERMINATE_ABNORMAL = 2

#: Channels of sessions that ended before the worker closed them, remembered per worker
#: so that what the worker still sends on them is dropped quietly (oldest forgotten first).
MAX_ABANDONED_CHANNELS = 1024


class WorkerControl:
    """One worker process as the engine sees it."""

    log = Logger()

    def __init__(self, pool: WorkerPool, uuid: str) -> None:
        self.pool = pool
        self.app = pool.name
        self.uuid = uuid
        self.clock = pool.clock
        self.profile = pool.profile
        self.state = SPAWNING
        self.process: Any = None
        self.connection: WorkerConnection | None = None
        self.sessions: dict[int, Session] = {}
        #: Channels whose session ended while the worker still had them open.
        self.abandoned: dict[int, None] = {}
        self.next_channel = 2
        self.spawned_at = self.clock.seconds()
        self.last_seen = self.spawned_at
        self.idle_since = self.spawned_at
        #: What in-flight sessions are told when the engine ends the worker on purpose.
        self.end_error: tuple[int, str] | None = None
        self.handshaken = False
        #: Started from a manifest a reload has replaced: no new sessions, ends when idle.
        self.retired = False
        self._handshake_timer: IDelayedCall | None = self.clock.callLater(
            self.profile.handshake_timeout, self._handshake_overdue
        )
        self._heartbeat_timer: IDelayedCall | None = None
        self._idle_timer: IDelayedCall | None = None
        self._kill_timer: IDelayedCall | None = None

    def __repr__(self) -> str:
        return f"<WorkerControl {self.app} {self.uuid} {self.state} load={len(self.sessions)}>"

    @property
    def load(self) -> int:
        return len(self.sessions)

    @property
    def pid(self) -> int | None:
        return getattr(self.process, "pid", None)

    @property
    def connected(self) -> bool:
        return self.connection is not None

    # -- process and connection ---------------------------------------------------------

    def spawned(self, process: Any) -> None:
        self.process = process
        if self.state != SPAWNING:  # terminated while the launcher was busy
            self.kill()

    def bind(self, connection: WorkerConnection) -> bool:
        """The worker's handshake arrived on ``connection``; False if it comes too late."""
        if self.state != SPAWNING or self.connection is not None:
            return False
        self.connection = connection
        self.handshaken = True
        self.state = ACTIVE
        self._cancel("_handshake_timer")
        now = self.clock.seconds()
        self.last_seen = now
        self.idle_since = now
        self._heartbeat_timer = self.clock.callLater(
            self.profile.heartbeat_timeout, self._check_heartbeat
        )
        self._arm_idle()
        self.log.info(
            "{app}: worker {uuid} ready (pid {pid}, {elapsed:.3f}s after spawn)",
            app=self.app,
            uuid=self.uuid,
            pid=self.pid,
            elapsed=now - self.spawned_at,
        )
        self.pool.worker_ready(self)
        return True

    def send(
        self,
        channel: int,
        mtype: int,
        args: Sequence[Any],
        headers: Sequence[HeaderEntry] | None = None,
    ) -> None:
        if self.connection is not None:
            self.connection.send(channel, mtype, args, headers)

    def forward(self, channel: int, mtype: int, args: Sequence[Any], feeder: Any) -> None:
        """A caller's message on a session; its ``feeder`` waits if the worker lags."""
        connection = self.connection
        if connection is not None:
            connection.send(channel, mtype, args)
            if connection.congested and feeder is not None:
                connection.hold(feeder)

    def message(self, msg: Message) -> None:
        """A message from the worker after its handshake."""
        if msg.channel == CONTROL_CHANNEL:
            if msg.type == HEARTBEAT:
                self.send(CONTROL_CHANNEL, HEARTBEAT, [])
            elif msg.type == TERMINATE:
                if self.state == TERMINATING:  # the echo of our own terminate
                    return
                self.log.info(
                    "{app}: worker {uuid} asks to terminate: {args!r:.120}",
                    app=self.app,
                    uuid=self.uuid,
                    args=msg.args,
                )
                if self.state == ACTIVE:
                    self.state = TERMINATING
                    self.pool.worker_leaving(self)
                self._arm_kill()
            else:
                self.log.warn(
                    "{app}: worker {uuid} sent unknown control message {mtype}",
                    app=self.app,
                    uuid=self.uuid,
                    mtype=msg.type,
                )
            return
        session = self.sessions.get(msg.channel)
        if session is None:
            if msg.channel in self.abandoned:
                # the session was failed or cancelled; the worker has not heard yet
                if msg.type in (CHOKE, ERROR):
                    del self.abandoned[msg.channel]
                return
            self.log.debug(
                "{app}: worker {uuid} wrote on channel {channel} which has no session",
                app=self.app,
                uuid=self.uuid,
                channel=msg.channel,
            )
            return
        session.from_worker(msg.type, msg.args)

    def connection_lost(self) -> None:
        self.connection = None
        if self.state == ACTIVE:
            self.log.warn(
                "{app}: worker {uuid} closed its connection; killing it",
                app=self.app,
                uuid=self.uuid,
            )
            self.state = TERMINATING
            self.pool.worker_leaving(self)
            self.kill()
        if self.process is None:
            self._fail_sessions()
        # otherwise the sessions fail when the process has ended, with how it ended

    def process_exited(self, exit_code: int | None, sig: int | None, process: Any) -> None:
        """The worker process has exited; what it started is swept (``GroupSweep``)."""
        self.pool.sweeping(GroupSweep(process, self.clock, self.profile.terminate_timeout).start())
        self.ended(f"killed by signal {sig}" if sig else f"exited with code {exit_code}")

    def ended(self, how: str) -> None:
        """The process is gone (or never started): fail what is left, leave the pool."""
        was = self.state
        self.state = GONE
        for name in ("_handshake_timer", "_heartbeat_timer", "_idle_timer", "_kill_timer"):
            self._cancel(name)
        if self.end_error is None:
            self.end_error = (errors.WORKER_LOST, f"worker has been lost ({how})")
        if was == ACTIVE or (self.handshaken and self.end_error[0] == errors.WORKER_LOST):
            self.log.warn("{app}: worker {uuid} {how}", app=self.app, uuid=self.uuid, how=how)
        else:
            self.log.info("{app}: worker {uuid} {how}", app=self.app, uuid=self.uuid, how=how)
        self._fail_sessions()
        if self.connection is not None:
            self.connection.transport.loseConnection()
        self.pool.worker_gone(self, how)

    # -- ending ---------------------------------------------------------------------------

    def terminate(self, reason: str, end_error: tuple[int, str] | None = None) -> None:
        """Ask the worker to exit; SIGKILL it if it is still there after terminate-timeout."""
        if end_error is not None:
            self.end_error = end_error
        if self.state == GONE:
            return
        if self.state == SPAWNING and self.connection is None:
            self.state = TERMINATING
            self.kill()
            return
        if self.state == ACTIVE:
            self.state = TERMINATING
            self.pool.worker_leaving(self)
        self.send(CONTROL_CHANNEL, TERMINATE, [TERMINATE_NORMAL, reason])
        self._arm_kill()

    def retire(self, reason: str) -> None:
        """Take no new sessions; terminate once those running have ended (a reload)."""
        if self.retired or self.state == GONE:
            return
        self.retired = True
        if self.state == SPAWNING:
            self.terminate(reason)  # not serving yet: a new worker is started instead
        elif self.state == ACTIVE:
            self.pool.worker_leaving(self)
            if not self.sessions:
                self.terminate(reason)

    def discard(self, reason: str) -> None:
        """The worker cannot be trusted any more: fail its sessions and SIGKILL it now."""
        if self.state == GONE:
            return
        self.log.warn(
            "{app}: discarding worker {uuid}: {reason}", app=self.app, uuid=self.uuid, reason=reason
        )
        self.end_error = (errors.WORKER_DISCARDED, f"worker has been discarded: {reason}")
        if self.state == ACTIVE:
            self.pool.worker_leaving(self)
        self.state = TERMINATING
        self._fail_sessions()
        self.send(CONTROL_CHANNEL, TERMINATE, [TERMINATE_ABNORMAL, reason])
        self.kill()

    def kill(self) -> None:
        if self.process is None or self.state == GONE:
            return
        with contextlib.suppress((ProcessExitedAlready, OSError)):
            self.process.signalProcess("KILL")

    def signal(self, name: str) -> None:
        """Send a signal by name (``"STOP"``, ``"CONT"``...); for operators and tests."""
        if self.process is not None and self.pid is not None:
            os.kill(self.pid, getattr(signal, f"SIG{name}"))

    def _fail_sessions(self) -> None:
        if not self.sessions:
            return
        code, reason = self.end_error or (errors.WORKER_LOST, "worker has been lost")
        for session in list(self.sessions.values()):
            session.fail(errors.ENGINE, code, reason)
        self.sessions.clear()

    # -- sessions -------------------------------------------------------------------------

    def start_session(self, session: Session) -> None:
        channel = self.next_channel
        self.next_channel += 1
        self.sessions[channel] = session
        session.attach(self, channel)

    def session_done(self, session: Session) -> None:
        if self.sessions.pop(session.channel, None) is None:
            return
        if not session.worker_ended:
            abandoned = self.abandoned
            abandoned[session.channel] = None
            if len(abandoned) > MAX_ABANDONED_CHANNELS:
                del abandoned[next(iter(abandoned))]
        if not self.sessions:
            if self.retired and self.state == ACTIVE:
                self.terminate("app reloaded")
                return
            self.idle_since = self.clock.seconds()
            self._arm_idle()

    # -- timers ---------------------------------------------------------------------------

    def touch(self) -> None:
        self.last_seen = self.clock.seconds()

    def _cancel(self, name: str) -> None:
        timer = getattr(self, name)
        if timer is not None:
            if timer.active():
                timer.cancel()
            setattr(self, name, None)

    def _handshake_overdue(self) -> None:
        self._handshake_timer = None
        if self.state == SPAWNING:
            self.log.warn(
                "{app}: worker {uuid} sent no handshake within {timeout}s; killing it",
                app=self.app,
                uuid=self.uuid,
                timeout=self.profile.handshake_timeout,
            )
            self.state = TERMINATING
            self.kill()

    def _check_heartbeat(self) -> None:
        self._heartbeat_timer = None
        if self.state not in (ACTIVE, TERMINATING) or self.connection is None:
            return
        due = self.last_seen + self.profile.heartbeat_timeout
        now = self.clock.seconds()
        if now >= due:
            self.pool.heartbeat_misses += 1
            self.discard(f"no heartbeat for {now - self.last_seen:.1f}s")
        else:
            self._heartbeat_timer = self.clock.callLater(due - now, self._check_heartbeat)

    def _arm_idle(self) -> None:
        timeout = self.profile.idle_timeout
        if timeout > 0 and self._idle_timer is None and self.state == ACTIVE:
            due = self.idle_since + timeout - self.clock.seconds()
            self._idle_timer = self.clock.callLater(max(0.0, due), self._check_idle)

    def _check_idle(self) -> None:
        self._idle_timer = None
        if self.state != ACTIVE or self.sessions:
            return
        idle = self.clock.seconds() - self.idle_since
        if self.pool.keeps(self):  # kept by the app service's control method
            self.idle_since = self.clock.seconds()
            self._arm_idle()
        elif idle >= self.profile.idle_timeout:
            self.log.info(
                "{app}: worker {uuid} idle for {idle:.1f}s; terminating it",
                app=self.app,
                uuid=self.uuid,
                idle=idle,
            )
            self.terminate("idle")
        else:
            self._arm_idle()

    def _arm_kill(self) -> None:
        if self._kill_timer is None and self.state != GONE:
            self._kill_timer = self.clock.callLater(self.profile.terminate_timeout, self._overdue)

    def _overdue(self) -> None:
        self._kill_timer = None
        if self.state != GONE:
            self.log.warn(
                "{app}: worker {uuid} still running {timeout}s after terminate; SIGKILL",
                app=self.app,
                uuid=self.uuid,
                timeout=self.profile.terminate_timeout,
            )
            self.kill()


@implementer(IPushProducer)
class WorkerConnection(MessageConnection):
    """A worker's connection to its app's Unix socket.

    It is its transport's push producer only to learn when the worker stops keeping up
    (``congested``); it never stops writing. A caller's connection that sends to a
    congested worker is paused (``hold``) and resumed once the send buffer has drained
    or the worker has gone.
    """

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.control: WorkerControl | None = None
        self.max_message_size = pool.profile.max_message_size
        #: True while the transport's send buffer is full.
        self.congested = False
        #: Bytes written since the send buffer filled (what runs past it).
        self.overshoot = 0
        self._feeders: set[Any] = set()
        self._waiting: list[Session] = []
        #: Sessions whose callers read slower than the worker writes (see ``lagging``).
        self._lagging: set[Session] = set()
        self._reading_paused = False
        self._paused_at = 0.0
        self._no_pause_until = 0.0
        self._stall_timer: Any = None

    def connectionMade(self) -> None:
        MessageConnection.connectionMade(self)
        self.watch_send_buffer()

    def send(
        self,
        channel: int,
        mtype: int,
        args: Sequence[Any] = (),
        headers: Sequence[HeaderEntry] | None = None,
    ) -> None:
        data = self._encoder.encode(channel, mtype, args, headers)
        if self.congested:
            self.overshoot += len(data)
            stats = self.pool.stats
            stats.overshoot_peak = max(stats.overshoot_peak, self.overshoot)
        self.transport.write(data)

    def hold(self, feeder: Any) -> None:
        """Stop reading from ``feeder`` (a caller's connection) until the worker drains."""
        if feeder not in self._feeders:
            self._feeders.add(feeder)
            self.pool.stats.throttled += 1
            feeder.pause_reading(self)

    def when_drained(self, session: Session) -> None:
        """Have ``session`` pass on its queued messages once the send buffer has drained."""
        if session not in self._waiting:
            self._waiting.append(session)

    def _release(self) -> None:
        # feeders first: they are read again only later, on the reactor's next turn, and
        # a session that fills the buffer again below holds its feeder anew
        feeders, self._feeders = self._feeders, set()
        for feeder in feeders:
            feeder.resume_reading(self)
        waiting, self._waiting = self._waiting, []
        for session in waiting:
            session.flush_pending()

    # -- pacing the worker to a caller that reads slower than it writes ------------------

    def lagging(self, session: Session) -> None:
        """``session``'s backlog is growing: stop reading from the worker for a moment.

        Reading resumes when every lagging session has caught up, or after stall-limit
        seconds at most; the worker is not paused again for as long as it just was, so
        its other sessions get at least half of the time. A caller that does not catch
        up within that is left to its backlog-limit.
        """
        self._lagging.add(session)
        self._maybe_pause()

    def caught_up(self, session: Session) -> None:
        self._lagging.discard(session)
        if not self._lagging and self._reading_paused:
            self._resume_reading(overdue=False)

    def _maybe_pause(self) -> None:
        stall = self.pool.profile.stall_limit
        if self._reading_paused or not self._lagging or stall <= 0 or self.transport is None:
            return
        clock = self.pool.clock
        now = clock.seconds()
        if now < self._no_pause_until:
            if self._stall_timer is None:
                self._stall_timer = clock.callLater(self._no_pause_until - now, self._retry)
            return
        self._reading_paused = True
        self._paused_at = now
        self.pool.stats.stalls += 1
        self.transport.pauseProducing()
        self._stall_timer = clock.callLater(stall, self._resume_reading, True)

    def _retry(self) -> None:
        self._stall_timer = None
        self._maybe_pause()

    def _resume_reading(self, overdue: bool) -> None:
        timer, self._stall_timer = self._stall_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        if not self._reading_paused:
            return
        self._reading_paused = False
        now = self.pool.clock.seconds()
        self._no_pause_until = now + (now - self._paused_at)
        if overdue:
            self._lagging.clear()  # too slow to be waited for: their backlog-limit decides
        self.transport.resumeProducing()

    # -- IPushProducer: the worker's side of the socket ----------------------------------

    def pauseProducing(self) -> None:
        self.congested = True

    def resumeProducing(self) -> None:
        self.congested = False
        self.overshoot = 0
        if self._feeders or self._waiting:
            self._release()

    def stopProducing(self) -> None:
        pass  # connectionLost releases the feeders

    def dataReceived(self, data: bytes) -> None:
        control = self.control
        if control is not None:
            control.last_seen = control.clock.seconds()
        MessageConnection.dataReceived(self, data)

    def messageReceived(self, message: Message) -> None:
        control = self.control
        if control is not None:
            control.message(message)
            return
        if (
            message.channel == CONTROL_CHANNEL
            and message.type == HANDSHAKE
            and len(message.args) == 1
            and isinstance(message.args[0], bytes)
        ):
            uuid = message.args[0].decode("utf-8", "replace")
            control = self.pool.handshake(uuid)
            if control is not None and control.bind(self):
                self.control = control
                return
            self.log.warn(
                "{app}: handshake from unknown or late worker {uuid!r}; dropping it",
                app=self.pool.name,
                uuid=uuid,
            )
        else:
            self.log.warn(
                "{app}: expected a handshake, got {message!r:.120}; dropping the connection",
                app=self.pool.name,
                message=message,
            )
        self.transport.abortConnection()

    def connectionLost(self, reason: object = None) -> None:
        self.congested = False
        self._waiting = []  # the worker's sessions fail with it
        self._lagging.clear()
        if self._stall_timer is not None and self._stall_timer.active():
            self._stall_timer.cancel()
        self._stall_timer = None
        self._release()
        if self.control is not None:
            control, self.control = self.control, None
            control.connection_lost()
