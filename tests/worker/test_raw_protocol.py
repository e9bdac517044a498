"""Raw protocol abuse against a running host: it logs, drops the offender, carries on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import pytest_twisted

from support.workerhost import LogCapture, call, raw_connect, short_tmpdir, start_host, wait_until
from txloom.wire.cocaine import Header, Message
from txloom.worker import errors
from txloom.worker.host import WorkerHost

LIMIT = 64 * 1024

# the invoke headers a Cocaine v12 engine sends: literal trace ids and an indexed entry
CAPTURED_HEADERS = [
    Header(b"trace_id", b"\x00" * 8),
    Header(b"span_id", b"\x01" * 8),
    Header(b"parent_id", b"\x00" * 8),
    80,
]


@pytest.fixture(scope="module")
def host() -> Iterator[WorkerHost]:
    with short_tmpdir() as root:
        host = start_host(root, {"raw": {}}, max_message_size=LIMIT)
        yield host
        pytest_twisted.blockon(host.stopService())


def app_address(host: WorkerHost) -> tuple[str, int]:
    (address,) = host.locator.resolve("raw")[0]
    return tuple(address)  # type: ignore[return-value]


@pytest_twisted.ensureDeferred
async def test_raw_enqueue_with_captured_headers(host: WorkerHost) -> None:
    peer = await raw_connect(app_address(host))
    peer.send(1, 0, [b"headers"], CAPTURED_HEADERS)
    peer.send(1, 2, [])
    got = await peer.wait_messages(5)
    assert got == [
        Message(1, 0, [b"trace_id=0000000000000000"]),
        Message(1, 0, [b"span_id=0101010101010101"]),
        Message(1, 0, [b"parent_id=0000000000000000"]),
        Message(1, 0, [b"#80"]),
        Message(1, 2, []),
    ]
    peer.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_malformed_msgpack_drops_only_that_connection(host: WorkerHost) -> None:
    bystander = await raw_connect(app_address(host))
    with LogCapture() as logs:
        peer = await raw_connect(app_address(host))
        peer.transport.write(b"\x93\x01\x00\xc1")  # 0xc1 is never valid MessagePack
        await peer.closed
    assert any("protocol error: not MessagePack" in t for t in logs.texts())
    bystander.send(1, 0, [b"ping"])
    bystander.send(1, 2, [])
    assert await bystander.wait_messages(2) == [Message(1, 0, [b"pong"]), Message(1, 2, [])]
    bystander.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_well_formed_msgpack_that_is_not_a_message(host: WorkerHost) -> None:
    with LogCapture() as logs:
        peer = await raw_connect(app_address(host))
        peer.transport.write(b"\x81\xa1a\x01")  # {"a": 1}
        await peer.closed
    assert any("array of 3 or 4 items" in t for t in logs.texts())
    assert await call(host, "raw", "ping") == b"pong"


@pytest_twisted.ensureDeferred
async def test_oversize_message_is_refused_before_it_is_buffered(host: WorkerHost) -> None:
    with LogCapture() as logs:
        peer = await raw_connect(app_address(host))
        peer.send(1, 0, [b"echo"])
        peer.send(1, 0, [b"x" * (LIMIT + 1)])
        await peer.closed
    assert any(f"exceeds the limit of {LIMIT} bytes" in t for t in logs.texts())
    assert await call(host, "raw", "echo", [b"y" * (LIMIT - 100)]) == b"y" * (LIMIT - 100)


@pytest_twisted.ensureDeferred
async def test_garbage_and_impostors_on_the_worker_socket(host: WorkerHost) -> None:
    socket_path = host.pools["raw"].socket_path
    with LogCapture() as logs:
        garbage = await raw_connect(socket_path)
        garbage.transport.write(b"\xc1\xc1")
        await garbage.closed
        impostor = await raw_connect(socket_path)
        impostor.send(1, 0, [b"not-a-spawned-uuid"])
        await impostor.closed
        rude = await raw_connect(socket_path)
        rude.send(2, 0, [b"ping"])
        await rude.closed
    texts = logs.texts()
    assert any("unknown or late worker 'not-a-spawned-uuid'" in t for t in texts)
    assert any("expected a handshake" in t for t in texts)
    assert await call(host, "raw", "ping") == b"pong"


@pytest_twisted.ensureDeferred
async def test_messages_on_closed_and_unknown_channels_are_dropped(host: WorkerHost) -> None:
    peer = await raw_connect(app_address(host))
    with LogCapture() as logs:
        peer.send(3, 0, [b"ping"])
        peer.send(3, 2, [])
        assert await peer.wait_messages(2) == [Message(3, 0, [b"pong"]), Message(3, 2, [])]
        peer.send(3, 0, [b"invoke again on a closed session"])
        peer.send(2, 0, [b"ping"])  # an id below the last one: never opened
        peer.send(4, 0, [b"ping"])
        peer.send(4, 2, [])
        got = await peer.wait_messages(4)
    assert got[2:] == [Message(4, 0, [b"pong"]), Message(4, 2, [])]
    assert sum("closed channel" in t for t in logs.texts()) == 2
    peer.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_unknown_method_and_bad_arguments_get_errors(host: WorkerHost) -> None:
    peer = await raw_connect(app_address(host))
    peer.send(1, 7, [])
    peer.send(2, 0, [])  # enqueue without an event
    peer.send(3, 2, [])  # control
    peer.send(3, 0, [b"not a count"])
    [unknown, bad, control] = await peer.wait_messages(3)
    assert unknown.channel == 1 and unknown.args[0] == [errors.DISPATCH, errors.UNKNOWN_METHOD]
    assert bad.channel == 2 and bad.args[0] == [errors.DISPATCH, errors.BAD_ARGUMENTS]
    assert control.channel == 3 and control.args[0] == [errors.DISPATCH, errors.BAD_ARGUMENTS]
    peer.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_control_keeps_workers_alive_while_its_channel_is_open(host: WorkerHost) -> None:
    pool = host.pools["raw"]
    peer = await raw_connect(app_address(host))
    peer.send(1, 2, [])  # control
    peer.send(1, 0, [2])
    await wait_until(lambda: len(pool._active) == 2, what="two workers with an empty queue")
    assert pool.info()["keep-alive"] == 2
    peer.send(1, 2, [])  # close: the pool is the queue's again
    assert await peer.wait_messages(1) == [Message(1, 0, [2])]
    assert pool.wanted == 0
    peer.send(2, 2, [])
    peer.send(2, 0, [1])
    await wait_until(lambda: pool.wanted == 1, what="a second control channel")
    peer.transport.abortConnection()  # a vanished controller keeps nothing
    await wait_until(lambda: pool.wanted == 0, what="keep-alive released")


@pytest_twisted.ensureDeferred
async def test_client_vanishing_mid_stream_frees_the_session(host: WorkerHost) -> None:
    pool = host.pools["raw"]
    with LogCapture() as logs:
        peer = await raw_connect(app_address(host))
        peer.send(1, 0, [b"echo"])
        peer.send(1, 0, [b"first"])
        assert await peer.wait_messages(1) == [Message(1, 0, [b"first"])]
        assert sum(w.load for w in pool.workers.values()) == 1
        peer.transport.abortConnection()
        await peer.closed
        await wait_until(lambda: sum(w.load for w in pool.workers.values()) == 0, 5, "freed")
        # the worker was told on the session's upstream, and its handler stopped
        await wait_until(
            lambda: any("client disconnected" in t for t in logs.texts()), 5, "worker told"
        )
    assert await call(host, "raw", "ping") == b"pong"
