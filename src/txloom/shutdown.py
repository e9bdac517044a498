"""Graceful shutdown for txloom's twistd plugins.

twistd stops the reactor on SIGTERM and then kills itself with the same signal, so even a
clean, fully drained shutdown exits 143. Operators and supervisors read that as a crash.
Each plugin adds ``CleanExitOnSignal`` to its service tree: the signal stops the reactor
(which stops every service in order: listeners close, in-flight work drains) and the
process then exits 0.

The opposite case, a server that cannot go on (its data directory cannot be recovered, a
required connection is gone for good), calls ``stop_and_exit``: the reactor still stops
cleanly, and the process then ends with a non-zero status that a supervisor can act on.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger


class CleanExitOnSignal(Service):
    """Stop the reactor on SIGTERM/SIGINT without re-raising the signal afterwards.

    Draining is each service's own ``stopService``; this only decides how the process
    ends. A second signal during shutdown is logged and otherwise ignored.
    """

    log = Logger()

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._stopping = False

    def startService(self) -> None:
        super().startService()
        self.reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._received)

    def _received(self, number: int, frame: Any) -> None:
        name = signal.Signals(number).name
        if self._stopping:
            self.log.info("Received {name} again; shutdown is already under way.", name=name)
            return
        self._stopping = True
        self.log.info("Received {name}, shutting down.", name=name)
        self.reactor.callFromThread(self.reactor.stop)


class StartFailed(Exception):
    """A server cannot start (port in use, data directory locked...); the message is the
    one line an operator needs.

    Raised from ``privilegedStartService``/``startService`` under twistd. It is an
    ``Exception`` (not ``SystemExit``) so that twistd's own start-up handling sees it: in
    daemon mode the reason goes through twistd's status pipe to the waiting parent, which
    prints it on its stderr and exits 1, and the pidfile is removed, as with ``-n``. The
    process then ends with status 1 and that one line instead of a traceback, and without
    waiting for threads the failed start left behind.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        _report_start_failures()

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        cls.__module__ = StartFailed.__module__


# twistd's status pipe carries the first 100 bytes of "module.Class: message"; a bare
# class name leaves that room to the message
StartFailed.__module__ = "builtins"

_hook_installed = False


def _report_start_failures() -> None:
    global _hook_installed
    if _hook_installed:
        return
    _hook_installed = True
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if not issubclass(kind, StartFailed):
            previous(kind, value, tb)
            return
        sys.stderr.write(f"{value}\n")
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(1)

    sys.excepthook = hook


def stop_and_exit(reactor: Any, code: int = 1) -> None:
    """Stop the reactor; once twistd has finished its own shutdown, exit with ``code``.

    Only for processes run by twistd: the status is applied at interpreter exit (after the
    pidfile is removed and the log is flushed), so calling this inside a test run would end
    the test run with ``code``.
    """

    def exit_with_code() -> None:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code)

    atexit.register(exit_with_code)
    if reactor.running:
        reactor.stop()
    else:
        reactor.callWhenRunning(reactor.stop)
