"""The worker-side library against a fake engine, byte for byte as the captured session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import pytest_twisted
from twisted.internet import reactor

from support.workerhost import FakeEngine, short_tmpdir, spawn_worker
from txloom.wire.cocaine import Header, Message
from txloom.worker import Worker

VECTORWORKER = Path(__file__).resolve().parent / "apps" / "vectorworker.py"

CAPTURED_INVOKE_HEADERS = [
    Header(b"trace_id", b"\x00" * 8),
    Header(b"span_id", b"\x01" * 8),
    Header(b"parent_id", b"\x00" * 8),
    80,
]
CAPTURED_HEAD = b"\x92\xcc\xc8\x92\x92\xacContent-Type\xaatext/plain\x92\xa3X-M\xa4POST"


@pytest.fixture
def socket_path() -> Iterator[str]:
    with short_tmpdir() as root:
        yield str(root / "engine.sock")


def start(socket_path: str, env: dict[str, str] | None = None) -> tuple[FakeEngine, object, object]:
    engine = FakeEngine()
    port = reactor.listenUNIX(socket_path, engine)
    args = ["--app", "testapp", "--endpoint", socket_path, "--locator", "127.0.0.1:10053"]
    child = spawn_worker(VECTORWORKER, [*args, "--protocol", "1", "--uuid", "U-1234"], env)
    return engine, port, child


@pytest_twisted.ensureDeferred
async def test_captured_session_byte_for_byte(socket_path: str) -> None:
    engine, port, child = start(socket_path)
    try:
        peer = await engine.connected
        assert await peer.wait_messages(2) == [Message(1, 0, [b"U-1234"]), Message(1, 0, [])]
        peer.send(1, 0, [])  # heartbeat reply
        peer.send(2, 0, [b"ping"], CAPTURED_INVOKE_HEADERS)
        peer.send(2, 0, [b"hello"])
        peer.send(2, 2, [])
        assert (await peer.wait_messages(4))[2:] == [Message(2, 0, [b"hello"]), Message(2, 2, [])]

        peer.send(3, 0, [b"http"])
        request = [
            b"POST",
            b"/path?a=1",
            b"1.1",
            [[b"Host", b"x"], [b"Content-Type", b"text/plain"]],
            b"BODY",
        ]
        peer.send(3, 0, [msgpack.packb(request, use_bin_type=False)])
        peer.send(3, 2, [])
        assert (await peer.wait_messages(7))[4:] == [
            Message(3, 0, [CAPTURED_HEAD]),
            Message(3, 0, [b"got:BODY"]),
            Message(3, 2, []),
        ]

        peer.send(5, 0, [b"nope"])
        [nope] = (await peer.wait_messages(8))[7:]
        assert nope.channel == 5 and nope.type == 1
        assert nope.args == [[42, 200], b"there is no handler for event 'nope'"]

        peer.send(6, 0, [b"raise"])
        peer.send(6, 2, [])
        [boom] = (await peer.wait_messages(9))[8:]
        assert boom.args == [[42, 100], b"RuntimeError: handler exploded"]

        peer.send(1, 1, [1, b"engine shutting down"])
        [echo] = (await peer.wait_messages(10))[9:]
        assert echo == Message(1, 1, [1, b"engine shutting down"])
        assert await child.ended == 0
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_worker_exits_when_the_engine_is_silent(socket_path: str) -> None:
    env = {"TXLOOM_HEARTBEAT_INTERVAL": "0.1", "TXLOOM_DISOWN_TIMEOUT": "0.5"}
    engine, port, child = start(socket_path, env)
    try:
        peer = await engine.connected
        started = reactor.seconds()
        code = await child.ended
        assert code == 2
        assert 0.4 < reactor.seconds() - started < 3.0
        assert b"silent" in child.output
        assert len([m for m in peer.messages if m == Message(1, 0, [])]) >= 3  # it did beat
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_worker_exits_when_the_engine_goes_away(socket_path: str) -> None:
    engine, port, child = start(socket_path)
    try:
        peer = await engine.connected
        await peer.wait_messages(1)
        peer.transport.loseConnection()
        assert await child.ended == 1
        assert b"closed the connection" in child.output
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_worker_without_an_engine_exits_with_one_line(socket_path: str) -> None:
    child = spawn_worker(VECTORWORKER, ["--app", "a", "--endpoint", socket_path, "--uuid", "u"])
    assert await child.ended == 1
    assert b"cannot connect to the engine" in child.output


@pytest_twisted.ensureDeferred
async def test_bad_spawn_arguments_exit_64() -> None:
    child = spawn_worker(VECTORWORKER, ["--app", "a"])
    assert await child.ended == 64
    assert b"usage: WORKER --app NAME --endpoint SOCKET" in child.output


def test_worker_parses_spawn_arguments_and_registers_handlers() -> None:
    worker = Worker(
        [
            "--app",
            "x",
            "--endpoint",
            "/s",
            "--locator",
            "[::1]:10053,10.0.0.1:99",
            "--uuid",
            "u",
            "--protocol",
            "1",
            "--extra",
            "y",
        ]
    )
    assert (worker.app, worker.endpoint, worker.uuid) == ("x", "/s", "u")
    assert worker.locator == [("::1", 10053), ("10.0.0.1", 99)]
    assert worker.extra_args == ["--extra", "y"]

    @worker.on("a")
    def a(request: object, response: object) -> None:
        pass

    worker.on("b", a)
    assert worker.handlers == {"a": a, "b": a}
