"""Helpers for store tests: an in-process server on real sockets, and a raw frame client."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed

from txloom.store.config import StoreConfig
from txloom.store.service import StoreService
from txloom.wire.crcjson import ObjectDecoder, encode_object

#: The fact the reference vectors were captured with.
VECTOR_FACT = {
    "id": "11111111-2222-4333-8444-555555555555",
    "store": "tasks",
    "key": "k1",
    "value": {"b": 2, "a": [1, "x", None]},
    "value_hash": "deadbeef",
    "causation": None,
    "transaction_time": 1700000000,
    "schema_version": 1,
}


@contextlib.contextmanager
def short_tempdir() -> Iterator[str]:
    """A directory with a short path (Unix socket paths are limited to ~100 bytes)."""
    path = tempfile.mkdtemp(prefix="txl-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def server_config(data_dir: str | os.PathLike[str], sock_dir: str, **overrides: Any) -> StoreConfig:
    listen = overrides.pop(
        "listen", ["tcp:0:interface=127.0.0.1", f"unix:{os.path.join(sock_dir, 's.sock')}"]
    )
    return StoreConfig(listen=listen, data_dir=str(data_dir), **overrides)


def start_server(config: StoreConfig) -> Deferred:
    """Fires with a running ``StoreService``; ``stop_server`` it at the end."""

    async def start() -> StoreService:
        service = StoreService(config, reactor)
        service.startService()
        await service.ready
        return service

    return Deferred.fromCoroutine(start())


def stop_server(service: StoreService) -> Deferred:
    if service.running:
        return service.stopService()
    return succeed(None)


def serve(data_dir: str | os.PathLike[str], **overrides: Any) -> Iterator[StoreService]:
    """For fixtures (``yield from serve(tmp_path, backend="memory")``): a running server,
    stopped when the fixture ends."""
    with short_tempdir() as sock_dir:
        service = pytest_twisted.blockon(
            start_server(server_config(data_dir, sock_dir, **overrides))
        )
        try:
            yield service
        finally:
            pytest_twisted.blockon(stop_server(service))


@contextlib.asynccontextmanager
async def running_server(
    data_dir: str | os.PathLike[str], **overrides: Any
) -> AsyncIterator[StoreService]:
    """``async with running_server(path, backend="memory") as service:``"""
    with short_tempdir() as sock_dir:
        service = await start_server(server_config(data_dir, sock_dir, **overrides))
        try:
            yield service
        finally:
            await stop_server(service)


def tcp_address(service: StoreService) -> str:
    """``HOST:PORT`` of the first TCP listener."""
    for address in service.addresses:
        if address.startswith("tcp:"):
            return address[len("tcp:") :]
    raise AssertionError(f"no TCP listener in {service.addresses}")


def unix_path(service: StoreService) -> str:
    for address in service.addresses:
        if address.startswith("unix:"):
            return address[len("unix:") :]
    raise AssertionError(f"no Unix listener in {service.addresses}")


def frame(body: bytes) -> bytes:
    """A raw frame around any bytes (tests build broken ones on purpose)."""
    return len(body).to_bytes(4, "big") + body + (zlib.crc32(body) & 0xFFFFFFFF).to_bytes(4, "big")


class RawClient:
    """A blocking socket speaking raw frames, for byte-exact tests (run it off the reactor)."""

    def __init__(self, address: str, transport: str = "tcp", timeout: float = 10.0) -> None:
        if transport == "unix":
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(address)
        else:
            host, _, port = address.rpartition(":")
            self.sock = socket.create_connection((host, int(port)), timeout)
        self.decoder = ObjectDecoder(1 << 30)
        self._buffer = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_object(self, obj: dict[str, Any]) -> None:
        self.sock.sendall(encode_object(obj))

    def read_body(self) -> bytes | None:
        """The next frame's raw body, or None if the server closed the connection."""
        while True:
            if len(self._buffer) >= 4:
                size = int.from_bytes(self._buffer[:4], "big")
                if len(self._buffer) >= size + 8:
                    body = bytes(self._buffer[4 : 4 + size])
                    crc = int.from_bytes(self._buffer[4 + size : 8 + size], "big")
                    assert crc == zlib.crc32(body) & 0xFFFFFFFF, "bad CRC from the server"
                    del self._buffer[: size + 8]
                    return body
            data = self.sock.recv(1 << 20)
            if not data:
                assert not self._buffer, f"server closed mid-frame: {bytes(self._buffer[:80])!r}"
                return None
            self._buffer += data

    def read(self) -> dict[str, Any] | None:
        body = self.read_body()
        return None if body is None else json.loads(body)

    def rpc(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.send_object(obj)
        answer = self.read()
        assert answer is not None, f"connection closed instead of answering {obj}"
        return answer

    def rpc_body(self, obj: dict[str, Any]) -> bytes:
        self.send_object(obj)
        body = self.read_body()
        assert body is not None, f"connection closed instead of answering {obj}"
        return body

    def expect_closed(self) -> None:
        assert self.read_body() is None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wal_files(data_dir: str | os.PathLike[str]) -> list[Path]:
    return sorted(Path(data_dir).glob("wal-*.log"))
