"""Peer addresses: ``ws://`` and ``wss://`` URLs and the Twisted endpoint strings they dial."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["DEFAULT_PATH", "DEFAULT_PORT", "BadPeerURL", "PeerURL", "escape_endpoint_value"]

#: Where a Grav node serves its mesh WebSocket.
DEFAULT_PATH = "/meta/message"
DEFAULT_PORT = 8080


class BadPeerURL(ValueError):
    """A peer address that is not a ``ws://`` or ``wss://`` URL."""


def escape_endpoint_value(value: str) -> str:
    """Escape ``:`` and ``\\`` for a Twisted endpoint string (IPv6 hosts, Windows paths)."""
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


@dataclass(frozen=True, slots=True)
class PeerURL:
    """A parsed peer address: ``ws://HOST[:PORT][/PATH]`` or ``wss://...``.

    Without a scheme, only ``HOST:PORT`` is taken (as ``ws``): a bare word or host would
    otherwise become ``ws://word:80`` and be redialled for ever.
    """

    secure: bool
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, text: str) -> PeerURL:
        raw = text.strip()
        if "://" not in raw:
            host, colon, port_text = raw.rpartition(":")
            if not colon or not host or not port_text.isdigit() or "/" in host:
                raise BadPeerURL(
                    f"{text!r} is not a peer URL: write ws://HOST:PORT/PATH (or wss://...)"
                )
            raw = "ws://" + raw
        try:
            parts = urlsplit(raw)
            port = parts.port
        except ValueError as e:
            raise BadPeerURL(f"{text!r} is not a peer URL: {e}") from None
        if parts.scheme not in ("ws", "wss"):
            raise BadPeerURL(f"{text!r}: peer URLs start with ws:// or wss://")
        if not parts.hostname:
            raise BadPeerURL(f"{text!r} names no host")
        if parts.query or parts.fragment:
            raise BadPeerURL(f"{text!r}: a peer URL has no query or fragment")
        secure = parts.scheme == "wss"
        return cls(
            secure=secure,
            host=parts.hostname,
            port=port if port is not None else (443 if secure else 80),
            path=parts.path or DEFAULT_PATH,
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'wss' if self.secure else 'ws'}://{host}:{self.port}{self.path}"

    def endpoint(self, timeout: float = 30, trust_roots: str | None = None) -> str:
        """The client endpoint string: ``tcp:`` for ws, ``tls:`` (verifying the host) for wss."""
        host = escape_endpoint_value(self.host)
        spec = f"host={host}:port={self.port}:timeout={max(1, round(timeout))}"
        if not self.secure:
            return "tcp:" + spec
        if trust_roots:
            spec += ":trustRoots=" + escape_endpoint_value(trust_roots)
        return "tls:" + spec

    def __str__(self) -> str:
        return self.url
