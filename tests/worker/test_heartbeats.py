"""Heartbeats on both sides, driven by a Clock: the worker library's beat and disown
timeout, and the engine's answer and discard."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from txloom.wire.cocaine import Decoder, Message, encode
from txloom.worker import Worker
from txloom.worker.appworker import EXIT_DISOWNED, EngineConnection

SPAWN = [
    "--app",
    "a",
    "--endpoint",
    "/s",
    "--locator",
    "127.0.0.1:1",
    "--uuid",
    "U",
    "--protocol",
    "1",
]


def _connected(clock: Clock) -> tuple[Worker, EngineConnection, StringTransport, Decoder]:
    worker = Worker(SPAWN, heartbeat_interval=2.0, disown_timeout=7.0, reactor=clock)
    connection = EngineConnection(worker)
    transport = StringTransport()
    connection.makeConnection(transport)
    return worker, connection, transport, Decoder()


def _sent(transport: StringTransport, decoder: Decoder) -> list[Message]:
    decoder.receive_data(transport.value())
    transport.clear()
    return list(decoder)


def test_worker_beats_every_interval_and_stays_while_the_engine_answers() -> None:
    clock = Clock()
    worker, connection, transport, decoder = _connected(clock)
    assert _sent(transport, decoder) == [Message(1, 0, [b"U"]), Message(1, 0, [])]
    for _ in range(10):  # 20 s of beats and answers, far past the disown timeout
        clock.advance(2.0)
        assert _sent(transport, decoder) == [Message(1, 0, [])]
        connection.dataReceived(encode(1, 0, []))
    assert not worker.done.called and not transport.disconnecting


def test_worker_leaves_an_engine_silent_for_the_disown_timeout() -> None:
    clock = Clock()
    worker, connection, transport, _decoder = _connected(clock)
    clock.advance(6.9)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.disconnecting  # aborted
    connection.connectionLost(None)
    assert worker.done.result == EXIT_DISOWNED
    assert not clock.getDelayedCalls()  # no beat left behind
