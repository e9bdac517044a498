"""Worker host test helpers: app directories, an in-process host, one-shot calls."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from txloom.worker.client import Service, connect
from txloom.worker.host import WorkerHost

#: The tests' worker script (one event per behaviour under test).
TESTWORKER = Path(__file__).resolve().parent.parent / "worker" / "apps" / "testworker.py"
TESTWORKER_COMMAND = ["{python}", str(TESTWORKER)]

#: Short timeouts, so that failure handling is seen within a test's time.
FAST_PROFILE = {
    "heartbeat-timeout": 2.0,
    "terminate-timeout": 2.0,
    "handshake-timeout": 10.0,
    "spawn-timeout": 5.0,
}


@contextmanager
def short_tmpdir() -> Iterator[Path]:
    """A directory with a short path (Unix socket paths are limited to ~104 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="txl-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_app(apps: Path, name: str, command: list[str] | None = None, **fields: Any) -> Path:
    """A JSON manifest for app ``name`` (the test worker unless ``command`` says otherwise)."""
    profile = {**FAST_PROFILE, **fields.pop("profile", {})}
    manifest = {"name": name, "command": command or TESTWORKER_COMMAND, "profile": profile}
    manifest.update(fields)
    path = apps / f"{name}.json"
    path.write_text(json.dumps(manifest))
    return path


def start_host(root: Path, apps: dict[str, dict[str, Any]], http: bool = False) -> WorkerHost:
    """A started in-process host on ephemeral ports serving ``apps`` (name -> fields)."""
    (root / "apps").mkdir(exist_ok=True)
    for name, fields in apps.items():
        write_app(root / "apps", name, **fields)
    host = WorkerHost(
        root / "apps",
        root / "run",
        locator="tcp:0:interface=127.0.0.1",
        http="tcp:0:interface=127.0.0.1" if http else None,
    )
    host.startService()
    return host


async def call(
    host: WorkerHost, app: str, event: str, chunks: Iterable[bytes] = (), headers: Any = None
) -> bytes:
    """Enqueue ``event`` with ``chunks`` through the Locator; the joined reply."""
    service: Service = await connect(app, host.locator_address)
    try:
        channel = service.enqueue(event, headers=headers)
        for chunk in chunks:
            channel.tx.write(chunk)
        channel.tx.close()
        return await channel.rx.read_all()
    finally:
        service.close()


async def wait_until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` on the reactor until it holds; fail after ``timeout`` seconds."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await deferLater(reactor, 0.02, lambda: None)


class LogCapture:
    """Collects log events (as dicts) while active; use as a context manager."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def __enter__(self) -> LogCapture:
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc: object) -> None:
        from twisted.logger import globalLogPublisher

        globalLogPublisher.removeObserver(self)

    def matching(self, **fields: Any) -> list[dict[str, Any]]:
        return [e for e in self.events if all(e.get(k) == v for k, v in fields.items())]

    def texts(self) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events]
