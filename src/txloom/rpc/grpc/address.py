"""Where the gRPC transport listens and connects, and with which TLS material.

grpcio owns its sockets, so a Twisted endpoint cannot be handed to it; instead the usual
endpoint strings are translated to gRPC addresses, so ``--rpc-grpc`` reads like the other
listeners:

* ``tcp:PORT[:interface=HOST]`` -> ``HOST:PORT`` (all interfaces without ``interface``);
* ``ssl:PORT[:interface=HOST]:privateKey=KEY[:certKey=CERT][:caCerts=CA]`` -> the same with
  TLS (``caCerts`` makes client certificates mandatory and checked against that bundle);
* ``unix:PATH`` -> gRPC's own ``unix:PATH``;
* a bare ``HOST:PORT`` (gRPC's own spelling) is taken as it is.

An agent's URL is ``grpc://HOST:PORT`` (plain) or ``grpcs://HOST:PORT`` (TLS); the query
may name ``ca``, ``cert``, ``key`` (PEM files) and ``server_name`` (the name to check in
the controller's certificate).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import grpc

__all__ = ["ClientTLS", "ListenAddress", "ServerTLS", "parse_connect_url", "parse_listen"]


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """A controller's certificate, key and (to require client certificates) a CA bundle."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        pair = (self.key.read_bytes(), self.cert.read_bytes())
        ca = self.client_ca.read_bytes() if self.client_ca else None
        return grpc.ssl_server_credentials(
            [pair], root_certificates=ca, require_client_auth=ca is not None
        )


@dataclass(frozen=True, slots=True)
class ClientTLS:
    """What an agent checks the controller against and (optionally) presents to it."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes() if self.ca else None,
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """A gRPC listening address and, for ``ssl:``, its TLS material."""

    address: str
    tls: ServerTLS | None = None


def _split_colons(text: str) -> list[str]:
    """Split at colons, as Twisted's endpoint strings do: ``\\:`` is a literal colon."""
    parts, current, chars = [], [], iter(text)
    for ch in chars:
        if ch == "\\":
            current.append(next(chars, ""))
        elif ch == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _endpoint_args(rest: str) -> tuple[list[str], dict[str, str]]:
    positional: list[str] = []
    keywords: dict[str, str] = {}
    for part in _split_colons(rest) if rest else []:
        key, eq, value = part.partition("=")
        if eq:
            keywords[key] = value
        else:
            positional.append(part)
    return positional, keywords


def _host_port(positional: list[str], keywords: dict[str, str], spec: str) -> str:
    port = keywords.pop("port", None) or (positional[0] if positional else None)
    if port is None or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{spec!r}: a port number is required")
    host = keywords.pop("interface", "") or "[::]"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def parse_listen(spec: str, tls: ServerTLS | None = None) -> ListenAddress:
    """Translate a listening endpoint string (see the module doc); ``tls`` applies to
    ``tcp:`` and bare addresses, ``ssl:`` brings its own."""
    kind, colon, rest = spec.partition(":")
    if kind == "unix" and colon:
        if not rest:
            raise ValueError(f"{spec!r}: a socket path is required")
        return ListenAddress(f"unix:{rest}", tls)
    if kind in ("tcp", "ssl") and colon:
        positional, keywords = _endpoint_args(rest)
        if kind == "ssl":
            key = keywords.pop("privateKey", None)
            if key is None:
                raise ValueError(f"{spec!r}: ssl needs privateKey=")
            cert = keywords.pop("certKey", key)
            ca = keywords.pop("caCerts", None)
            tls = ServerTLS(Path(cert), Path(key), Path(ca) if ca else None)
        address = _host_port(positional, keywords, spec)
        if keywords:
            raise ValueError(f"{spec!r}: unknown option(s) {', '.join(sorted(keywords))}")
        return ListenAddress(address, tls)
    host, colon, port = spec.rpartition(":")
    if colon and host and port.isdigit():
        return ListenAddress(spec, tls)
    raise ValueError(f"{spec!r} is not a gRPC listening address (tcp:PORT, ssl:..., unix:PATH)")


def parse_connect_url(url: str) -> tuple[str, ClientTLS | None]:
    """An agent's ``grpc://`` or ``grpcs://`` URL -> (gRPC target, TLS or None)."""
    parts = urlsplit(url)
    if parts.scheme not in ("grpc", "grpcs"):
        raise ValueError(f"{url!r}: the gRPC transport takes grpc:// or grpcs:// URLs")
    if not parts.hostname or parts.port is None:
        raise ValueError(f"{url!r}: host and port are required")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    target = f"{host}:{parts.port}"
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"ca", "cert", "key", "server_name"}
    if unknown:
        raise ValueError(f"{url!r}: unknown parameter(s) {', '.join(sorted(unknown))}")
    if parts.scheme == "grpc":
        if query:
            raise ValueError(f"{url!r}: TLS parameters need grpcs://")
        return target, None
    return target, ClientTLS(
        ca=Path(query["ca"]) if "ca" in query else None,
        cert=Path(query["cert"]) if "cert" in query else None,
        key=Path(query["key"]) if "key" in query else None,
        server_name=query.get("server_name"),
    )
