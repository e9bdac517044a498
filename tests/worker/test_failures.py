"""Failure handling with real workers: heartbeats, kills, crash loops, limits, growth."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator

import pytest
import pytest_twisted

from support.processes import pid_alive
from support.workerhost import call, short_tmpdir, start_host, wait_until
from txloom.worker import errors
from txloom.worker.client import connect
from txloom.worker.host import WorkerHost

CRASHING = ["{python}", "-c", "import sys; print('crashing at start', flush=True); sys.exit(3)"]


@pytest.fixture(scope="module")
def host() -> Iterator[WorkerHost]:
    with short_tmpdir() as root:
        host = start_host(
            root,
            {
                "beat": {"profile": {"heartbeat-timeout": 1.0}},
                "kill": {},
                "crash": {
                    "command": CRASHING,
                    "profile": {"crash-limit": 3, "backoff-initial": 0.1, "backoff-max": 0.4},
                },
                "narrow": {"profile": {"pool-limit": 1, "concurrency": 1, "queue-limit": 2}},
                "grow": {
                    "profile": {
                        "pool-limit": 3,
                        "concurrency": 1,
                        "queue-limit": 10,
                        "idle-timeout": 1.0,
                    }
                },
            },
        )
        yield host
        pytest_twisted.blockon(host.stopService())


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_worker_that_stops_heartbeating_is_discarded(host: WorkerHost) -> None:
    service = await connect("beat", host.locator_address)
    try:
        channel = service.enqueue("hang")
        pid = int(await channel.rx.read())
        os.kill(pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            with pytest.raises(errors.WorkerDiscarded, match="worker has been discarded"):
                await channel.rx.read()
            elapsed = time.monotonic() - stopped_at
            assert elapsed < 1.0 + 0.5, f"discarded after {elapsed:.2f}s"
        finally:
            with contextlib.suppress(ProcessLookupError):  # already reaped, most likely
                os.kill(pid, signal.SIGCONT)
        # a fresh worker serves the next call
        assert int(await call(host, "beat", "pid")) != pid
    finally:
        service.close()
    await wait_until(lambda: not pid_alive(pid), 5, "discarded worker reaped")


@pytest_twisted.ensureDeferred
async def test_worker_killed_mid_session_fails_its_sessions(host: WorkerHost) -> None:
    service = await connect("kill", host.locator_address)
    try:
        first = service.enqueue("hang")
        pid = int(await first.rx.read())
        second = service.enqueue("hang")  # same worker: concurrency 10
        assert int(await second.rx.read()) == pid
        os.kill(pid, signal.SIGKILL)
        for channel in (first, second):
            with pytest.raises(errors.WorkerLost, match=r"worker has been lost.*signal 9"):
                await channel.rx.read()
        assert int(await call(host, "kill", "pid")) != pid
    finally:
        service.close()


@pytest_twisted.ensureDeferred
async def test_worker_exiting_mid_session_is_an_error_never_silence(host: WorkerHost) -> None:
    with pytest.raises(errors.WorkerLost, match="exited with code 3"):
        await call(host, "kill", "exit")
    assert await call(host, "kill", "ping") == b"pong"


@pytest_twisted.ensureDeferred
async def test_crash_loop_backs_off_and_reports_broken(host: WorkerHost) -> None:
    pool = host.pools["crash"]
    started = time.monotonic()
    with pytest.raises(errors.AppBroken, match="broken"):
        await call(host, "crash", "ping")
    # three attempts with 0.1 s and 0.2 s between them, not a tight loop
    assert pool.counters["spawned"] == 3
    assert time.monotonic() - started >= 0.3
    service = await connect("crash", host.locator_address)
    try:
        info = await service.call("info")
        assert info[b"state"] == b"broken"
        assert info[b"failures"] == 3
        # while the backoff runs, calls fail at once without a new spawn
        with pytest.raises(errors.AppBroken, match="next attempt in"):
            channel = service.enqueue("ping")
            await channel.rx.read()
        assert pool.counters["spawned"] == 3
    finally:
        service.close()
    # once the backoff has passed, a call makes one probe (which fails again)
    await wait_until(lambda: host.reactor.seconds() >= pool._next_spawn_at, 2, "backoff over")
    with pytest.raises(errors.AppBroken):
        await call(host, "crash", "ping")
    assert pool.counters["spawned"] == 4
    assert pool.state == "broken"


@pytest_twisted.ensureDeferred
async def test_full_queue_fails_at_once_and_queued_calls_survive(host: WorkerHost) -> None:
    service = await connect("narrow", host.locator_address)
    try:
        busy = service.enqueue("hang")
        pid = int(await busy.rx.read())
        queued = [service.enqueue("ping") for _ in range(2)]
        for channel in queued:
            channel.tx.close()
        await wait_until(lambda: len(host.pools["narrow"].queue) == 2, 5, "two queued")
        started = time.monotonic()
        with pytest.raises(errors.QueueFull, match="queue is full"):
            await service.enqueue("ping").rx.read()
        assert time.monotonic() - started < 0.5
        # the queued calls are served once the busy worker is gone
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(errors.WorkerLost):
            await busy.rx.read()
        assert [await channel.rx.read_all() for channel in queued] == [b"pong", b"pong"]
    finally:
        service.close()


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_pool_grows_to_its_limit_under_load_and_shrinks_when_idle(host: WorkerHost) -> None:
    pool = host.pools["grow"]
    peak = []
    spawn = pool._spawn

    def counting_spawn() -> None:
        spawn()
        peak.append(pool._live())

    pool._spawn = counting_spawn  # type: ignore[method-assign]
    service = await connect("grow", host.locator_address)
    try:
        channels = []
        for _ in range(8):
            channel = service.enqueue("sleep")
            channel.tx.write(b"0.3")
            channel.tx.close()
            channels.append(channel)
        await wait_until(lambda: len(pool._active) == 3, 10, "three active workers")
        pids = {int(await channel.rx.read_all()) for channel in channels}
    finally:
        service.close()
        del pool._spawn
    # never beyond pool-limit at once (under load a worker may idle out and be replaced)
    assert max(peak) == 3
    assert len(pids) >= 3
    await wait_until(lambda: not pool.workers, 5, "idle workers terminated")
    assert all(not pid_alive(pid) for pid in pids)


@pytest_twisted.ensureDeferred
async def test_request_timeout_header(host: WorkerHost) -> None:
    started = time.monotonic()
    with pytest.raises(errors.RequestTimeout, match=r"timed out after 0\.3s"):
        await call(host, "kill", "hang", headers={"request_timeout": "300"})
    assert 0.25 < time.monotonic() - started < 2.0
    assert await call(host, "kill", "ping") == b"pong"
