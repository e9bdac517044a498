"""WorkerPool and WorkerControl timing logic on a Clock, with fake processes and sockets."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from twisted.internet.error import ProcessExitedAlready, ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer, verify

from support.workerhost import SocketWorker
from txloom.interfaces import IDownstream, IWorkerLauncher
from txloom.wire.cocaine import Header, Message, encode
from txloom.worker import errors
from txloom.worker.control import WorkerConnection
from txloom.worker.manifest import AppManifest
from txloom.worker.pool import WorkerPool
from txloom.worker.process import ProcessLauncher
from txloom.worker.profile import Profile


class FakeProcess:
    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.pid = 4242
        self.signals: list[str | int] = []
        self.exited = False
        protocol.makeConnection(self)

    def signalProcess(self, name: str | int) -> None:
        if self.exited:  # its group is gone with it
            raise ProcessExitedAlready()
        self.signals.append(name)

    def exit(self, code: int | None = 0, sig: int | None = None) -> None:
        self.exited = True
        self.protocol.processExited(Failure(ProcessTerminated(code, sig)))
        self.protocol.processEnded(Failure(ProcessTerminated(code, sig)))


@implementer(IWorkerLauncher)
class FakeLauncher:
    def __init__(self) -> None:
        self.launched: list[tuple[FakeProcess, list[str], dict[str, str]]] = []

    def launch(self, protocol: Any, argv: list[str], env: dict[str, str], cwd: str) -> Any:
        process = FakeProcess(protocol)
        self.launched.append((process, list(argv), dict(env)))
        return process


@implementer(IDownstream)
class Recorder:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.end: tuple | str | None = None

    def write(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def error(self, category: int, code: int, reason: str) -> None:
        self.end = (category, code, reason)

    def close(self) -> None:
        self.end = "closed"


def make_pool(**profile: Any) -> tuple[WorkerPool, Clock, FakeLauncher]:
    clock = Clock()
    launcher = FakeLauncher()
    manifest = AppManifest(
        name="app", command=("worker",), cwd="/", env={"A": "1"}, profile=Profile(**profile)
    )
    pool = WorkerPool(manifest, "/run/app.sock", "127.0.0.1:10053", launcher, clock)
    pool.start()
    return pool, clock, launcher


def ready_worker(pool: WorkerPool, launcher: FakeLauncher, index: int = -1) -> SocketWorker:
    _process, argv, _env = launcher.launched[index]
    return SocketWorker(pool, argv[argv.index("--uuid") + 1])


def test_interfaces() -> None:
    verify.verifyObject(IWorkerLauncher, ProcessLauncher(Clock()))
    verify.verifyObject(IDownstream, Recorder())


def test_spawn_arguments_and_environment() -> None:
    pool, _clock, launcher = make_pool(heartbeat_timeout=8)
    pool.enqueue(b"ping", (), Recorder())
    [(_process, argv, env)] = launcher.launched
    uuid = argv[argv.index("--uuid") + 1]
    assert argv == [
        "worker",
        "--app",
        "app",
        "--endpoint",
        "/run/app.sock",
        "--locator",
        "127.0.0.1:10053",
        "--uuid",
        uuid,
        "--protocol",
        "1",
    ]
    assert env["A"] == "1"
    assert env["TXLOOM_HEARTBEAT_INTERVAL"] == "2"
    assert env["TXLOOM_DISOWN_TIMEOUT"] == "8"


def test_session_waits_for_handshake_then_runs() -> None:
    pool, _clock, launcher = make_pool()
    reply = Recorder()
    session = pool.enqueue(b"echo", (), reply)
    session.write(b"early")
    session.close()
    worker = ready_worker(pool, launcher)
    assert worker.received() == [
        Message(2, 0, [b"echo"]),
        Message(2, 0, [b"early"]),
        Message(2, 2, []),
    ]
    worker.send(2, 0, [b"early"])
    worker.send(2, 2, [])
    assert reply.chunks == [b"early"] and reply.end == "closed"
    assert session.finished and pool.workers[worker.connection.control.uuid].load == 0


def test_heartbeat_is_answered_and_silence_discards_the_worker() -> None:
    pool, clock, launcher = make_pool(heartbeat_timeout=3.0)
    reply = Recorder()
    pool.enqueue(b"hang", (), reply)
    worker = ready_worker(pool, launcher)
    process = launcher.launched[0][0]
    worker.received()
    for _ in range(5):  # heartbeats keep it alive well past the timeout
        clock.advance(2.0)
        worker.send(1, 0, [])
        assert Message(1, 0, []) in worker.received()
    assert process.signals == []
    clock.advance(2.9)
    assert process.signals == [] and reply.end is None
    clock.advance(0.2)
    assert process.signals == ["KILL"]
    assert reply.end == (errors.ENGINE, errors.WORKER_DISCARDED, reply.end[2])
    assert "discarded" in reply.end[2]
    process.exit(None, 9)
    assert pool.workers == {}


def test_idle_worker_is_terminated_then_killed_after_terminate_timeout() -> None:
    pool, clock, launcher = make_pool(
        idle_timeout=5.0, terminate_timeout=2.0, heartbeat_timeout=100
    )
    session = pool.enqueue(b"ping", (), Recorder())
    worker = ready_worker(pool, launcher)
    process = launcher.launched[0][0]
    clock.advance(10)  # busy workers are not idle
    assert process.signals == []
    worker.send(2, 2, [])
    session.close()
    clock.advance(4.9)
    worker.received()
    clock.advance(0.2)
    assert worker.received()[-1] == Message(1, 1, [1, b"idle"])
    assert pool.info()["pool"]["active"] == 0
    clock.advance(1.9)
    assert process.signals == []
    clock.advance(0.2)
    assert process.signals == ["KILL"]


def test_handshake_timeout_counts_as_failed_start() -> None:
    pool, clock, launcher = make_pool(handshake_timeout=1.0, backoff_initial=0.5)
    pool.enqueue(b"ping", (), Recorder())
    process = launcher.launched[0][0]
    clock.advance(1.01)
    assert process.signals == ["KILL"]
    process.exit(None, 9)
    assert pool.failures == 1
    assert len(launcher.launched) == 1
    clock.advance(0.5)
    assert len(launcher.launched) == 2  # respawned after the backoff


def test_crash_loop_backoff_doubles_and_app_goes_broken() -> None:
    pool, clock, launcher = make_pool(crash_limit=3, backoff_initial=1.0, backoff_max=3.0)
    reply = Recorder()
    pool.enqueue(b"ping", (), reply)
    gaps = []
    for _ in range(2):
        launcher.launched[-1][0].exit(1)
        before = len(launcher.launched)
        waited = 0.0
        while len(launcher.launched) == before and waited < 10:
            clock.advance(0.25)
            waited += 0.25
        gaps.append(waited)
    # a queued call is kept through 1 s and 2 s of backoff, then failed when broken
    assert gaps == [1.0, 2.0]
    assert reply.end is None and pool.state == "running"
    launcher.launched[-1][0].exit(1)
    assert pool.state == "broken"
    assert reply.end[:2] == (errors.ENGINE, errors.APP_BROKEN)
    # broken: a call during the backoff fails at once
    fast = Recorder()
    pool.enqueue(b"ping", (), fast)
    assert fast.end[:2] == (errors.ENGINE, errors.APP_BROKEN)
    # after the (capped) backoff a call waits for a probe; a good handshake heals the app
    clock.advance(3.0)
    waiting = Recorder()
    pool.enqueue(b"ping", (), waiting)
    worker = ready_worker(pool, launcher)
    assert pool.state == "running" and pool.failures == 0
    worker.received()
    worker.send(3 - 1, 0, [b"pong"])
    worker.send(2, 2, [])
    assert waiting.chunks == [b"pong"]


@pytest.mark.parametrize(
    ("queue_limit", "pool_limit", "queued", "expected"),
    [(100, 10, 4, 1), (100, 10, 5, 1), (100, 10, 10, 2), (100, 10, 100, 10), (10, 3, 6, 3)],
)
def test_growth_follows_grow_threshold(
    queue_limit: int, pool_limit: int, queued: int, expected: int
) -> None:
    pool, _clock, launcher = make_pool(queue_limit=queue_limit, pool_limit=pool_limit)
    for _ in range(queued):
        pool.enqueue(b"ping", (), Recorder())
    assert len(launcher.launched) == expected


def test_queue_limit_refuses_at_once() -> None:
    pool, _clock, _launcher = make_pool(queue_limit=2)
    replies = [Recorder() for _ in range(3)]
    for reply in replies:
        pool.enqueue(b"ping", (), reply)
    assert [r.end for r in replies[:2]] == [None, None]
    assert replies[2].end == (errors.ENGINE, errors.QUEUE_FULL, "queue is full")


def test_request_timeout_on_the_clock() -> None:
    pool, clock, launcher = make_pool(request_timeout=10.0)
    default = Recorder()
    pool.enqueue(b"hang", (), default)
    short = Recorder()
    pool.enqueue(b"hang", (Header(b"request_timeout", b"1500"),), short)
    worker = ready_worker(pool, launcher)
    worker.received()
    clock.advance(1.49)
    assert short.end is None
    clock.advance(0.02)
    assert short.end[:2] == (errors.ENGINE, errors.TIMEOUT)
    # the worker is told too, on the session's upstream
    reason = short.end[2].encode()
    assert worker.received() == [Message(3, 1, [[errors.ENGINE, errors.TIMEOUT], reason])]
    clock.advance(8.5)
    assert default.end[:2] == (errors.ENGINE, errors.TIMEOUT)


def test_stop_fails_queue_and_terminates_workers() -> None:
    pool, _clock, launcher = make_pool(terminate_timeout=1.0)
    running = Recorder()
    pool.enqueue(b"hang", (), running)
    worker = ready_worker(pool, launcher)
    process = launcher.launched[0][0]
    stopped = pool.stop()
    assert worker.received()[-1] == Message(1, 1, [1, b"engine shutting down"])
    assert not stopped.called
    process.exit(0)
    assert stopped.called
    assert running.end[:2] == (errors.ENGINE, errors.SHUTTING_DOWN)
    late = Recorder()
    pool.enqueue(b"ping", (), late)
    assert late.end[:2] == (errors.ENGINE, errors.SHUTTING_DOWN)


def test_unknown_uuid_and_non_handshake_are_dropped() -> None:
    pool, _clock, _launcher = make_pool()
    for first in (encode(1, 0, [b"who-is-this"]), encode(2, 0, [b"ping"])):
        connection = WorkerConnection(pool)
        transport = StringTransport()
        connection.makeConnection(transport)
        connection.dataReceived(first)
        assert transport.disconnecting or transport.disconnected


def test_data_sent_to_a_queued_session_is_bounded() -> None:
    pool, _clock, _launcher = make_pool(max_message_size=1000)
    reply = Recorder()
    session = pool.enqueue(b"echo", (), reply)
    assert session.write(b"x" * 600)
    assert not session.write(b"x" * 600)
    assert reply.end[:2] == (errors.ENGINE, errors.QUEUE_FULL)
    assert "before a worker was free" in reply.end[2]
    assert session.finished and not pool.queue


def test_roll_retires_old_workers_after_their_sessions_and_heals_a_broken_app() -> None:
    pool, _clock, launcher = make_pool(crash_limit=1, backoff_initial=5.0)
    old = Recorder()
    session = pool.enqueue(b"ping", (), old)
    session.message(2, [])  # the caller has sent everything
    worker = ready_worker(pool, launcher)
    new_manifest = dataclasses.replace(pool.manifest, command=("worker2",))
    pool.roll(new_manifest)
    assert worker.connection.control.retired and worker.connection.control.state == "active"
    second = Recorder()
    pool.enqueue(b"ping", (), second)  # not to the retired worker: a new one is spawned
    assert launcher.launched[-1][1][0] == "worker2" and len(launcher.launched) == 2
    worker.received()
    worker.send(2, 2, [])  # the old session ends: the old worker is told to terminate
    assert old.end == "closed" and worker.connection.control.state == "terminating"
    # a failed start breaks the app; a new manifest tries again at once
    launcher.launched[-1][0].exit(1)
    assert pool.state == "broken" and second.end[:2] == (errors.ENGINE, errors.APP_BROKEN)
    pool.roll(dataclasses.replace(new_manifest, command=("worker3",)))
    third = Recorder()
    pool.enqueue(b"ping", (), third)
    assert pool.state == "running" and launcher.launched[-1][1][0] == "worker3"


def test_drain_refuses_new_sessions_and_stops_when_the_last_one_ends() -> None:
    pool, _clock, launcher = make_pool()
    running = Recorder()
    pool.enqueue(b"ping", (), running).message(2, [])
    worker = ready_worker(pool, launcher)
    drained = pool.drain()
    refused = Recorder()
    pool.enqueue(b"ping", (), refused)
    assert refused.end == (errors.ENGINE, errors.SHUTTING_DOWN, "app app is being removed")
    assert not drained.called
    worker.received()
    worker.send(2, 2, [])
    assert running.end == "closed" and pool.state == "stopping"
    launcher.launched[-1][0].exit(0)
    assert drained.called and pool.state == "stopped"
