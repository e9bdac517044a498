"""The WAL on real files: positional numbers, torn tails, corrupt frames, side files."""

from __future__ import annotations

from pathlib import Path

import pytest

from txloom.store.directory import DataDirectoryLocked, FileDirectory, MemoryDirectory
from txloom.store.fact import encode_fact, normalize_fact
from txloom.store.framefile import salvage
from txloom.store.loader import load_store
from txloom.store.volumes import VolumeTable
from txloom.store.wal import WriteAheadLog, segment_name
from txloom.wire.crcjson import encode_frame

MAX = 1 << 20


def body(n: int, store: str = "tasks") -> bytes:
    return encode_fact(normalize_fact({"id": f"f-{n}", "store": store, "key": n, "value": n}))


def open_store(path: Path):
    directory = FileDirectory(path)
    volumes = VolumeTable()
    wal = WriteAheadLog(directory, volumes, MAX)
    loaded = load_store(directory, volumes, wal, MAX)
    return directory, volumes, wal, loaded


def close_store(directory, volumes, wal) -> None:
    wal.close()
    volumes.close()
    directory.close()


def write(wal: WriteAheadLog, bodies: list[bytes]) -> None:
    frames = [encode_frame(b) for b in bodies]
    wal.append(b"".join(frames), len(frames))
    wal.sync()


def keys(directory, volumes, loaded) -> list[tuple[int, int]]:
    """(seq, key) of every indexed fact, read back from the files."""
    import json

    from txloom.store.replay import ReplayPlan

    index = loaded.index
    plan = ReplayPlan(index, range(len(index)), volumes.pin(), next_seq=0)
    bodies = [b for batch in plan.batches() for b in batch]
    plan.close()
    return [(index.seqs[i], json.loads(b)["key"]) for i, b in enumerate(bodies)]


def test_numbers_are_positional_and_stable_across_restarts(tmp_path: Path) -> None:
    d, v, wal, loaded = open_store(tmp_path)
    assert loaded.next_seq == 1
    write(wal, [body(1), body(2)])
    write(wal, [body(3)])
    close_store(d, v, wal)

    d, v, wal, loaded = open_store(tmp_path)
    assert keys(d, v, loaded) == [(1, 1), (2, 2), (3, 3)]
    assert loaded.next_seq == 4
    assert loaded.report.frames == 3 and loaded.report.cut_bytes == 0
    close_store(d, v, wal)


def test_a_reference_wal_is_read_as_is(tmp_path: Path) -> None:
    # the reference server's WAL is the same frames back to back
    raw = b"".join(encode_frame(body(n)) for n in range(5))
    (tmp_path / segment_name(0)).write_bytes(raw)
    d, v, wal, loaded = open_store(tmp_path)
    assert [k for _, k in keys(d, v, loaded)] == [0, 1, 2, 3, 4]
    close_store(d, v, wal)


def test_torn_tail_is_cut_kept_aside_and_later_appends_come_back(tmp_path: Path) -> None:
    d, v, wal, _ = open_store(tmp_path)
    write(wal, [body(n) for n in range(1, 6)])
    close_store(d, v, wal)
    segment = tmp_path / segment_name(0)
    whole = segment.read_bytes()
    segment.write_bytes(whole[:-7])  # the last frame loses its CRC and some body

    d, v, wal, loaded = open_store(tmp_path)
    assert [k for _, k in keys(d, v, loaded)] == [1, 2, 3, 4]
    report = loaded.report
    assert report.cut_bytes == len(encode_frame(body(5))) - 7
    (side,) = report.side_files
    assert (tmp_path / side).read_bytes() == whole[len(whole) - len(encode_frame(body(5))) : -7]
    write(wal, [body(6)])
    close_store(d, v, wal)

    d, v, wal, loaded = open_store(tmp_path)
    assert keys(d, v, loaded) == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 6)]
    assert loaded.report.cut_bytes == 0
    close_store(d, v, wal)


def test_a_flipped_byte_in_the_middle_keeps_every_intact_fact(tmp_path: Path) -> None:
    d, v, wal, _ = open_store(tmp_path)
    write(wal, [body(n) for n in range(1, 11)])
    close_store(d, v, wal)
    segment = tmp_path / segment_name(0)
    data = bytearray(segment.read_bytes())
    third = len(encode_frame(body(1))) * 2 + 30  # inside frame 3's body
    data[third] ^= 0xFF
    segment.write_bytes(bytes(data))

    d, v, wal, loaded = open_store(tmp_path)
    found = [k for _, k in keys(d, v, loaded)]
    # 1 and 2 stay where they were; 4..10 were salvaged and written again at the end
    assert found == [1, 2, 4, 5, 6, 7, 8, 9, 10]
    assert len(loaded.report.salvaged) == 7
    write(wal, [body(11)])
    close_store(d, v, wal)

    d, v, wal, loaded = open_store(tmp_path)
    assert [k for _, k in keys(d, v, loaded)] == [1, 2, 4, 5, 6, 7, 8, 9, 10, 11]
    assert loaded.report.cut_bytes == 0  # the repair itself is clean
    close_store(d, v, wal)


def test_garbage_length_field_at_the_tail(tmp_path: Path) -> None:
    d, v, wal, _ = open_store(tmp_path)
    write(wal, [body(1)])
    close_store(d, v, wal)
    with open(tmp_path / segment_name(0), "ab") as f:
        f.write(b"\xff\xff\xff\xff garbage")
    d, v, wal, loaded = open_store(tmp_path)
    assert [k for _, k in keys(d, v, loaded)] == [1]
    assert loaded.report.cut_bytes == 12
    close_store(d, v, wal)


def test_a_frame_that_is_not_a_fact_is_skipped_but_keeps_its_number(tmp_path: Path) -> None:
    raw = encode_frame(body(1)) + encode_frame(b'{"hello":1}') + encode_frame(body(3))
    (tmp_path / segment_name(0)).write_bytes(raw)
    d, v, wal, loaded = open_store(tmp_path)
    assert keys(d, v, loaded) == [(1, 1), (3, 3)]
    assert loaded.invalid == 1
    close_store(d, v, wal)


def test_segments_rotate_and_keep_numbering(tmp_path: Path) -> None:
    d, v, wal, _ = open_store(tmp_path)
    write(wal, [body(1), body(2)])
    wal.rotate(10)  # numbers 3..10 were taken elsewhere (a snapshot)
    write(wal, [body(11)])
    close_store(d, v, wal)
    assert sorted(p.name for p in tmp_path.glob("wal-*")) == [segment_name(0), segment_name(10)]
    d, v, wal, loaded = open_store(tmp_path)
    assert keys(d, v, loaded) == [(1, 1), (2, 2), (11, 11)]
    assert loaded.next_seq == 12
    close_store(d, v, wal)


def test_overlapping_segments_refuse_to_start(tmp_path: Path) -> None:
    (tmp_path / segment_name(0)).write_bytes(b"".join(encode_frame(body(n)) for n in range(3)))
    (tmp_path / segment_name(1)).write_bytes(encode_frame(body(9)))
    with pytest.raises(RuntimeError, match="overlaps"):
        open_store(tmp_path)


def test_the_data_directory_is_locked(tmp_path: Path) -> None:
    first = FileDirectory(tmp_path)
    with pytest.raises(DataDirectoryLocked, match="in use"):
        FileDirectory(tmp_path)
    first.close()
    FileDirectory(tmp_path).close()


def test_salvage_finds_frames_among_garbage() -> None:
    frames = [encode_frame(body(n)) for n in range(3)]
    data = b"\x00\x01junk" + frames[0] + b"\xff" * 9 + frames[1] + frames[2] + b"\x00\x00"
    assert salvage(data, MAX) == [body(0), body(1), body(2)]


def test_memory_directory_behaves_like_a_file_directory() -> None:
    directory = MemoryDirectory()
    volumes = VolumeTable()
    wal = WriteAheadLog(directory, volumes, MAX)
    loaded = load_store(directory, volumes, wal, MAX)
    write(wal, [body(1), body(2)])
    assert loaded.next_seq == 1 and wal.next_seq == 3
    wal2 = WriteAheadLog(directory, VolumeTable(), MAX)
    again = load_store(directory, wal2.volumes, wal2, MAX)
    assert len(again.index) == 2 and again.next_seq == 3
