"""Real child processes for tests: ``twistd`` plugins and plain Python scripts.

A ``ChildProcess`` collects every line its child prints (stdout and stderr together) on a
reader thread, so a test can wait for the line that proves readiness ("listening on ...")
instead of sleeping, and every failure message carries the child's log tail.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from twisted.internet import threads
from twisted.internet.defer import Deferred

#: Where the virtualenv's console scripts live (twistd, nats-server, ...).
BIN_DIR = Path(sys.executable).parent

DEFAULT_TIMEOUT = 20.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for configs that need a port up front)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ChildProcess:
    """One child process whose output the test can wait on."""

    def __init__(
        self,
        argv: Sequence[str],
        cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.cwd = cwd
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> ChildProcess:
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def tail(self, n: int = 40) -> str:
        with self._changed:
            return "\n".join(self.lines[-n:])

    def wait_for(
        self, pattern: str, timeout: float = DEFAULT_TIMEOUT, start: int = 0
    ) -> re.Match[str]:
        """Block until a line (from index ``start`` on) matches ``pattern``; return the match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        index = start
        with self._changed:
            while True:
                while index < len(self.lines):
                    match = regex.search(self.lines[index])
                    if match:
                        return match
                    index += 1
                assert self.proc is not None
                if self.proc.poll() is not None and not (self._reader and self._reader.is_alive()):
                    raise AssertionError(
                        f"{self.argv[:3]} exited with {self.proc.returncode} before printing "
                        f"{pattern!r}; output:\n{self.tail()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"no line matching {pattern!r} within {timeout}s; output:\n{self.tail()}"
                    )
                self._changed.wait(min(remaining, 0.5))

    def when(self, pattern: str, timeout: float = DEFAULT_TIMEOUT, start: int = 0) -> Deferred:
        """``wait_for`` without blocking the reactor: fires with the match."""
        return threads.deferToThread(self.wait_for, pattern, timeout, start)

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait for the child to exit and return its exit code."""
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.argv[:3]} still running after {timeout}s; output:\n{self.tail()}"
            ) from None
        if self._reader is not None:
            self._reader.join(5)
        return code

    def terminate(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """SIGTERM, then wait; the exit code is returned (graceful shutdown is tested on it)."""
        self.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the child and everything in its session (workers it spawned included)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        if self._reader is not None:
            self._reader.join(5)

    def __enter__(self) -> ChildProcess:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def twistd(
    plugin: str,
    *args: str,
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
) -> ChildProcess:
    """A ``twistd --nodaemon PLUGIN ARGS`` child (not started), logging to its stdout."""
    argv = [str(BIN_DIR / "twistd"), "--nodaemon", "--pidfile=", plugin, *args]
    return ChildProcess(argv, cwd=cwd, env=env)


def python(
    *args: str, cwd: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None
) -> ChildProcess:
    """A ``python ARGS`` child (not started) with this interpreter."""
    return ChildProcess([sys.executable, *args], cwd=cwd, env=env)


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` runs (a zombie, dead but not reaped yet, does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
