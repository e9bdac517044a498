"""The shared decoder shape: NEED_DATA, sticky errors, clean and cut ends of stream."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from support.splits import split
from txloom.wire.decoder import NEED_DATA, ConnectionClosed, Decoder, ReceiveBuffer
from txloom.wire.errors import LocalProtocolError, RemoteProtocolError, TruncatedFrame

BYTE = struct.Struct("B")


class CountedDecoder(Decoder):
    """One length byte, then that many bytes; a length of 255 is a protocol error."""

    def _decode(self, buffer: ReceiveBuffer) -> object:
        head = buffer.unpack(BYTE)
        if head is None:
            return NEED_DATA
        if head[0] == 255:
            raise RemoteProtocolError("255 is not a length")
        if len(buffer) < 1 + head[0]:
            return NEED_DATA
        return buffer.take(head[0], skip=1)


@given(st.lists(st.binary(max_size=254), max_size=20), st.lists(st.integers(0), max_size=8))
def test_events_come_out_whole_for_any_split(payloads, cuts) -> None:
    stream = b"".join(bytes([len(p)]) + p for p in payloads)
    decoder = CountedDecoder()
    out = []
    for piece in split(stream, cuts):
        decoder.receive_data(piece)
        out.extend(decoder)
    decoder.receive_eof()
    assert out + list(decoder) == [*payloads, ConnectionClosed()]


def test_need_data_is_falsy_and_unique() -> None:
    assert not NEED_DATA
    assert type(NEED_DATA)() is NEED_DATA
    assert CountedDecoder().next_event() is NEED_DATA


def test_errors_are_sticky() -> None:
    decoder = CountedDecoder()
    decoder.receive_data(b"\xff")
    with pytest.raises(RemoteProtocolError) as first:
        decoder.next_event()
    decoder.receive_data(b"\x00")
    with pytest.raises(RemoteProtocolError) as again:
        decoder.next_event()
    assert again.value is first.value


def test_a_cut_event_at_the_end_is_an_error_not_a_clean_end() -> None:
    decoder = CountedDecoder()
    decoder.receive_data(b"\x05abc")
    assert decoder.next_event() is NEED_DATA
    decoder.receive_eof()
    with pytest.raises(TruncatedFrame):
        decoder.next_event()


def test_no_bytes_after_the_end() -> None:
    decoder = CountedDecoder()
    decoder.receive_eof()
    with pytest.raises(LocalProtocolError):
        decoder.receive_data(b"\x00")


def test_buffer_compacts_without_losing_bytes() -> None:
    buffer = ReceiveBuffer()
    chunk = bytes(range(256)) * 512  # 128 KiB
    buffer.append(chunk)
    taken = b"".join(buffer.take(1000) for _ in range(100))
    assert taken == chunk[:100_000]
    buffer.append(b"tail")
    assert buffer.peek() == chunk[100_000:] + b"tail"


@given(st.lists(st.binary(max_size=40), max_size=12), st.lists(st.integers(0, 600), max_size=6))
def test_take_frames_takes_whole_frames_and_leaves_the_rest(payloads, cuts) -> None:
    stream = b"".join(BYTE.pack(len(p)) + p for p in payloads)
    buffer, out = ReceiveBuffer(), []
    for piece in split(stream, cuts):
        buffer.append(piece)
        out.extend(buffer.take_frames(BYTE, 40))
    assert out == payloads
    assert not buffer


def test_take_frames_stops_at_a_length_over_the_limit() -> None:
    buffer = ReceiveBuffer()
    buffer.append(b"\x01a\x02bc\x09rest")
    assert buffer.take_frames(BYTE, 8) == [b"a", b"bc"]
    assert buffer.peek() == b"\x09rest"  # left for the decoder's own error path
    assert buffer.take_frames(BYTE, 8) == []
