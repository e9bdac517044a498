"""The ``IRPCTransportFactory`` of each of txloom's own RPC transports.

Registered in ``twisted/plugins/txloom_extensions.py`` and found with
``txloom.extensions.available(IRPCTransportFactory)``, exactly like a third-party
transport's. Each imports its implementation only when it builds one.
"""

from __future__ import annotations

from typing import Any

from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

from txloom.extensions import positive
from txloom.interfaces import IRPCTransportFactory
from txloom.rpc.backoff import RECONNECT_INITIAL, RECONNECT_MAX
from txloom.wire.rpc import DEFAULT_MAX_FRAME_SIZE

__all__ = [
    "HeartbeatTransportFactory",
    "LongPollTransportFactory",
    "StreamTransportFactory",
    "factory_for_url",
]


class StreamOptions(usage.Options):
    optParameters = [
        ["listen", None, "tcp:7300", "Controller: server endpoint string to listen on."],
        ["max-frame-size", None, DEFAULT_MAX_FRAME_SIZE, "Largest frame in bytes.", positive(int)],
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
            "Controller: seconds a connection has to say hello.",
            positive(float),
        ],
        [
            "reconnect-initial",
            None,
            RECONNECT_INITIAL,
            "Agent: first reconnect delay in seconds.",
            positive(float),
        ],
        [
            "reconnect-max",
            None,
            RECONNECT_MAX,
            "Agent: longest reconnect delay in seconds.",
            positive(float),
        ],
    ]


def _get(options: Any, key: str, default: Any) -> Any:
    if options is None:
        return default
    return options.get(key, default)


@implementer(IPlugin, IRPCTransportFactory)
class StreamTransportFactory:
    """One long-lived connection per agent over any Twisted stream endpoint."""

    name = "stream"
    description = "one connection per agent over TCP, Unix or TLS (endpoint strings)"
    options = StreamOptions
    schemes = ("tcp", "unix", "tls", "ssl")

    def server(self, registry: Any, options: Any = None) -> Any:
        from txloom.rpc.transports.stream import (  # noqa: PLC0415 - keep the dropin cheap
            HELLO_TIMEOUT,
            SEND_QUEUE_LIMIT,
            StreamServerTransport,
        )

        return StreamServerTransport(
            registry,
            _get(options, "listen", "tcp:7300"),
            max_frame_size=_get(options, "max-frame-size", DEFAULT_MAX_FRAME_SIZE),
            send_queue_limit=_get(options, "send-queue-limit", SEND_QUEUE_LIMIT),
            hello_timeout=_get(options, "hello-timeout", HELLO_TIMEOUT),
        )

    def client(
        self, url: str, name: str, dispatcher: Any, token: str | None, options: Any = None
    ) -> Any:
        from txloom.rpc.transports.stream import (  # noqa: PLC0415 - keep the dropin cheap
            StreamClientTransport,
        )

        return StreamClientTransport(
            url,
            name,
            dispatcher,
            token,
            reconnect_initial=_get(options, "reconnect-initial", RECONNECT_INITIAL),
            reconnect_max=_get(options, "reconnect-max", RECONNECT_MAX),
            max_frame_size=_get(options, "max-frame-size", DEFAULT_MAX_FRAME_SIZE),
        )


def factory_for_url(url: str) -> Any:
    """The installed transport factory whose ``schemes`` include ``url``'s scheme."""
    from txloom.extensions import available  # noqa: PLC0415

    scheme = url.partition("://")[0].lower()
    factories = available(IRPCTransportFactory)
    for factory in factories.values():
        if scheme in tuple(getattr(factory, "schemes", ())):
            return factory
    known = sorted({s for f in factories.values() for s in getattr(f, "schemes", ())})
    raise usage.UsageError(f"{url}: no RPC transport for {scheme!r} (known: {', '.join(known)})")


class HttpOptions(usage.Options):
    optParameters = [
        [
            "listen",
            None,
            None,
            "Controller: serve /rpc/ on this endpoint itself (else mount the resource).",
        ],
        ["interval", None, 1.0, "Seconds between heartbeats (told to agents).", positive(float)],
        [
            "hold",
            None,
            25.0,
            "Long-poll: seconds a poll is held with nothing to send.",
            positive(float),
        ],
        ["max-body-size", None, DEFAULT_MAX_FRAME_SIZE, "Largest body in bytes.", positive(int)],
        [
            "queue-limit",
            None,
            8 * 1024 * 1024,
            "Controller: bytes that may wait for one agent before it is dropped.",
            positive(int),
        ],
        [
            "reconnect-initial",
            None,
            RECONNECT_INITIAL,
            "Agent: first retry delay in seconds.",
            positive(float),
        ],
        [
            "reconnect-max",
            None,
            RECONNECT_MAX,
            "Agent: longest retry delay in seconds.",
            positive(float),
        ],
    ]


@implementer(IPlugin, IRPCTransportFactory)
class _HttpTransportFactory:
    mode = "abstract"
    options = HttpOptions
    schemes: tuple[str, ...] = ()

    def server(self, registry: Any, options: Any = None) -> Any:
        from txloom.rpc.transports.http_server import (  # noqa: PLC0415
            DEFAULT_HOLD,
            DEFAULT_INTERVAL,
            QUEUE_LIMIT,
            HttpServerTransport,
        )

        return HttpServerTransport(
            registry,
            self.mode,
            _get(options, "listen", None),
            interval=_get(options, "interval", DEFAULT_INTERVAL),
            hold=_get(options, "hold", DEFAULT_HOLD),
            max_body_size=_get(options, "max-body-size", DEFAULT_MAX_FRAME_SIZE),
            queue_limit=_get(options, "queue-limit", QUEUE_LIMIT),
        )

    def client(
        self, url: str, name: str, dispatcher: Any, token: str | None, options: Any = None
    ) -> Any:
        from txloom.rpc.transports.http_client import HttpClientTransport  # noqa: PLC0415

        if "://" in url and "+" not in url.partition("://")[0]:
            url = f"{self.mode}+{url}"
        return HttpClientTransport(
            url,
            name,
            dispatcher,
            token,
            interval=_get(options, "interval", 1.0),
            reconnect_initial=_get(options, "reconnect-initial", RECONNECT_INITIAL),
            reconnect_max=_get(options, "reconnect-max", RECONNECT_MAX),
            max_body_size=_get(options, "max-body-size", DEFAULT_MAX_FRAME_SIZE),
        )


class HeartbeatTransportFactory(_HttpTransportFactory):
    """Agents POST /rpc/heartbeat every interval (for networks without long-lived streams)."""

    name = "heartbeat"
    mode = "heartbeat"
    description = "agents POST /rpc/heartbeat every interval (HTTP, twisted.web)"
    schemes = ("heartbeat+http", "heartbeat+https")


class LongPollTransportFactory(_HttpTransportFactory):
    """Agents hold one POST /rpc/poll open; requests go down as soon as they wait."""

    name = "longpoll"
    mode = "longpoll"
    description = "agents hold a POST /rpc/poll open (HTTP long-poll, twisted.web)"
    schemes = ("longpoll+http", "longpoll+https", "http", "https")
