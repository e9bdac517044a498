"""Worker processes: starting them, and reporting what they print in the host log.

``ProcessLauncher`` is the default ``IWorkerLauncher``: a plain ``reactor.spawnProcess``.
``WorkerProcessProtocol`` turns the worker's stdout and stderr into log events tagged with
the app and the worker's uuid (one event per line, long lines cut), and tells the worker's
``WorkerControl`` when the process has ended.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txloom.interfaces import IWorkerLauncher

if TYPE_CHECKING:
    from txloom.worker.control import WorkerControl

#: A line of worker output longer than this is logged in pieces of this size.
MAX_LOG_LINE = 16 * 1024

_STREAMS = {1: "stdout", 2: "stderr"}


@implementer(IWorkerLauncher)
class ProcessLauncher:
    """Starts each worker as a child process of the host."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def launch(
        self,
        protocol: ProcessProtocol,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str,
    ) -> Any:
        transport = self.reactor.spawnProcess(
            protocol,
            argv[0],
            list(argv),
            env=dict(env),
            path=cwd,
            childFDs={0: "w", 1: "r", 2: "r"},
        )
        transport.closeStdin()
        return transport


class WorkerProcessProtocol(ProcessProtocol):
    """Output and exit of one worker process."""

    log = Logger()

    def __init__(self, control: WorkerControl) -> None:
        self.control = control
        self._partial: dict[int, bytes] = {1: b"", 2: b""}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        buffered = self._partial.get(childFD, b"") + data
        *lines, rest = buffered.split(b"\n")
        while len(rest) > MAX_LOG_LINE:
            lines.append(rest[:MAX_LOG_LINE])
            rest = rest[MAX_LOG_LINE:]
        self._partial[childFD] = rest
        for line in lines:
            self._emit(childFD, line)

    def _emit(self, fd: int, line: bytes) -> None:
        for start in range(0, max(len(line), 1), MAX_LOG_LINE):
            text = line[start : start + MAX_LOG_LINE].decode("utf-8", "replace").rstrip("\r")
            self.log.info(
                "[{app} {uuid}] {line}",
                app=self.control.app,
                uuid=self.control.uuid,
                stream=_STREAMS.get(fd, str(fd)),
                line=text,
            )

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in self._partial.items():
            if rest:
                self._emit(fd, rest)
        self._partial = {1: b"", 2: b""}
        exit_code = getattr(reason.value, "exitCode", None)
        signal = getattr(reason.value, "signal", None)
        self.control.process_ended(exit_code, signal)
