"""``twistd storeserver`` as users run it: options, logs, SIGTERM, SIGKILL, damaged WALs."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from support.processes import ChildProcess, twistd
from support.store import wal_files
from txloom.store import Fact, NetworkBackend
from txloom.store.tap import Options, makeService

LISTENING = r"storeserver listening on tcp:127\.0\.0\.1:(\d+)"


def start(data: Path, *args: str) -> tuple[ChildProcess, str]:
    child = twistd(
        "storeserver", "--listen", "tcp:0:interface=127.0.0.1", "--data", str(data), *args
    )
    child.start()
    port = child.wait_for(LISTENING, timeout=30).group(1)
    return child, f"127.0.0.1:{port}"


def test_help_explains_every_option(tmp_path: Path) -> None:
    child = twistd("storeserver", "--help", cwd=tmp_path).start()
    assert child.wait() == 0
    text = " ".join(child.output.split())  # help text is wrapped
    for name, *_ in Options.optParameters:
        assert f"--{name}=" in text, name
    assert "--listen=" in text and "tcp:7400:interface=127.0.0.1" in text
    assert "[default: always]" in text and "[default: ./var/store]" in text
    # installed backends by name, the example distribution's among them
    assert "file (WAL and snapshot files in --data" in text
    assert "sqlite (one SQLite database in WAL mode" in text


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--fsync", "sometimes"], "--fsync must be always, never or interval:MS"),
        (["--fsync", "interval:0"], "MS > 0"),
        (
            ["--backend", "disk"],
            "--backend disk: not installed; choose one of: file, jetstream, memory",
        ),
        (["--backend", "memory", "--backend-option", "x=1"], "memory takes no options"),
        (["--max-frame-size", "ten"], "whole number"),
        (["--max-frame-size", "100"], "at least 1024"),
        (["--listen", "carrier-pigeon:7400"], "--listen 'carrier-pigeon:7400'"),
        (["--auth-token-file", "/nonexistent/token"], "--auth-token-file: No such file"),
        (["--slow-subscriber", "ignore"], "--slow-subscriber must be disconnect or skip"),
    ],
)
def test_bad_command_lines_exit_non_zero_with_a_readable_line(
    tmp_path: Path, args: list[str], words: str
) -> None:
    # Options parsing is what twistd runs first; check it in-process (fast) ...
    with pytest.raises(Exception, match=words.replace("(", r"\(").replace("*", r"\*")):
        Options().parseOptions(args)


@pytest.mark.slow
def test_bad_command_line_under_twistd(tmp_path: Path) -> None:
    # ... and once for real: the last line names the problem, the status is 1
    child = twistd("storeserver", "--fsync", "sometimes", cwd=tmp_path).start()
    assert child.wait() == 1
    assert child.lines[-1].endswith("--fsync must be always, never or interval:MS, not 'sometimes'")


def test_all_in_one_can_build_the_service_on_defaults(tmp_path: Path) -> None:
    options = Options()
    options.parseOptions(["--data", str(tmp_path / "store")])
    service = makeService(options)
    assert service.config.data_dir == str(tmp_path / "store")
    assert service.config.listen == ["tcp:7400:interface=127.0.0.1"]
    assert str(service.config.fsync) == "always" and service.config.backend == "file"


@pytest.mark.slow
def test_logs_serves_and_drains_on_sigterm(tmp_path: Path) -> None:
    child, address = start(tmp_path / "data")
    with child:
        child.wait_for(r"backend file in .*data, fsync always")
        with NetworkBackend(address=address) as nb:
            nb.write_fact(Fact.build(store="tasks", key="k", value=1))
            assert nb.stats()["facts_written"] == 1
        assert child.terminate() == 0
        child.wait_for(r"Received SIGTERM, shutting down")
        child.wait_for(r"storeserver stopped: 1 facts written by this process, last seq 1")


@pytest.mark.slow
def test_start_failures_exit_1_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        child = twistd(
            "storeserver", "--listen", f"tcp:{port}:interface=127.0.0.1", "--data", str(tmp_path)
        ).start()
        assert child.wait(30) == 1
        assert f"storeserver: cannot listen on tcp:{port}" in child.output

    first, _address = start(tmp_path / "data")
    with first:
        second = twistd(
            "storeserver", "--listen", "tcp:0:interface=127.0.0.1", "--data", str(tmp_path / "data")
        ).start()
        assert second.wait(30) == 1
        assert "is in use by another process" in second.output
        assert first.terminate() == 0


@pytest.mark.slow
def test_unreadable_data_exits_1_with_one_line(tmp_path: Path) -> None:
    from txloom.store.wal import segment_name
    from txloom.wire.crcjson import encode_frame

    data = tmp_path / "data"
    data.mkdir()
    body = b'{"id":null,"store":"s"}'
    (data / segment_name(0)).write_bytes(encode_frame(body) * 3)
    (data / segment_name(1)).write_bytes(encode_frame(body))  # overlaps facts 2 and 3
    child = twistd("storeserver", "--listen", "tcp:0:interface=127.0.0.1", "--data", str(data))
    child.start()
    assert child.wait(30) == 1
    child.wait_for(r"storeserver cannot start: recovery of .* failed: .*overlaps")


def write_until_killed(address: str, clients: int, child: ChildProcess) -> list[str]:
    """``clients`` threads write until the server dies; returns the acknowledged ids."""
    acked: list[str] = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        try:
            with NetworkBackend(address=address, timeout=10) as nb:
                for i in range(1_000_000):
                    fact = Fact.build(store=f"s{n % 3}", key=i, value={"writer": n, "i": i})
                    nb.write_fact(fact)
                    with lock:
                        acked.append(fact.id)
        except Exception:  # the server was killed under us
            pass

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with lock:
            if len(acked) >= 3000:
                break
        time.sleep(0.01)
    child.kill()  # SIGKILL, mid-write
    for t in threads:
        t.join(30)
    return acked


def snapshot_and_compact_until_killed(address: str, stop: threading.Event) -> list[int]:
    """Snapshots (each with one fact of its own) and compactions back to back; the
    numbers of the snapshots that were acknowledged."""
    acked: list[int] = []
    try:
        with NetworkBackend(address=address, timeout=10) as nb:
            while not stop.is_set():
                k = len(acked) + 1
                nb.write_snapshot([{"id": f"snap-{k}", "store": "snap", "value": k}])
                acked.append(k)
                nb.compact()
    except Exception:  # the server was killed under us
        pass
    return acked


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["file", "sqlite"])
def test_sigkill_while_8_clients_write_loses_no_acknowledged_fact(
    tmp_path: Path, backend: str
) -> None:
    """... while snapshots and compactions run too, so the kill lands in their steps.
    ``sqlite`` is the example distribution's backend, chosen by name like a built-in."""
    data = tmp_path / "data"
    child, address = start(data, "--fsync", "always", "--backend", backend)
    stop = threading.Event()
    snapshots: list[int] = []
    maintainer = threading.Thread(
        target=lambda: snapshots.extend(snapshot_and_compact_until_killed(address, stop))
    )
    with child:
        maintainer.start()
        acked = write_until_killed(address, 8, child)
        stop.set()
        maintainer.join(30)
    assert len(acked) >= 3000 and snapshots
    again, address = start(data, "--backend", backend)
    with again:
        with NetworkBackend(address=address) as nb:
            facts = list(nb.replay_pages())
        assert again.terminate() == 0
    stored = Counter(f.id for f in facts if f.store != "snap")
    missing = [i for i in acked if i not in stored]
    assert not missing, f"{len(missing)} acknowledged facts lost"
    assert max(stored.values()) == 1, "a fact came back twice"
    assert len(stored) - len(acked) <= 8  # at most the writes in flight at the kill
    # the last acknowledged snapshot, or one that was being written at the kill
    (snapshot,) = [f.value for f in facts if f.store == "snap"]
    assert snapshot in (snapshots[-1], snapshots[-1] + 1)


def write_facts(address: str, start: int, count: int) -> None:
    with NetworkBackend(address=address) as nb:
        for i in range(start, start + count):
            nb.write_fact({"id": f"f{i}", "store": "tasks", "key": i, "value": "v" * 50})


def stored_keys(address: str) -> list[int]:
    with NetworkBackend(address=address) as nb:
        return [f.key for f in nb.replay()]


@pytest.mark.slow
def test_torn_and_corrupt_wal_recovers_every_intact_fact(tmp_path: Path) -> None:
    data = tmp_path / "data"
    child, address = start(data)
    with child:
        write_facts(address, 0, 40)
        assert child.terminate() == 0
    (segment,) = wal_files(data)
    raw = bytearray(segment.read_bytes())
    frame = len(raw) // 40
    raw[frame * 10 + 20] ^= 0x55  # a flipped byte inside fact 10
    segment.write_bytes(bytes(raw[:-5]))  # and a torn last frame (fact 39)

    child, address = start(data)
    with child:
        child.wait_for(r"cut \d+ bytes at offset")
        keys = stored_keys(address)
        assert keys == [k for k in range(39) if k != 10]
        write_facts(address, 100, 3)  # writes after recovery are readable later
        assert child.terminate() == 0
    side_files = list(data.glob("wal-*.torn-*"))
    assert side_files and side_files[0].stat().st_size > 0

    child, address = start(data)
    with child:
        child.wait_for(r"recovered 41 facts")
        assert stored_keys(address) == [*[k for k in range(39) if k != 10], 100, 101, 102]
        assert child.terminate() == 0
