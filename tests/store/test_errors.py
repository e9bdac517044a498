"""Raw-frame tests for every error the server answers, and what happens to the connection."""

from __future__ import annotations

import errno
import resource
import struct
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from support.store import (
    VECTOR_FACT,
    RawClient,
    frame,
    running_server,
    serve,
    tcp_address,
    unix_path,
)
from support.waiting import until
from txloom.wire.crcjson import encode_object


def make_server(tmp_path: Path, **overrides):
    overrides.setdefault("backend", "memory")
    return serve(tmp_path / "data", **overrides)


@pytest.fixture
def server(tmp_path: Path):
    yield from make_server(tmp_path)


def in_thread(fn, *args):
    return deferToThread(fn, *args)


def error_of(answer: dict) -> tuple[str, str]:
    assert answer["ok"] is False, answer
    return answer["error_code"], answer["error"]


# -- errors that keep the connection -------------------------------------------------------


def fact_errors(address: str) -> list[tuple[str, str]]:
    with RawClient(address) as c:
        out = [
            error_of(c.rpc({"op": "write_fact"})),
            error_of(c.rpc({"op": "write_fact", "fact": "text"})),
            error_of(c.rpc({"op": "write_fact", "fact": {"key": "k"}})),
            error_of(c.rpc({"op": "write_fact", "fact": {"store": "s", "transaction_time": "x"}})),
            error_of(c.rpc({"op": "write_snapshot", "facts": [VECTOR_FACT, {"key": 1}]})),
        ]
        assert c.rpc({"op": "ping"})["pong"] is True  # still open
        assert c.rpc({"op": "replay"})["facts"] == []  # nothing half-written
    return out


@pytest_twisted.ensureDeferred
async def test_invalid_facts_get_invalid_fact(server) -> None:
    out = await in_thread(fact_errors, tcp_address(server))
    assert [code for code, _ in out] == ["invalid_fact"] * 5
    assert "fact missing" in out[0][1]
    assert "JSON object" in out[1][1]
    assert "no store" in out[2][1]
    assert "number" in out[3][1]
    assert "facts[1]" in out[4][1]


def request_errors(address: str) -> list[dict]:
    with RawClient(address) as c:
        return [
            c.rpc({"op": "replay", "stores": "tasks", "request_id": "a"}),
            c.rpc({"op": "replay", "since": -1}),
            c.rpc({"op": "replay", "limit": 0}),
            c.rpc({"op": "replay", "since": True}),
            c.rpc({"op": "write_snapshot", "facts": {"not": "a list"}}),
            c.rpc({"op": "subscribe", "stores": [1, 2]}),
            c.rpc({"op": 42, "request_id": None}),
        ]


@pytest_twisted.ensureDeferred
async def test_malformed_requests_get_invalid_request(server) -> None:
    out = await in_thread(request_errors, tcp_address(server))
    assert [a["error_code"] for a in out] == ["invalid_request"] * 6 + ["unknown_op"]
    assert out[0]["request_id"] == "a"
    assert out[6] == {
        "ok": False,
        "error_code": "unknown_op",
        "error": "Unknown op: 42",
        "request_id": None,
    }


# -- errors that close the connection ------------------------------------------------------


def answer_then_close(address: str, transport: str, data: bytes) -> dict:
    with RawClient(address, transport) as c:
        c.send(data)
        answer = c.read()
        c.expect_closed()
    assert answer is not None
    return answer


CLOSING_CASES = {
    "bad_crc": (frame(b'{"op":"ping"}')[:-1] + b"\x00", "bad_frame", "CRC"),
    "bad_json": (frame(b'{"op":"ping"'), "bad_frame", "not JSON"),
    "bad_utf8": (frame(b'{"op":"\xff"}'), "bad_frame", "UTF-8"),
    "json_array": (frame(b'[{"op":"ping"}]'), "bad_frame", "array"),
    "json_string": (frame(b'"ping"'), "bad_frame", "string"),
    "oversize": (struct.pack(">I", 0xFFFFFFFF) + b"{", "frame_too_large", "4294967295"),
}


@pytest.mark.parametrize("case", sorted(CLOSING_CASES))
@pytest_twisted.ensureDeferred
async def test_broken_frames_are_answered_then_closed(server, case: str) -> None:
    data, code, words = CLOSING_CASES[case]
    for address, transport in ((tcp_address(server), "tcp"), (unix_path(server), "unix")):
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        answer = await in_thread(answer_then_close, address, transport, data)
        assert error_of(answer)[0] == code
        assert words in answer["error"]
        # a 4 GiB claim allocates nothing (ru_maxrss is in KiB)
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 64 * 1024


def answers_before_break(address: str) -> list[dict | None]:
    with RawClient(address) as c:
        fact = dict(VECTOR_FACT, id="before-break")
        c.send(encode_object({"op": "write_fact", "fact": fact, "request_id": 1}) + frame(b"[]"))
        return [c.read(), c.read(), c.read()]


@pytest_twisted.ensureDeferred
async def test_writes_before_a_broken_frame_are_still_answered(server) -> None:
    first, second, end = await in_thread(answers_before_break, tcp_address(server))
    assert first == {"ok": True, "request_id": 1}
    assert second["error_code"] == "bad_frame"
    assert end is None
    assert server.backend.fact_count == 1


@pytest.fixture
def auth_server(tmp_path: Path):
    yield from make_server(tmp_path, auth_token="s3cret")


def auth_conversations(address: str) -> list:
    out = []
    out.append(answer_then_close(address, "tcp", encode_object({"op": "ping", "request_id": 1})))
    out.append(answer_then_close(address, "tcp", encode_object({"op": "auth", "token": "nope"})))
    with RawClient(address) as c:
        out.append(c.rpc({"op": "auth", "token": "s3cret", "request_id": "a"}))
        out.append(c.rpc({"op": "ping"}))
    return out


@pytest_twisted.ensureDeferred
async def test_auth_required_first(auth_server) -> None:
    refused, wrong, accepted, ping = await in_thread(auth_conversations, tcp_address(auth_server))
    assert error_of(refused)[0] == "unauthorized" and refused["request_id"] == 1
    assert error_of(wrong) == ("unauthorized", "wrong token")
    assert accepted == {"ok": True, "request_id": "a"}
    assert ping["pong"] is True


@pytest.fixture
def capped_server(tmp_path: Path):
    yield from make_server(tmp_path, max_connections=1)


def over_the_cap(address: str) -> tuple[dict, dict | None]:
    with RawClient(address) as first:
        first.rpc({"op": "ping"})
        with RawClient(address) as second:
            refused = second.read()
            second.expect_closed()
        return first.rpc({"op": "ping"}), refused


@pytest_twisted.ensureDeferred
async def test_connection_cap_answers_overloaded(capped_server) -> None:
    still_fine, refused = await in_thread(over_the_cap, tcp_address(capped_server))
    assert still_fine["pong"] is True
    assert refused is not None and error_of(refused)[0] == "overloaded"


@pytest.fixture
def small_frames(tmp_path: Path):
    yield from make_server(tmp_path, max_frame_size=8192)


def too_large_replay(address: str) -> tuple[dict, list[dict], dict]:
    with RawClient(address) as c:
        for i in range(100):
            assert c.rpc({"op": "write_fact", "fact": dict(VECTOR_FACT, id=f"f{i}")})["ok"]
        refused = c.rpc({"op": "replay", "request_id": "r"})
        pages = []
        since = 0
        while True:
            page = c.rpc({"op": "replay", "since": since})
            pages.append(page)
            if not page["more"]:
                break
            since = page["next"]
        big = c.rpc({"op": "write_fact", "fact": dict(VECTOR_FACT, value="x" * 5000)})
    return refused, pages, big


@pytest_twisted.ensureDeferred
async def test_replay_beyond_the_frame_limit_points_to_pages(small_frames) -> None:
    refused, pages, big = await in_thread(too_large_replay, tcp_address(small_frames))
    assert error_of(refused)[0] == "frame_too_large"
    assert refused["request_id"] == "r"
    assert '"since"' in refused["error"]
    ids = [f["id"] for p in pages for f in p["facts"]]
    assert ids == [f"f{i}" for i in range(100)]
    assert len(pages) > 2
    assert error_of(big)[0] == "invalid_fact" and "limit" in big["error"]


@pytest.fixture
def file_server(tmp_path: Path):
    yield from make_server(tmp_path, backend="file", storage_retry_max=0.2)


class FullDisk:
    """A WAL volume whose appends write half their bytes, then fail, while ``full``."""

    def __init__(self, volume) -> None:
        self.full = True
        self._append = volume.append
        volume.append = self.append

    def append(self, data: bytes) -> int:
        if self.full:
            self._append(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return self._append(data)


def rpc(address: str, *requests: dict) -> list[dict]:
    with RawClient(address) as c:
        return [c.rpc(r) for r in requests]


@pytest_twisted.ensureDeferred
async def test_writes_resume_once_a_full_disk_has_room_again(file_server) -> None:
    """Regression: one failed write used to refuse every later write until a restart."""
    address = tcp_address(file_server)
    write = {"op": "write_fact", "fact": dict(VECTOR_FACT, id="before")}
    assert (await in_thread(rpc, address, write))[0]["ok"] is True
    disk = FullDisk(file_server.backend.wal.active.volume)
    failed, refused, ping, stats = await in_thread(
        rpc,
        address,
        {"op": "write_fact", "fact": dict(VECTOR_FACT, id="fails"), "request_id": 1},
        {"op": "write_fact", "fact": dict(VECTOR_FACT, id="refused")},
        {"op": "ping"},
        {"op": "stats"},
    )
    assert failed == {
        "ok": False,
        "error_code": "storage_failed",
        "error": "storage failure; see the server log",
        "request_id": 1,
    }
    assert refused["error_code"] == "storage_failed"
    assert ping["pong"] is True  # reads and the connection go on
    assert stats["storage"] == "failed" and "No space" in stats["storage_error"]
    disk.full = False
    await until(lambda: file_server.backend.storage_status()["storage"] == "ok", what="recovery")
    after = {"op": "write_fact", "fact": dict(VECTOR_FACT, id="after")}
    written, replay, stats = await in_thread(rpc, address, after, {"op": "replay"}, {"op": "stats"})
    assert written["ok"] is True
    assert [f["id"] for f in replay["facts"]] == ["before", "after"]
    assert stats["storage"] == "ok" and stats["storage_failures"] >= 1
    assert stats["last_seq"] == 2  # the failed write's number was given again
    # the half-written frame was cut off: the log reads back whole after a restart
    await file_server.stopService()
    async with running_server(file_server.config.data_dir, backend="file") as again:
        (replay,) = await in_thread(rpc, tcp_address(again), {"op": "replay"})
    assert [f["id"] for f in replay["facts"]] == ["before", "after"]


@pytest_twisted.ensureDeferred
async def test_a_failed_snapshot_fails_alone(file_server) -> None:
    """Regression: a snapshot file that could not be written used to stop every write."""
    address = tcp_address(file_server)
    directory = file_server.backend.directory
    replace = directory.replace

    def full(name, chunks):
        raise OSError(errno.ENOSPC, "No space left on device")

    directory.replace = full
    snapshot = {"op": "write_snapshot", "facts": [dict(VECTOR_FACT, id="s")], "request_id": 2}
    write = {"op": "write_fact", "fact": dict(VECTOR_FACT, id="w")}
    failed, written, stats = await in_thread(rpc, address, snapshot, write, {"op": "stats"})
    assert failed["error_code"] == "storage_failed" and failed["request_id"] == 2
    assert written["ok"] is True
    assert stats["storage"] == "ok"
    directory.replace = replace
    done, replay = await in_thread(rpc, address, snapshot, {"op": "replay"})
    assert done["ok"] is True
    assert sorted(f["id"] for f in replay["facts"]) == ["s", "w"]
