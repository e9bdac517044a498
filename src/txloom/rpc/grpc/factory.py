"""The gRPC transport's ``IRPCTransportFactory``: ``--rpc-grpc`` and ``grpc://`` agents.

Registered in ``twisted/plugins/txloom_extensions.py``; imports grpcio only when it builds
a transport, so loading the dropin stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

from txloom.extensions import positive
from txloom.interfaces import IRPCTransportFactory
from txloom.wire.rpc import DEFAULT_MAX_FRAME_SIZE

__all__ = ["DEFAULT_LISTEN", "GrpcOptions", "GrpcTransportFactory"]

#: Where a controller listens when no ``listen`` option is given: loopback only, like every
#: other default listener, so that agents on other hosts are let in by choice.
DEFAULT_LISTEN = "tcp:7301:interface=127.0.0.1"


class GrpcOptions(usage.Options):
    """Options of both ends; ``Controller:`` ones apply to the server, ``Agent:`` ones to
    the client."""

    optParameters = [
        [
            "listen",
            None,
            DEFAULT_LISTEN,
            "Controller: tcp:PORT[:interface=H], ssl:PORT:privateKey=K[:certKey=C][:caCerts=CA], "
            "unix:PATH or HOST:PORT.",
        ],
        ["tls-cert", None, None, "Controller: PEM certificate (with tls-key: TLS on tcp:)."],
        ["tls-key", None, None, "Controller: PEM private key."],
        ["tls-client-ca", None, None, "Controller: require client certificates from this CA."],
        [
            "max-message-size",
            None,
            DEFAULT_MAX_FRAME_SIZE,
            "Largest message in bytes, either way.",
            positive(int),
        ],
        [
            "send-queue-limit",
            None,
            8 * 1024 * 1024,
            "Controller: bytes that may wait for a slow agent before it is dropped.",
            positive(int),
        ],
        [
            "hello-timeout",
            None,
            10.0,
            "Controller: seconds a stream has to say hello.",
            positive(float),
        ],
        ["ca", None, None, "Agent (grpcs://): CA bundle to check the controller against."],
        ["cert", None, None, "Agent (grpcs://): client certificate (PEM)."],
        ["key", None, None, "Agent (grpcs://): client private key (PEM)."],
        ["server-name", None, None, "Agent (grpcs://): name to expect in the certificate."],
        [
            "reconnect-initial",
            None,
            0.5,
            "Agent: first reconnect delay in seconds.",
            positive(float),
        ],
        [
            "reconnect-max",
            None,
            10.0,
            "Agent: longest reconnect delay in seconds.",
            positive(float),
        ],
        [
            "asyncio",
            None,
            "auto",
            "Where grpc.aio runs: auto (the reactor's loop under the asyncio reactor, else "
            "a thread), same or thread.",
        ],
    ]

    def postOptions(self) -> None:
        if (self["tls-cert"] is None) != (self["tls-key"] is None):
            raise usage.UsageError("tls-cert and tls-key go together")
        if self["asyncio"] not in ("auto", "same", "thread"):
            raise usage.UsageError("asyncio: one of auto, same, thread")


def _get(options: Any, key: str) -> Any:
    if options is None:
        options = GrpcOptions()
        options.parseOptions([])
    return options[key]


@implementer(IPlugin, IRPCTransportFactory)
class GrpcTransportFactory:
    """The seed system's wire: ``aperture.rpc.v1.Coordinator/Connect`` over gRPC."""

    name = "grpc"
    description = "aperture-compatible gRPC stream (aperture.rpc.v1.Coordinator)"
    options = GrpcOptions
    schemes = ("grpc", "grpcs")

    def server(self, registry: Any, options: Any = None) -> Any:
        from txloom.rpc.grpc.address import ServerTLS  # noqa: PLC0415 - keep the dropin cheap
        from txloom.rpc.grpc.server import GrpcServerTransport  # noqa: PLC0415

        tls = None
        if _get(options, "tls-cert") is not None:
            ca = _get(options, "tls-client-ca")
            tls = ServerTLS(
                Path(_get(options, "tls-cert")),
                Path(_get(options, "tls-key")),
                Path(ca) if ca else None,
            )
        return GrpcServerTransport(
            registry,
            _get(options, "listen"),
            tls=tls,
            runner=_get(options, "asyncio"),
            max_message_size=_get(options, "max-message-size"),
            send_queue_limit=_get(options, "send-queue-limit"),
            hello_timeout=_get(options, "hello-timeout"),
        )

    def client(
        self, url: str, name: str, dispatcher: Any, token: str | None, options: Any = None
    ) -> Any:
        from txloom.rpc.grpc.address import ClientTLS, parse_connect_url  # noqa: PLC0415
        from txloom.rpc.grpc.client import GrpcClientTransport  # noqa: PLC0415

        target, tls = parse_connect_url(url)
        if tls is not None:
            # Options fill in what the URL's query did not say.
            def pick(current: Any, key: str) -> Any:
                value = _get(options, key)
                return current if current is not None or value is None else type_of(key)(value)

            def type_of(key: str) -> Any:
                return str if key == "server-name" else Path

            tls = ClientTLS(
                ca=pick(tls.ca, "ca"),
                cert=pick(tls.cert, "cert"),
                key=pick(tls.key, "key"),
                server_name=pick(tls.server_name, "server-name"),
            )
        return GrpcClientTransport(
            target,
            name,
            dispatcher,
            token,
            tls=tls,
            runner=_get(options, "asyncio"),
            max_message_size=_get(options, "max-message-size"),
            reconnect_initial=_get(options, "reconnect-initial"),
            reconnect_max=_get(options, "reconnect-max"),
        )
