"""``StreamServer``: serves a source function to nested-stream clients, as a Twisted service.

::

    server = StreamServer(source_func, endpoint="tcp:7410")
    server.setServiceParent(application)      # or: await server.listen()

``source_func(body, tags)`` returns the request's sources (see ``txloom.streams.source``);
a mapping ``{service name: source_func}`` serves several services on one listener, chosen
by the name in the client's hello. Options are those of ``ServerOptions``.

The server keeps the table of announced, not yet attached channels (random single-use
tokens, each with its accept timeout) and the error mass: consecutive accept/serve errors,
reset by any request served to its end. When it reaches ``max_error_mass`` the server runs
``on_max_error_mass(server)``, by default ``pause_accepting`` for 30 s: a storm of bad
clients then costs nothing while it lasts, and served clients are not disturbed.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from txloom.streams.options import ServerOptions
from txloom.streams.serving import PendingSource, RequestRun, ServerConnection
from txloom.streams.source import Source
from txloom.wire.streams import Attach, Hello

__all__ = ["StreamServer"]

SourceFunction = Callable[[bytes, dict[str, str]], Any]


class _ConnectionFactory(Factory):
    noisy = False

    def __init__(self, server: StreamServer) -> None:
        self.server = server

    def buildProtocol(self, addr: Any) -> ServerConnection:
        return ServerConnection(self.server)


class StreamServer(Service):
    """Nested-streams server (see the module doc)."""

    log = Logger()

    def __init__(
        self, source_func: SourceFunction | Mapping[str, SourceFunction], **options: Any
    ) -> None:
        self.options: ServerOptions = ServerOptions.from_keywords(options)
        self.reactor, self.clock = self.options.reactor_and_clock()
        self.services: Mapping[str, SourceFunction] | None = (
            dict(source_func) if isinstance(source_func, Mapping) else None
        )
        self._default = None if isinstance(source_func, Mapping) else source_func
        self.requests: set[RequestRun] = set()
        self.pending: dict[bytes, PendingSource] = {}
        self.error_mass = 0
        self.accepting = True
        self.port: Any = None
        self._resume_call: Any = None

    # -- lifetime ----------------------------------------------------------------------
    def listen(self) -> Deferred[Any]:
        """Start listening on the endpoint option; fires with the listening port."""
        endpoint = serverFromString(self.reactor, self.options.endpoint)
        d = endpoint.listen(_ConnectionFactory(self))

        def listening(port: Any) -> Any:
            self.port = port
            self.log.info("stream server listening on {address}", address=self.address)
            return port

        return d.addCallback(listening)

    @property
    def address(self) -> tuple[str, int] | None:
        """The (host, port) the server listens on, once it does."""
        if self.port is None:
            return None
        host = self.port.getHost()
        return host.host, host.port

    def startService(self) -> None:
        super().startService()
        if self.port is None:
            self.listen().addErrback(lambda f: self.log.failure("stream server cannot listen", f))

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._resume_call is not None and self._resume_call.active():
            self._resume_call.cancel()
        port, self.port = self.port, None
        if port is not None:
            await port.stopListening()
        for run in list(self.requests):
            run.abort("server stopping")

    # -- requests and channels -----------------------------------------------------------
    def source_function(self, service: str) -> SourceFunction:
        if self.services is None:
            assert self._default is not None
            return self._default
        return self.services[service]

    def compressed(self, source: Source) -> bool:
        """Whether ``source`` is sent compressed (its own choice, else the server's option)."""
        return self.options.compression if source.compressed is None else source.compressed

    def check_request(self, hello: Hello) -> str | None:
        """Why a request cannot be served (one line for the client), or None."""
        if not self._token_ok(hello.token):
            return "bad or missing token"
        if self.services is not None and hello.service not in self.services:
            return f"unknown service {hello.service!r}"
        if len(self.requests) >= self.options.max_requests:
            return f"server busy: {self.options.max_requests} requests in progress"
        return None

    def add_pending(self, pending: PendingSource) -> None:
        self.pending[pending.token] = pending

    def forget_pending(self, token: bytes) -> None:
        self.pending.pop(token, None)

    def attach(self, attach: Attach) -> PendingSource | str:
        """The source a channel token stands for, taken (single use), or why not."""
        if not self._token_ok(attach.token):
            self.count_error()
            return "bad or missing token"
        pending = self.pending.pop(attach.channel, None)
        if pending is None:
            self.count_error()
            return "unknown channel (never announced, already attached or expired)"
        pending.deadline.cancel()
        pending.run.pending.pop(pending.token, None)
        return pending

    def _token_ok(self, token: bytes | None) -> bool:
        expected = self.options.token
        if expected is None:
            return True
        return token is not None and hmac.compare_digest(token, expected)

    # -- error mass ----------------------------------------------------------------------
    def count_error(self) -> None:
        self.error_mass += 1
        if self.error_mass >= self.options.max_error_mass:
            self.error_mass = 0
            action = self.options.on_max_error_mass or _pause_and_log
            action(self)

    def count_success(self) -> None:
        self.error_mass = 0

    def pause_accepting(self, seconds: float) -> None:
        """Stop accepting connections for ``seconds`` (they wait in the listen backlog)."""
        if self.port is None:
            return
        self.accepting = False
        self.port.stopReading()
        if self._resume_call is not None and self._resume_call.active():
            self._resume_call.reset(seconds)
        else:
            self._resume_call = self.clock.callLater(seconds, self.resume_accepting)

    def resume_accepting(self) -> None:
        self._resume_call = None
        if self.port is not None and not self.accepting:
            self.accepting = True
            self.port.startReading()
            self.log.info("stream server accepting connections again")


def _pause_and_log(server: StreamServer) -> None:
    seconds = server.options.error_mass_pause
    server.log.warn(
        "{count} consecutive errors: not accepting connections for {seconds} s",
        count=server.options.max_error_mass,
        seconds=seconds,
    )
    server.pause_accepting(seconds)
