"""Type names and payload codecs; errors as exceptions with codes."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import cbor2
import pytest
from google.protobuf.wrappers_pb2 import StringValue
from hypothesis import given
from hypothesis import strategies as st

from txloom.rpc import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    Raw,
    RPCError,
    rpc_type,
    type_name_of,
)
from txloom.rpc.codecs import codec_for, encode_value


@rpc_type("t.Disk")
@dataclass
class Disk:
    path: str
    free: int = 0


@rpc_type("t.Report")
@dataclass
class Report:
    host: str
    disks: list[Disk] = field(default_factory=list)
    primary: Disk | None = None


@dataclass
class Unnamed:
    x: int


def test_type_names() -> None:
    assert type_name_of(Report) == "t.Report"
    assert type_name_of(Unnamed) == f"{__name__}.Unnamed"
    assert type_name_of(StringValue) == "google.protobuf.StringValue"
    assert type_name_of("raw.Blob") == "raw.Blob"
    assert type_name_of(Raw("raw.Blob", b"")) == "raw.Blob"
    with pytest.raises(TypeError):
        type_name_of(int)
    with pytest.raises(ValueError):
        rpc_type("")


def test_nested_dataclasses_round_trip() -> None:
    report = Report("h", [Disk("/", 1), Disk("/var", 2)], Disk("/", 1))
    assert codec_for(Report).decode(encode_value(report)) == report
    assert codec_for(Report).decode(cbor2.dumps({"host": "h", "extra": 1})) == Report("h")


def test_protobuf_and_raw() -> None:
    message = StringValue(value="hi")
    assert codec_for(StringValue).decode(encode_value(message)) == message
    assert codec_for(None).decode(b"\x00") == b"\x00"
    assert encode_value(None) == b""
    with pytest.raises(InvalidArgument):
        codec_for(StringValue).decode(b"\xff\xff\xff")
    with pytest.raises(TypeError):
        encode_value(object())


@given(st.binary(max_size=64))
def test_garbage_payloads_only_raise_invalid_argument(data: bytes) -> None:
    for kind in (Report, Disk, StringValue):
        with contextlib.suppress(InvalidArgument):
            codec_for(kind).decode(data)


def test_errors_carry_codes() -> None:
    error = RPCError.from_code("not_found", "x", {"a": 1})
    assert isinstance(error, NotFound) and error.code == "not_found"
    assert error.to_response(3).details == {"a": 1}
    assert isinstance(DeadlineExceeded("t"), TimeoutError)
    odd = RPCError.from_code("resource_exhausted", "full")
    assert type(odd) is RPCError and str(odd) == "resource_exhausted: full"
    assert NotFound("x") == RPCError("not_found", "x")
