"""Worker processes: starting them, ending everything they started, logging what they print.

``ProcessLauncher`` is the default ``IWorkerLauncher``. It starts each worker as the leader
of a new session (``setsid``), so the worker and whatever it starts (a helper from
``subprocess.Popen``, a forked child) form one process group, and signalling the worker's
transport signals that whole group. That is what lets the host end an app completely: a
helper that outlives its worker is terminated with it, and never keeps the host waiting.

``WorkerProcessProtocol`` turns the worker's stdout and stderr into log events tagged with
the app and the worker's uuid (one event per line, long lines cut), except that a Python
traceback on stderr is one event at error level: with the line just before it (the
worker library's "handler failed" heading) when it came in the same read, its chained
parts, and its final exception line, so that one failure is one log entry an operator
can find by app. It tells the worker's
``WorkerControl`` as soon as the worker process itself has exited (``processExited``),
not when its pipes close: a child that inherited them may hold them open for ever.
``GroupSweep`` then ends what the worker left behind.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.process import Process
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txloom.interfaces import IWorkerLauncher

if TYPE_CHECKING:
    from txloom.worker.control import WorkerControl

#: A line of worker output longer than this is logged in pieces of this size.
MAX_LOG_LINE = 16 * 1024

#: How often a sweep checks whether anything of an exited worker's group is left (s).
SWEEP_INTERVAL = 0.05

#: Pipes still open this long after a worker's group is gone are held by a process that
#: left the group on purpose (a daemon that called ``setsid``); they are closed then, so
#: the host never waits on them nor keeps their descriptors.
PIPE_GRACE = 1.0

#: How long a sweep waits for a SIGKILLed group to be gone before it stops looking (s).
KILL_WAIT = 1.0

#: A traceback is logged once a line that is not part of it arrives, or this long after its
#: last line (s): a worker that fails and then prints nothing still has it logged.
TRACEBACK_GRACE = 0.2

#: Longest traceback kept as one event, in lines; longer ones are logged in parts.
MAX_TRACEBACK_LINES = 400

_TRACEBACK_STARTS = ("Traceback (most recent call last):", "Exception Group Traceback")
_CHAINED = ("During handling of the above exception", "The above exception was the direct cause")

_STREAMS = {1: "stdout", 2: "stderr"}
_NAMED_SIGNALS = ("HUP", "STOP", "INT", "KILL", "TERM")


class WorkerProcess(Process):
    """A child process that leads its own session; signals reach its whole group.

    ``signalProcess`` works on the group, also after the leader itself has exited, until
    nothing of the group is left (then it raises ``ProcessExitedAlready``, as for a plain
    process). ``signalProcess(0)`` only checks that something of the group is alive.
    """

    #: The process group (the leader's pid) until it is known to be empty.
    group: int | None = None

    def _trySpawnInsteadOfFork(self, *args: Any) -> bool:
        return False  # Twisted's posix_spawnp call cannot start a new session: fork

    def _setupChild(self, fdmap: dict[int, int]) -> None:
        os.setsid()
        super()._setupChild(fdmap)

    def _fork(self, *args: Any, **kwargs: Any) -> None:
        super()._fork(*args, **kwargs)
        self.group = self.pid

    def signalProcess(self, signalID: str | int) -> None:
        number = getattr(signal, f"SIG{signalID}") if signalID in _NAMED_SIGNALS else signalID
        if self.group is None:
            raise ProcessExitedAlready()
        try:
            os.killpg(self.group, number)
        except ProcessLookupError:
            if self.pid is not None:  # the child has not called setsid yet
                super().signalProcess(number)
                return
            self.group = None
            raise ProcessExitedAlready() from None


@implementer(IWorkerLauncher)
class ProcessLauncher:
    """Starts each worker as a child process of the host, in a session of its own."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def launch(
        self,
        protocol: ProcessProtocol,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str,
    ) -> Any:
        transport = WorkerProcess(
            self.reactor,
            argv[0],
            list(argv),
            dict(env),
            cwd,
            protocol,
            childFDs={0: "w", 1: "r", 2: "r"},
        )
        transport.closeStdin()
        return transport


class GroupSweep:
    """Ends what an exited worker left behind in its process group.

    SIGTERM at once; SIGKILL once ``grace`` seconds have passed with something still
    there. ``done`` fires when nothing of the group is left, at the latest ``KILL_WAIT``
    after the SIGKILL (what is left then are remains not reaped yet by their new parent).
    A launcher's transport that cannot signal a group simply reports it gone.
    """

    def __init__(self, process: Any, clock: Any, grace: float) -> None:
        self.process = process
        self.clock = clock
        self.deadline = clock.seconds() + grace
        self.done: Deferred[None] = Deferred()
        self.killed = False
        self._call: Any = None

    def start(self) -> Deferred[None]:
        if self._signal("TERM"):
            self._call = self.clock.callLater(SWEEP_INTERVAL, self._check)
        else:
            self._finish()
        return self.done

    def _signal(self, sig: str | int) -> bool:
        """Send ``sig`` to the group; False once nothing of it is left."""
        if self.process is None:
            return False
        try:
            self.process.signalProcess(sig)
        except (ProcessExitedAlready, OSError):
            return False
        return True

    def _check(self) -> None:
        self._call = None
        if not self._signal(0):
            self._finish()
            return
        now = self.clock.seconds()
        if now >= self.deadline:
            if self.killed:  # only unreaped remains are left; they hold nothing
                self._finish()
                return
            self.killed = True
            self._signal("KILL")
            self.deadline = now + KILL_WAIT
        self._call = self.clock.callLater(SWEEP_INTERVAL, self._check)

    def _finish(self) -> None:
        if getattr(self.process, "pipes", None):
            self.clock.callLater(PIPE_GRACE, self._close_pipes)
        self.done.callback(None)

    def _close_pipes(self) -> None:
        if getattr(self.process, "pipes", None):
            self.process.loseConnection()


class WorkerProcessProtocol(ProcessProtocol):
    """Output and exit of one worker process."""

    log = Logger()

    def __init__(self, control: WorkerControl) -> None:
        self.control = control
        self._partial: dict[int, bytes] = {1: b"", 2: b""}
        #: Lines of the stderr traceback being collected, if one is.
        self._traceback: list[str] | None = None
        #: Its final exception line has been seen (what follows may still chain to it).
        self._traceback_closed = False
        self._traceback_timer: Any = None

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        buffered = self._partial.get(childFD, b"") + data
        *lines, rest = buffered.split(b"\n")
        while len(rest) > MAX_LOG_LINE:
            lines.append(rest[:MAX_LOG_LINE])
            rest = rest[MAX_LOG_LINE:]
        self._partial[childFD] = rest
        if childFD != 2:
            for line in lines:
                self._emit(childFD, line)
            return
        texts = [
            _text(line[start : start + MAX_LOG_LINE])
            for line in lines
            for start in range(0, max(len(line), 1), MAX_LOG_LINE)
        ]
        for i, text in enumerate(texts):
            if (
                self._traceback is None
                and i + 1 < len(texts)
                and texts[i + 1].startswith(_TRACEBACK_STARTS)
            ):
                self._traceback = [text]  # the heading written with the traceback
                self._traceback_closed = False
                continue
            self._stderr_line(text)

    def _emit(self, fd: int, line: bytes) -> None:
        for start in range(0, max(len(line), 1), MAX_LOG_LINE):
            self._info(fd, _text(line[start : start + MAX_LOG_LINE]))

    def _info(self, fd: int, text: str) -> None:
        self.log.info(
            "[{app} {uuid}] {line}",
            app=self.control.app,
            uuid=self.control.uuid,
            stream=_STREAMS.get(fd, str(fd)),
            line=text,
        )

    def _stderr_line(self, text: str) -> None:
        lines = self._traceback
        if lines is None:
            if text.startswith(_TRACEBACK_STARTS):
                self._traceback = [text]
                self._traceback_closed = False
                self._arm_traceback()
            else:
                self._info(2, text)
            return
        starts = text.lstrip(" +|").startswith(_TRACEBACK_STARTS)
        part_of_it = not text or text[0].isspace() or text.startswith(_CHAINED) or starts
        if self._traceback_closed and not part_of_it:
            self._log_traceback()
            self._stderr_line(text)
            return
        lines.append(text)
        if starts:
            self._traceback_closed = False  # a chained traceback follows
        elif not part_of_it:
            self._traceback_closed = True  # "ValueError: boom"
        if len(lines) >= MAX_TRACEBACK_LINES:
            self._log_traceback()
        else:
            self._arm_traceback()

    def _arm_traceback(self) -> None:
        if self._traceback_timer is not None and self._traceback_timer.active():
            self._traceback_timer.cancel()
        self._traceback_timer = self.control.clock.callLater(TRACEBACK_GRACE, self._log_traceback)

    def _log_traceback(self) -> None:
        timer, self._traceback_timer = self._traceback_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        lines, self._traceback = self._traceback, None
        if not lines:
            return
        self.log.error(
            "[{app} {uuid}] {traceback}",
            app=self.control.app,
            uuid=self.control.uuid,
            stream="stderr",
            traceback="\n".join(lines).rstrip(),
        )

    def processExited(self, reason: Failure) -> None:
        """The worker process is gone (its pipes may live on in children it left)."""
        exit_code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        self.control.process_exited(exit_code, sig, self.transport)

    def processEnded(self, reason: Failure) -> None:
        """Every pipe is closed too: log what was left of an unfinished line."""
        for fd, rest in self._partial.items():
            if rest:
                if fd == 2:
                    self._stderr_line(_text(rest))
                else:
                    self._emit(fd, rest)
        self._partial = {1: b"", 2: b""}
        self._log_traceback()


def _text(line: bytes) -> str:
    return line.decode("utf-8", "replace").rstrip("\r")
