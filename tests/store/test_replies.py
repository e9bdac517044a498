"""Replay answers read off the reactor thread: exact bytes, bounded read-ahead, failures,
and a disk that takes its time while other clients are served."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread

from support.store import RawClient, running_server, tcp_address
from txloom.store.backend import file_backend, memory_backend
from txloom.store.directory import FileVolume
from txloom.store.fact import encode_fact, meta_of, normalize_fact
from txloom.store.replies import PIECE_BYTES, ReplyStream, replay_envelope
from txloom.store.wal import segment_name
from txloom.wire.crcjson import encode_frame


def body(i: int, padding: int = 300) -> bytes:
    fact = {"id": f"f{i}", "store": f"s{i % 3}", "key": i, "value": "v" * padding}
    return encode_fact(normalize_fact({**fact, "transaction_time": float(i)}))


def write_wal(data: Path, count: int, padding: int = 300) -> list[bytes]:
    """A store written straight to disk, as a WAL segment (start-up reads it)."""
    data.mkdir(parents=True)
    bodies = [body(i, padding) for i in range(count)]
    (data / segment_name(0)).write_bytes(b"".join(encode_frame(b) for b in bodies))
    return bodies


class SlowDisk:
    """``FileVolume.pread`` that, while on, blocks until the gate opens, and can fail.

    A read that waits for the test (not for a time) shows a stall as a probe that never
    completes, whatever the machine's load."""

    def __init__(self, monkeypatch) -> None:
        self.on = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.calls = 0
        self.fail_at: int | None = None
        real = FileVolume.pread

        def pread(volume, offset, size):
            if self.on.is_set():
                self.calls += 1
                self.started.set()
                if self.fail_at is not None and self.calls >= self.fail_at:
                    raise OSError(5, "Input/output error (injected)")
                self.gate.wait(60)
            return real(volume, offset, size)

        monkeypatch.setattr(FileVolume, "pread", pread)


# -- the stream itself ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["file", "memory"])
@pytest_twisted.ensureDeferred
async def test_a_paused_reader_holds_a_bounded_read_ahead_and_gets_the_exact_frame(
    tmp_path: Path, kind: str
) -> None:
    if kind == "file":
        bodies = write_wal(tmp_path / "data", 3000, padding=1000)  # ~3 MB
        backend = file_backend(reactor, str(tmp_path / "data"))
        await backend.open()
    else:
        backend = memory_backend(reactor)
        await backend.open()
        bodies = [body(i, 1000) for i in range(3000)]
        await defer.gatherResults(
            [backend.append(b, meta_of(normalize_fact(json.loads(b)))) for b in bodies]
        )
    try:
        plan = backend.plan_replay()
        prefix, suffix = replay_envelope(plan, False)
        read_ahead = 256 * 1024
        stream = ReplyStream(plan, prefix, suffix, backend.read, read_ahead=read_ahead)
        out: list[bytes] = []
        paused = True
        woken: list[defer.Deferred] = []
        stream.wake = lambda: woken and woken.pop().callback(None)
        assert not stream.pump(out.append, lambda: paused)
        while stream._reading:  # the reader fills its buffer, then stops
            d = defer.Deferred()
            woken.append(d)
            await d.addTimeout(10, reactor)
        assert out == []
        # bounded: what is held never passes the read-ahead by more than one piece
        assert 0 < stream._ready_bytes <= read_ahead + PIECE_BYTES + plan.batch_bytes
        paused = False
        while not stream.pump(out.append, lambda: paused):
            d = defer.Deferred()
            woken.append(d)
            await d.addTimeout(10, reactor)
        assert b"".join(out) == encode_frame(prefix + b",".join(bodies) + suffix)
        assert stream.length + 8 == len(b"".join(out))
    finally:
        await backend.close()


# -- a slow disk and the other clients -----------------------------------------------------


def probe(address: str, rounds: int) -> list[float]:
    """Ping and write round trips, 20 ms apart: their latencies (each waits at most the
    client's timeout, so a server stalled behind the disk fails the probe)."""
    latencies = []
    with RawClient(address) as c:
        for i in range(rounds):
            for request in (
                {"op": "ping"},
                {"op": "write_fact", "fact": {"id": f"w{i}", "store": "w", "value": i}},
            ):
                started = time.monotonic()
                assert c.rpc(request)["ok"] is True
                latencies.append(time.monotonic() - started)
            time.sleep(0.02)
    return latencies


def read_events(address: str, stop: threading.Event) -> int:
    """A catch-up subscription from the start, read until told to stop; bytes read."""
    got = 0
    with RawClient(address) as c:
        c.send_object({"op": "subscribe", "since": 0})
        c.sock.settimeout(0.1)
        while not stop.is_set():
            try:
                data = c.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                break
            got += len(data)
    return got


def read_replay(address: str) -> list[str]:
    with RawClient(address, timeout=60) as c:
        c.send_object({"op": "replay"})
        frame = c.read_body()  # checks the CRC
    assert frame is not None
    return [f["id"] for f in json.loads(frame)["facts"]]


@pytest_twisted.ensureDeferred
async def test_a_replay_from_a_slow_disk_does_not_stall_other_clients(
    tmp_path: Path, monkeypatch
) -> None:
    """Reads of the disk hang until the test lets them go; a plain replay and a
    catch-up subscription are stuck in them while another connection pings and writes,
    and every one of those round trips completes meanwhile."""
    data = tmp_path / "data"
    write_wal(data, 20_000)
    disk = SlowDisk(monkeypatch)
    async with running_server(data) as service:
        address = tcp_address(service)
        disk.gate.clear()
        disk.on.set()
        stop = threading.Event()
        replay = deferToThread(read_replay, address)
        events = deferToThread(read_events, address, stop)
        try:
            assert await deferToThread(disk.started.wait, 20)
            latencies = await deferToThread(probe, address, 25)
            blocked_meanwhile = not disk.gate.is_set() and not replay.called
        finally:
            disk.on.clear()  # the rest comes at the disk's own pace
            disk.gate.set()
            stop.set()
        assert await events > 0
        assert (await replay)[:20_000] == [f"f{i}" for i in range(20_000)]
    assert len(latencies) == 50
    assert blocked_meanwhile, "the replay was not waiting on the disk during the probe"


def replay_fails_at_once(address: str) -> tuple[dict, bool]:
    with RawClient(address) as c:
        answer = c.rpc({"op": "replay", "request_id": 7})
        return answer, c.rpc({"op": "ping"})["pong"]


def replay_cut_short(address: str) -> bytes:
    received = b""
    with RawClient(address) as c:
        c.send_object({"op": "replay"})
        try:
            while data := c.sock.recv(1 << 20):
                received += data
        except ConnectionResetError:  # an aborted connection
            pass
    return received


@pytest_twisted.ensureDeferred
async def test_a_failed_read_answers_an_error_or_drops_a_begun_frame(
    tmp_path: Path, monkeypatch
) -> None:
    data = tmp_path / "data"
    write_wal(data, 8000)  # ~3.4 MB: a dozen reads
    disk = SlowDisk(monkeypatch)
    async with running_server(data) as service:
        address = tcp_address(service)
        disk.on.set()
        disk.fail_at = 1  # the first read fails: nothing was sent yet
        answer, pong = await deferToThread(replay_fails_at_once, address)
        assert answer == {
            "ok": False,
            "error_code": "storage_failed",
            "error": "storage failure; see the server log",
            "request_id": 7,
        }
        assert pong is True  # the connection stays usable
        disk.calls = 0
        disk.fail_at = 8  # pieces went out before the failure
        received = await deferToThread(replay_cut_short, address)
        # a frame that was begun cannot be finished: the connection is cut short
        length = int.from_bytes(received[:4], "big")
        assert 0 < len(received) < length + 8
