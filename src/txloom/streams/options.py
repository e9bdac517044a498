"""Every limit and timeout of nested streams, named, with the spec's defaults.

``None`` for a timeout means "no deadline". Options are keyword arguments of
``StreamServer`` and ``StreamClient``; unknown names are refused, so a typo is never a
silently ignored setting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from txloom.wire.streams import DEFAULT_FRAME_SIZE_LIMIT, DEFAULT_MAX_SOURCES

__all__ = [
    "DEFAULT_ACCEPT_TIMEOUT",
    "DEFAULT_DIAL_TIMEOUT",
    "DEFAULT_ERROR_MASS_PAUSE",
    "DEFAULT_FRAME_BUFFER",
    "DEFAULT_MAX_ERROR_MASS",
    "DEFAULT_MAX_REQUESTS",
    "DEFAULT_SOURCE_BUFFER",
    "ClientOptions",
    "ServerOptions",
]

#: Client: how long connecting to an endpoint may take (master and each channel).
DEFAULT_DIAL_TIMEOUT = 10.0
#: Client: announced sources not yet taken by the reader; past it the master is not read.
DEFAULT_SOURCE_BUFFER = 128
#: Client: frames read ahead per source; past it that source's channel is not read.
DEFAULT_FRAME_BUFFER = 1024
#: Server: a source's channel must be attached within this many seconds of its announce.
DEFAULT_ACCEPT_TIMEOUT = 30.0
#: Server: consecutive accept/serve errors before ``on_max_error_mass`` runs.
DEFAULT_MAX_ERROR_MASS = 10
#: Server: how long the default ``on_max_error_mass`` stops accepting connections.
DEFAULT_ERROR_MASS_PAUSE = 30.0
#: Server: requests (master connections) served at once; more are refused with a reason.
DEFAULT_MAX_REQUESTS = 1024


class _Options:
    @classmethod
    def from_keywords(cls, options: dict[str, Any]) -> Any:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}")
        made = cls(**options)
        made.check()
        return made

    def reactor_and_clock(self) -> tuple[Any, Any]:
        """The reactor for connections and the clock for timeouts (defaults: the global one)."""
        reactor = getattr(self, "reactor", None)
        if reactor is None:
            from twisted.internet import reactor  # noqa: PLC0415 - the installed one
        return reactor, getattr(self, "clock", None) or reactor

    def check(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name.endswith("timeout") and value is not None and value <= 0:
                raise ValueError(f"{f.name} must be positive or None, not {value!r}")
            if f.name.startswith(("max_", "source_buffer", "frame_buffer")) and (
                not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{f.name} must be a positive integer, not {value!r}")


@dataclass(frozen=True)
class ClientOptions(_Options):
    """Options of ``StreamClient``."""

    dial_timeout: float | None = DEFAULT_DIAL_TIMEOUT
    source_buffer: int = DEFAULT_SOURCE_BUFFER
    frame_buffer: int = DEFAULT_FRAME_BUFFER
    #: Longest wait for the next announcement (or the end) on the master.
    master_read_timeout: float | None = None
    #: Longest the request body may sit unsent because the server does not read it.
    master_write_timeout: float | None = None
    #: Longest wait for the next frame of a source while its reader waits for one.
    frame_read_timeout: float | None = None
    max_frame_size: int = DEFAULT_FRAME_SIZE_LIMIT
    max_sources: int = DEFAULT_MAX_SOURCES
    #: Shared token sent in the hello and in each attach (None: the server wants none).
    token: bytes | None = None
    #: ``on_error(error, source)`` for every failed request or source; default: log it.
    on_error: Callable[[BaseException, Any], None] | None = None
    #: Reactor for connections (default: the global one).
    reactor: Any = None
    #: Clock for every timeout (default: the reactor; tests pass a ``task.Clock``).
    clock: Any = None


@dataclass(frozen=True)
class ServerOptions(_Options):
    """Options of ``StreamServer``."""

    #: Where to listen (any Twisted server endpoint string; ``ssl:`` for TLS).
    #: The backlog matters: a client opens up to ``source_buffer`` channels at once.
    endpoint: str = "tcp:0:interface=127.0.0.1:backlog=1024"
    accept_timeout: float | None = DEFAULT_ACCEPT_TIMEOUT
    #: Overall deadline of a request: its master and every channel are cut when it passes.
    serving_timeout: float | None = None
    #: Longest wait for the source function's next source; then the master is closed.
    sourcing_timeout: float | None = None
    #: Longest wait for a connection's first frames (hello and body, or attach).
    master_read_timeout: float | None = None
    #: Longest an announcement may wait because the client does not read the master.
    master_write_timeout: float | None = None
    #: Longest a source's frame may wait because the client does not read its channel.
    frame_write_timeout: float | None = None
    max_error_mass: int = DEFAULT_MAX_ERROR_MASS
    #: ``on_max_error_mass(server)``; default: stop accepting for 30 s and log.
    on_max_error_mass: Callable[[Any], None] | None = None
    error_mass_pause: float = DEFAULT_ERROR_MASS_PAUSE
    compression: bool = False
    max_frame_size: int = DEFAULT_FRAME_SIZE_LIMIT
    max_sources: int = DEFAULT_MAX_SOURCES
    max_requests: int = DEFAULT_MAX_REQUESTS
    #: Shared token every hello and attach must carry (None: none required).
    token: bytes | None = None
    #: Reactor for connections (default: the global one).
    reactor: Any = None
    #: Clock for every timeout (default: the reactor; tests pass a ``task.Clock``).
    clock: Any = None
