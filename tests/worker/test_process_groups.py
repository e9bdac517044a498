"""Workers and everything they start end together, and a worker's exit is seen at once."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet import threads
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.task import Clock

from support.processes import pid_alive, twistd
from support.waiting import until
from support.workerhost import call, short_tmpdir, start_host, write_app
from txloom.worker import errors
from txloom.worker.client import connect
from txloom.worker.host import WorkerHost
from txloom.worker.process import PIPE_GRACE, SWEEP_INTERVAL, GroupSweep


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def host() -> Iterator[WorkerHost]:
    with short_tmpdir() as root:
        # a heartbeat-timeout far beyond the test's patience: only watching the
        # process itself can notice the exit in time
        host = start_host(
            root,
            {"groups": {"profile": {"heartbeat-timeout": 60.0, "terminate-timeout": 0.5}}},
        )
        yield host
        pytest_twisted.blockon(host.stopService())


@pytest_twisted.ensureDeferred
async def test_worker_exit_is_seen_at_once_though_its_child_holds_its_pipes(
    host: WorkerHost,
) -> None:
    service = await connect("groups", host.locator_address)
    child = 0
    try:
        channel = service.enqueue("fork-exit")
        child = int(await channel.rx.read())
        started = time.monotonic()
        with pytest.raises(errors.WorkerLost, match="exited with code 3"):
            await channel.rx.read()
        assert time.monotonic() - started < 10
        # the child the worker left behind is ended with it
        await until(lambda: not pid_alive(child), 10, "the forked child ended")
    finally:
        service.close()
        _kill(child)
    assert await call(host, "groups", "ping") == b"pong"


@pytest_twisted.ensureDeferred
async def test_stopping_a_pool_ends_helpers_that_ignore_sigterm(host: WorkerHost) -> None:
    helper = int(await call(host, "groups", "helper", [b"ignore-term"]))
    try:
        assert pid_alive(helper)
        pool = host.pools["groups"]
        await pool.stop()  # terminate-timeout 0.5 s, then SIGKILL for the whole group
        assert not pid_alive(helper)
        assert not pool.workers
    finally:
        _kill(helper)
        pool.start()


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_sigterm_ends_the_host_promptly_and_every_helper_with_it() -> None:
    with short_tmpdir() as root:
        apps = root / "apps"
        apps.mkdir()
        write_app(apps, "helpers", profile={"terminate-timeout": 1.0})
        child = twistd(
            "workerhost",
            "--apps",
            str(apps),
            "--runtime",
            str(root / "run"),
            "--locator",
            "tcp:0:interface=127.0.0.1",
            cwd=root,
        ).start()
        helpers: list[int] = []
        try:
            locator = int((await child.when(r"locator listening on tcp:127\.0\.0\.1:(\d+)"))[1])
            service = await connect("helpers", ("127.0.0.1", locator))
            try:
                for how in (b"plain", b"ignore-term"):
                    channel = service.enqueue("helper")
                    channel.tx.write(how)
                    channel.tx.close()
                    helpers.append(int(await channel.rx.read_all()))
            finally:
                service.close()
            assert all(pid_alive(pid) for pid in helpers)
            started = time.monotonic()
            code = await threads.deferToThread(child.terminate, 15)
            assert code == 0, child.tail()
            assert time.monotonic() - started < 10, child.tail()
            assert "worker host stopped" in child.output
            await until(lambda: not any(pid_alive(pid) for pid in helpers), 5, "helpers ended")
        finally:
            child.kill()
            for pid in helpers:
                _kill(pid)


class _Group:
    """A process group that ignores SIGTERM and is gone once it got SIGKILL."""

    def __init__(self) -> None:
        self.signals: list[str | int] = []
        self.pipes = {1: object()}
        self.closed = False

    def signalProcess(self, sig: str | int) -> None:
        if "KILL" in self.signals:
            raise ProcessExitedAlready()
        self.signals.append(sig)

    def loseConnection(self) -> None:
        self.closed = True


def test_sweep_terms_then_kills_after_the_grace_and_closes_pipes_left_open() -> None:
    clock = Clock()
    group = _Group()
    done = GroupSweep(group, clock, grace=2.0).start()
    assert group.signals == ["TERM"]
    clock.advance(1.9)
    assert not done.called and "KILL" not in group.signals
    clock.advance(0.2)
    assert group.signals[-1] == "KILL"
    clock.advance(SWEEP_INTERVAL)
    assert done.called
    assert not group.closed
    clock.advance(PIPE_GRACE)
    assert group.closed  # held by something that left the group: the host stops reading


def test_sweep_of_an_empty_group_is_done_at_once() -> None:
    group = _Group()
    group.signals.append("KILL")
    assert GroupSweep(group, Clock(), grace=2.0).start().called
