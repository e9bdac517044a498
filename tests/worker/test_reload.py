"""Reloading a real ``twistd workerhost``: SIGHUP and ``txloom worker reload``.

One host through every kind of change: an app added, one removed while a session of it
runs (the session finishes, then the app is gone), one changed while a session runs on
its old worker (that session finishes there, new sessions get a worker started from the
new manifest), and one unchanged whose open session goes on across both reloads. A bad
manifest refuses the whole reload with the file's reason and changes nothing.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import threads

from support.cli import txloom
from support.processes import twistd
from support.workerhost import call, short_tmpdir, start_host, write_app
from txloom.worker.client import LocatorClient, connect
from txloom.worker.errors import ServiceNotAvailable
from txloom.worker.reload import ReloadError

LISTENING = r"locator listening on tcp:127\.0\.0\.1:(\d+)"


async def call_at(locator: tuple[str, int], app: str, event: str, body: bytes = b"") -> bytes:
    class Host:  # ``call`` only needs the Locator's address
        locator_address = locator

    return await call(Host, app, event, [body] if body else [])  # type: ignore[arg-type]


@pytest_twisted.ensureDeferred
async def test_reload_adds_removes_rolls_and_leaves_the_rest_alone() -> None:
    with short_tmpdir() as root:
        apps = root / "apps"
        apps.mkdir()
        for name in ("keep", "gone"):
            write_app(apps, name)
        write_app(apps, "roll", env={"VERSION": "one"})
        child = twistd("workerhost", "--apps", str(apps), "--runtime", str(root / "run"),
                       "--locator", "tcp:0:interface=127.0.0.1")  # fmt: skip
        with child.start():
            port = int((await child.when(LISTENING, timeout=30)).group(1))
            locator = ("127.0.0.1", port)
            old_version, old_pid = (await call_at(locator, "roll", "env", b"VERSION")).split()
            assert old_version == b"one"

            # sessions open across the reload: unchanged, removed, and on the old worker
            kept = await connect("keep", locator)
            open_session = kept.enqueue("sum")
            open_session.tx.write(b"before")
            gone = await connect("gone", locator)
            draining = gone.enqueue("linger")
            await draining.rx.read()
            rolling = await connect("roll", locator)
            on_old_worker = rolling.enqueue("linger")
            assert await on_old_worker.rx.read() == old_pid

            write_app(apps, "roll", env={"VERSION": "two"})
            (apps / "gone.json").unlink()
            write_app(apps, "new")
            child.send_signal(signal.SIGHUP)
            await child.when(r"apps reloaded: added new, changed roll, removed gone, 1 unchan")

            assert await call_at(locator, "new", "ping") == b"pong"
            version, pid = (await call_at(locator, "roll", "env", b"VERSION")).split()
            assert version == b"two" and pid != old_pid
            on_old_worker.tx.close()  # the old worker finishes its session, then ends
            assert await on_old_worker.rx.read_all() == b"done"
            draining.tx.close()  # the removed app's session finishes too, then it goes
            assert await draining.rx.read_all() == b"done"
            await child.when(r"gone: removed")
            resolver = await LocatorClient(locator).connect()
            try:
                await resolver.resolve("gone")
                raise AssertionError("a removed app still resolves")
            except ServiceNotAvailable:
                pass
            finally:
                resolver.close()

            # a bad manifest: the reason, exit 1, and the running apps as they were
            (apps / "bad.json").write_text("{not json")
            env = {"TXLOOM_LOCATOR": f"127.0.0.1:{port}"}
            run = await threads.deferToThread(txloom, "worker", "reload", env=env)
            assert run.returncode == 1, run.stderr
            assert "reload refused" in run.stderr and "bad.json" in run.stderr
            assert "Traceback" not in run.stderr
            assert await call_at(locator, "new", "ping") == b"pong"

            Path(apps / "bad.json").unlink()
            run = await threads.deferToThread(txloom, "worker", "reload", "--json", env=env)
            assert run.returncode == 0, run.stderr
            assert json.loads(run.stdout) == {
                "added": [], "changed": [], "removed": [], "failed": [],
                "unchanged": ["keep", "new", "roll"],
            }  # fmt: skip

            open_session.tx.write(b"after")
            open_session.tx.close()
            assert await open_session.rx.read_all() == b"2 11"
            for service in (kept, gone, rolling):
                service.close()
            assert child.terminate() == 0


@pytest_twisted.ensureDeferred
async def test_an_app_back_before_its_drain_ended_serves_again() -> None:
    with short_tmpdir() as root:
        host = start_host(root, {"back": {}})
        try:
            service = await connect("back", host.locator_address)
            session = service.enqueue("linger")
            await session.rx.read()
            (root / "apps" / "back.json").unlink()
            assert host.reload()["removed"] == ["back"]
            assert "back" in host.draining and host.locator.resolve("back") is None
            write_app(root / "apps", "back")
            assert host.reload()["added"] == ["back"]
            assert not host.draining and host.pools["back"].state == "running"
            assert await call(host, "back", "ping") == b"pong"
            session.tx.close()
            assert await session.rx.read_all() == b"done"
            service.close()
            with pytest.raises(ReloadError, match=r"bad\.json"):
                (root / "apps" / "bad.json").write_text("[]")
                host.reload()
            assert list(host.pools) == ["back"]
        finally:
            await host.stopService()
