"""The server's connection handling: pipelining, streamed replays, TLS, drain on stop."""

from __future__ import annotations

import json
import socket
import ssl
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from support.store import (
    VECTOR_FACT,
    RawClient,
    serve,
    server_config,
    short_tempdir,
    start_server,
    stop_server,
    tcp_address,
)
from txloom.store.config import FsyncPolicy
from txloom.store.service import StoreService
from txloom.wire.crcjson import encode_object


def make_server(tmp_path: Path, **overrides):
    return serve(tmp_path / "data", **overrides)


@pytest.fixture
def server(tmp_path: Path):
    yield from make_server(tmp_path, backend="memory")


def pipelined(address: str) -> list[dict]:
    with RawClient(address) as c:
        facts = [dict(VECTOR_FACT, id=f"p{i}") for i in range(200)]
        requests = [
            encode_object({"op": "write_fact", "fact": fact, "request_id": i})
            for i, fact in enumerate(facts)
        ]
        requests.append(encode_object({"op": "replay", "request_id": "replay"}))
        requests.append(encode_object({"op": "ping", "request_id": "ping"}))
        c.send(b"".join(requests))
        return [c.read() for _ in range(202)]


@pytest_twisted.ensureDeferred
async def test_pipelined_requests_are_answered_in_order(server) -> None:
    answers = await deferToThread(pipelined, tcp_address(server))
    assert [a["request_id"] for a in answers] == [*range(200), "replay", "ping"]
    assert all(a["ok"] for a in answers)
    # replay waited for the writes sent before it on the same connection
    assert [f["id"] for f in answers[200]["facts"]] == [f"p{i}" for i in range(200)]


def big_replay(address: str, count: int) -> tuple[int, float, list[str]]:
    with RawClient(address) as writer:
        batch = [
            encode_object({"op": "write_fact", "fact": dict(VECTOR_FACT, id=f"b{i}", key=i)})
            for i in range(count)
        ]
        writer.send(b"".join(batch))
        for _ in range(count):
            assert writer.read() == {"ok": True}
    with RawClient(address) as slow, RawClient(address) as other:
        slow.send_object({"op": "replay"})
        # the slow reader has not read a byte; another connection is answered at once
        started = time.monotonic()
        assert other.rpc({"op": "ping"})["pong"] is True
        ping_time = time.monotonic() - started
        body = slow.read_body()  # checks the CRC of the streamed frame
    facts = json.loads(body)["facts"]
    return len(body), ping_time, [f["id"] for f in facts]


@pytest_twisted.ensureDeferred
async def test_large_replay_is_one_streamed_frame(server) -> None:
    count = 20_000
    size, ping_time, ids = await deferToThread(big_replay, tcp_address(server), count)
    assert size > 4 * 1024 * 1024
    assert ids == [f"b{i}" for i in range(count)]
    assert ping_time < 1.0


def over_tls(address: str, cert_file: Path) -> list[dict]:
    context = ssl.create_default_context(cafile=str(cert_file))
    context.check_hostname = False
    host, _, port = address.rpartition(":")
    with (
        socket.create_connection((host, int(port)), 10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        client = RawClient.__new__(RawClient)
        client.sock = tls
        client._buffer = bytearray()
        return [
            client.rpc({"op": "write_fact", "fact": VECTOR_FACT}),
            client.rpc({"op": "replay"}),
        ]


@pytest_twisted.ensureDeferred
async def test_tls_listener(tls_server) -> None:
    service, cert_file = tls_server
    (address,) = service.addresses
    assert address.startswith("ssl:127.0.0.1:")
    written, replayed = await deferToThread(over_tls, address[len("ssl:") :], cert_file)
    assert written == {"ok": True}
    assert replayed["facts"][0]["id"] == VECTOR_FACT["id"]


@pytest_twisted.ensureDeferred
async def test_stop_drains_writes_in_flight(tmp_path: Path) -> None:
    with short_tempdir() as sock_dir:
        config = server_config(tmp_path / "data", sock_dir, fsync=FsyncPolicy("always"))
        service = await start_server(config)
        address = tcp_address(service)

        def write_many() -> list[dict | None]:
            with RawClient(address) as c:
                c.send(
                    b"".join(
                        encode_object({"op": "write_fact", "fact": dict(VECTOR_FACT, id=f"d{i}")})
                        for i in range(300)
                    )
                )
                answers = []
                while (answer := c.read()) is not None:
                    answers.append(answer)
                return answers

        client = deferToThread(write_many)
        # stop as soon as the first writes are committed: the rest are in flight
        while service.backend.last_seq == 0:
            await deferToThread(time.sleep, 0.001)
        await service.stopService()
        answers = await client
        acknowledged = sum(1 for a in answers if a == {"ok": True})
        assert acknowledged == len(answers) > 0  # nothing but acks, then a clean close

        again = await start_server(config)
        try:
            assert again.backend.fact_count >= acknowledged
        finally:
            await stop_server(again)


def ping_and_write(address: str) -> list[dict]:
    with RawClient(address) as c:
        return [
            c.rpc({"op": "write_fact", "fact": dict(VECTOR_FACT, id="handed-in")}),
            c.rpc({"op": "stats"}),
        ]


@pytest_twisted.ensureDeferred
async def test_a_backend_handed_in_is_the_one_used(tmp_path: Path) -> None:
    """``StoreService(backend=...)``: any ``IStorageBackend``, whatever ``config.backend``
    says (here the example distribution's SQLite backend, built by hand)."""
    from twisted.internet import reactor
    from txloom_extras.sqlite_backend import SQLiteBackend

    backend = SQLiteBackend(reactor, str(tmp_path / "facts.db"))
    with short_tempdir() as sock_dir:
        config = server_config(tmp_path / "unused", sock_dir, backend="no-such-backend")
        service = StoreService(config, reactor, backend=backend)
        service.startService()
        await service.ready
        try:
            written, stats = await deferToThread(ping_and_write, tcp_address(service))
        finally:
            await stop_server(service)
    assert written == {"ok": True}
    assert stats["backend"] == "sqlite" and stats["last_seq"] == 1
    assert not (tmp_path / "unused").exists()
