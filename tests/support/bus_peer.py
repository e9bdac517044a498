"""A raw Grav peer for tests: RFC 6455 by hand over a blocking socket, no txloom code.

It speaks exactly what a Grav v0.5 node speaks (the handshake JSON, binary message frames,
the WITHDRAW words) and can also send what no well-behaved peer sends (garbage bytes, bad
handshakes, nothing at all), so that the tests check the node against the wire, not
against txloom's own codec.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import socket
import struct

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE, PING, PONG = 1, 2, 8, 9, 10


class PeerClosed(Exception):
    """The node closed the connection (``code`` is the close code, None without a frame)."""

    def __init__(self, code: int | None, reason: bytes = b"") -> None:
        super().__init__(f"closed by the node: {code} {reason!r}")
        self.code = code
        self.reason = reason


class RawGravPeer:
    def __init__(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        path: str = "/meta/message",
        headers: dict[str, str] | None = None,
        timeout: float = 5.0,
        upgrade: bool = True,
        sock: socket.socket | None = None,
    ) -> None:
        #: A peer made from an accepted socket plays the listening side (unmasked frames).
        self.server = sock is not None
        self.sock = sock if sock is not None else socket.create_connection((host, port), timeout)
        self.sock.settimeout(timeout)
        self._buf = b""
        self.status: int | None = None
        #: The request headers the dialling node sent (listening side only).
        self.request_headers: dict[str, str] = {}
        if upgrade and not self.server:
            self.upgrade(host, port, path, headers or {})

    def answer_upgrade(self) -> str:
        """Listening side: read the node's HTTP upgrade and switch protocols; the path."""
        head = self._read_until(b"\r\n\r\n").decode("latin-1")
        request_line, *lines = head.split("\r\n")
        for line in lines:
            k, _, v = line.partition(":")
            self.request_headers[k.strip().lower()] = v.strip()
        key = self.request_headers["sec-websocket-key"].encode()
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
        self.sock.sendall(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode()
        )
        return request_line.split()[1]

    # -- HTTP upgrade ------------------------------------------------------------------------

    def upgrade(self, host: str, port: int, path: str, headers: dict[str, str]) -> None:
        key = base64.b64encode(os.urandom(16))
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key.decode()}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = self._read_until(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        if self.status != 101:
            raise PeerClosed(None, f"HTTP {self.status}".encode())
        got = {}
        for line in header_lines:
            if ":" in line:
                k, v = line.split(":", 1)
                got[k.strip().lower()] = v.strip()
        expected = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
        assert got.get("sec-websocket-accept") == expected, got

    # -- frames ------------------------------------------------------------------------------

    def send_frame(self, payload: bytes, opcode: int = BINARY, fin: bool = True) -> None:
        self.sock.sendall(self.frame(payload, opcode, fin))

    def frame(self, payload: bytes, opcode: int = BINARY, fin: bool = True) -> bytes:
        """One frame's bytes: masked from a dialling peer, unmasked from a listening one."""
        bit = 0 if self.server else 0x80
        head = bytes([(0x80 if fin else 0) | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([bit | n])
        elif n < 65536:
            head += bytes([bit | 126]) + struct.pack(">H", n)
        else:
            head += bytes([bit | 127]) + struct.pack(">Q", n)
        if self.server:
            return head + payload
        mask = os.urandom(4)
        return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_frame(self) -> tuple[int, bytes]:
        """The next data frame (pings are answered, a close raises ``PeerClosed``)."""
        while True:
            b0, b1 = self._read(2)
            opcode = b0 & 0x0F
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack(">H", self._read(2))
            elif n == 127:
                (n,) = struct.unpack(">Q", self._read(8))
            mask = self._read(4) if b1 & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == PING:
                self.send_frame(payload, PONG)
                continue
            if opcode == PONG:
                continue
            if opcode == CLOSE:
                code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None
                raise PeerClosed(code, payload[2:])
            return opcode, payload

    def recv_json(self) -> dict:
        opcode, payload = self.recv_frame()
        assert opcode == BINARY, (opcode, payload)
        return json.loads(payload)

    # -- the Grav conversation ---------------------------------------------------------------

    def handshake(self, uuid: str, belongs_to: str = "*") -> bytes:
        """Send the dialler's handshake; return the node's raw answer."""
        self.send_frame(
            b'{"uuid":"'
            + uuid.encode()
            + b'","belongsTo":"'
            + belongs_to.encode()
            + b'","interests":[]}'
        )
        opcode, payload = self.recv_frame()
        assert opcode == BINARY, (opcode, payload)
        return payload

    def accept_handshake(self, uuid: str, belongs_to: str = "*") -> dict:
        """Listening side: read the node's handshake and accept it as a Grav node does."""
        opcode, payload = self.recv_frame()
        assert opcode == BINARY, (opcode, payload)
        self.send_frame(
            b'{"accept":true,"uuid":"' + uuid.encode() + b'","belongsTo":"'
            + belongs_to.encode() + b'","interests":[]}'
        )  # fmt: skip
        return json.loads(payload)

    def wait_closed(self) -> int | None:
        """Read until the node closes; return its close code (None if it just hung up)."""
        try:
            while True:
                self.recv_frame()
        except PeerClosed as e:
            return e.code
        except (ConnectionError, OSError):
            return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise PeerClosed(None)
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise PeerClosed(None, self._buf)
            self._buf += chunk
        head, _, self._buf = self._buf.partition(marker)
        return head

    def __enter__(self) -> RawGravPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RawGravListener:
    """A listening socket that hands out accepted connections as listening-side peers."""

    def __init__(self, timeout: float = 5.0) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(timeout)
        self.port = self.sock.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}/meta/message"

    def accept(self, timeout: float = 5.0) -> RawGravPeer:
        """The next connection, upgraded (raises ``TimeoutError`` if none comes)."""
        conn, _ = self.sock.accept()
        peer = RawGravPeer(0, sock=conn, timeout=timeout)
        peer.answer_upgrade()
        return peer

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def message_json(
    uuid: str, msg_type: str, data: bytes, timestamp: str, response_to: str = ""
) -> bytes:
    """A message JSON object written by hand, in Grav's field order."""
    meta = {
        "uuid": uuid,
        "parent_id": "",
        "response_to": response_to,
        "msg_type": msg_type,
        "timestamp": timestamp,
    }
    payload = {"data": base64.b64encode(data).decode()}
    return json.dumps({"meta": meta, "payload": payload}, separators=(",", ":")).encode()
