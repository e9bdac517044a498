"""The worker-side library: what an app author imports to write a worker.

::

    from txloom.worker import Worker

    worker = Worker()                      # reads --app/--endpoint/--uuid/... from argv

    @worker.on("echo")
    async def echo(request, response):
        async for chunk in request:
            response.write(chunk)

    worker.run()                           # runs the reactor; exits when the engine says so

A handler gets the ``Request`` (the caller's chunks: ``await request.read()``, ``async for``)
and the ``Response`` (``write``, ``close``, ``error``). It may be a plain function, return a
Deferred, or be ``async def``. When it returns, the response is closed if it is still
open; if it raises, the caller gets error ``[42, 100]``. An event without a handler gets
``[42, 200]``.

The worker heartbeats to the engine and exits if the engine stays silent for the disown
timeout; a terminate from the engine is echoed and the process exits 0.
"""

from __future__ import annotations

import argparse
import inspect
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger, formatEvent, globalLogBeginner
from twisted.python.failure import Failure

from txloom.wire.cocaine import (
    CHOKE,
    CHUNK,
    CONTROL_CHANNEL,
    ERROR,
    HANDSHAKE,
    HEARTBEAT,
    TERMINATE,
    HeaderEntry,
    Message,
)
from txloom.worker import errors
from txloom.worker.connection import MessageConnection, default_reactor
from txloom.worker.streams import ChunkStream

#: Seconds between heartbeats, unless the engine's environment says otherwise.
HEARTBEAT_INTERVAL = 5.0
#: Seconds of silence from the engine after which the worker exits.
DISOWN_TIMEOUT = 30.0
#: Seconds to connect to the engine's socket.
CONNECT_TIMEOUT = 5.0

#: Exit codes.
EXIT_TERMINATED = 0
EXIT_ENGINE_GONE = 1
EXIT_DISOWNED = 2
EXIT_BAD_ARGUMENTS = 64

Handler = Callable[["Request", "Response"], Any]


class Request(ChunkStream):
    """What the caller sends on one session: chunks, then close (or an error)."""

    def __init__(self, event: str, headers: tuple[HeaderEntry, ...]) -> None:
        super().__init__()
        self.event = event
        self.headers = headers


class Response:
    """The worker's side of a session: chunks, then ``close()`` or ``error()``.

    The engine may give up on the session (the caller went away or did not read, a
    timeout): the response is then ``cancelled`` with that error, and ``write`` raises it,
    so that a handler streaming a long reply stops.
    """

    def __init__(self, connection: EngineConnection, channel: int) -> None:
        self._connection = connection
        self.channel = channel
        self.closed = False
        #: The engine's error if it has given up on the session.
        self.cancelled: errors.ServiceError | None = None
        self._on_cancel: list[Callable[[errors.ServiceError], object]] = []

    def on_cancel(self, callback: Callable[[errors.ServiceError], object]) -> None:
        """Call ``callback(error)`` if (or once) the engine gives up on the session."""
        if self.cancelled is not None:
            callback(self.cancelled)
        else:
            self._on_cancel.append(callback)

    def cancel(self, error: errors.ServiceError) -> None:
        """The engine gave up on the session: close it, and stop whoever writes to it."""
        if self.closed:
            return
        self.closed = True
        self.cancelled = error
        self._connection.send(self.channel, CHOKE, [])  # lets the engine forget the channel
        self._connection.response_done(self.channel)
        callbacks, self._on_cancel = self._on_cancel, []
        for callback in callbacks:
            callback(error)

    def write(self, data: bytes | str) -> None:
        if self.closed:
            if self.cancelled is not None:
                raise self.cancelled
            raise RuntimeError("write on a closed response")
        if isinstance(data, str):
            data = data.encode("utf-8")
        self._connection.send(self.channel, CHUNK, [data])

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._connection.send(self.channel, CHOKE, [])
            self._connection.response_done(self.channel)

    def error(self, code: int, reason: str, category: int = errors.APPLICATION) -> None:
        if not self.closed:
            self.closed = True
            self._connection.send(self.channel, ERROR, [[category, code], reason])
            self._connection.response_done(self.channel)


def _stderr_observer(event: dict[str, Any]) -> None:
    """One plain line per event on stderr: the host adds the time, app and uuid."""
    level = event.get("log_level")
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text = f"{text}\n{failure.getTraceback().rstrip()}"
    sys.stderr.write(f"{level.name if level else 'info'}: {text}\n")
    sys.stderr.flush()


class _QuietFactory(Factory):
    noisy = False


def _parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description="txloom worker", add_help=False)
    parser.add_argument("--app", required=True)
    parser.add_argument("--endpoint", required=True, help="the engine's Unix socket")
    parser.add_argument("--locator", default="127.0.0.1:10053")
    parser.add_argument("--uuid", required=True)
    parser.add_argument("--protocol", default="1")
    return parser.parse_known_args(list(argv))


def parse_locator(text: str) -> list[tuple[str, int]]:
    """``HOST:PORT[,HOST:PORT...]`` with IPv6 hosts in brackets -> [(host, port), ...]."""
    out = []
    for item in text.split(","):
        host, _, port = item.strip().rpartition(":")
        out.append((host.strip("[]"), int(port)))
    return out


class Worker:
    """A worker process: parses the spawn arguments, serves events until terminated."""

    log = Logger()

    def __init__(
        self,
        argv: Sequence[str] | None = None,
        *,
        heartbeat_interval: float | None = None,
        disown_timeout: float | None = None,
        reactor: Any = None,
    ) -> None:
        try:
            options, self.extra_args = _parse_args(sys.argv[1:] if argv is None else argv)
        except SystemExit:
            sys.stderr.write(
                "usage: WORKER --app NAME --endpoint SOCKET --locator HOST:PORT --uuid UUID "
                "--protocol 1\n"
            )
            raise SystemExit(EXIT_BAD_ARGUMENTS) from None
        self.app: str = options.app
        self.endpoint: str = options.endpoint
        self.uuid: str = options.uuid
        self.locator = parse_locator(options.locator)
        self.protocol_version = options.protocol
        self.heartbeat_interval = heartbeat_interval or float(
            os.environ.get("TXLOOM_HEARTBEAT_INTERVAL", HEARTBEAT_INTERVAL)
        )
        self.disown_timeout = disown_timeout or float(
            os.environ.get("TXLOOM_DISOWN_TIMEOUT", DISOWN_TIMEOUT)
        )
        self.handlers: dict[str, Handler] = {}
        self._reactor = reactor
        self.connection: EngineConnection | None = None
        self.done: Deferred[int] = Deferred()

    @property
    def reactor(self) -> Any:
        if self._reactor is None:
            self._reactor = default_reactor()
        return self._reactor

    def on(self, event: str, handler: Handler | None = None) -> Any:
        """Register ``handler`` for ``event``; without a handler, works as a decorator."""
        if handler is None:

            def register(fn: Handler) -> Handler:
                self.handlers[event] = fn
                return fn

            return register
        self.handlers[event] = handler
        return handler

    def start(self) -> Deferred[int]:
        """Connect and serve; the Deferred fires with the exit code when the worker is done."""
        endpoint = UNIXClientEndpoint(self.reactor, self.endpoint, timeout=CONNECT_TIMEOUT)
        connecting = endpoint.connect(_QuietFactory.forProtocol(lambda: EngineConnection(self)))

        def failed(failure: Failure) -> None:
            self.log.error(
                "cannot connect to the engine at {endpoint}: {error}",
                endpoint=self.endpoint,
                error=failure.getErrorMessage(),
            )
            self.finish(EXIT_ENGINE_GONE)

        connecting.addErrback(failed)
        return self.done

    def finish(self, code: int) -> None:
        if not self.done.called:
            self.done.callback(code)

    def run(self) -> NoReturn:
        """Run the reactor until the engine lets the worker go, then exit with its code."""
        globalLogBeginner.beginLoggingTo([_stderr_observer], redirectStandardIO=False)
        reactor = self.reactor
        result: list[int] = []

        def stop(code: int) -> None:
            result.append(code)
            if reactor.running:
                reactor.stop()

        def begin() -> None:
            # Ctrl-C in a terminal reaches the whole process group; the engine, not the
            # terminal, decides when a worker stops (it sends terminate).
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            self.start().addCallback(stop)

        reactor.callWhenRunning(begin)
        reactor.run()
        sys.stdout.flush()
        sys.exit(result[0] if result else EXIT_ENGINE_GONE)


class EngineConnection(MessageConnection):
    """The worker's connection to the engine."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.sessions: dict[int, tuple[Request, Response]] = {}
        self.last_channel = CONTROL_CHANNEL
        self.exit_code = EXIT_ENGINE_GONE
        self._heartbeat: Any = None
        self._disown: Any = None
        self.last_heard = 0.0

    def connectionMade(self) -> None:
        super().connectionMade()
        reactor = self.worker.reactor
        self.send(CONTROL_CHANNEL, HANDSHAKE, [self.worker.uuid])
        self.send(CONTROL_CHANNEL, HEARTBEAT, [])
        self.last_heard = reactor.seconds()
        self._heartbeat = reactor.callLater(self.worker.heartbeat_interval, self._beat)
        self._disown = reactor.callLater(self.worker.disown_timeout, self._check_disown)

    def _beat(self) -> None:
        self.send(CONTROL_CHANNEL, HEARTBEAT, [])
        self._heartbeat = self.worker.reactor.callLater(self.worker.heartbeat_interval, self._beat)

    def _check_disown(self) -> None:
        now = self.worker.reactor.seconds()
        due = self.last_heard + self.worker.disown_timeout
        if now < due:
            self._disown = self.worker.reactor.callLater(due - now, self._check_disown)
            return
        self._disown = None
        self.log.error(
            "the engine has been silent for {silence:.1f}s; exiting",
            silence=now - self.last_heard,
        )
        self.exit_code = EXIT_DISOWNED
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        self.last_heard = self.worker.reactor.seconds()
        MessageConnection.dataReceived(self, data)

    def messageReceived(self, message: Message) -> None:
        channel = message.channel
        pair = self.sessions.get(channel)
        if pair is not None:
            request = pair[0]
            mtype = message.type
            if mtype == CHUNK and message.args:
                request.push(message.args[0])
            elif mtype == CHOKE:
                request.close()
                self._maybe_forget(channel)
            elif mtype == ERROR:
                error = errors.ServiceError.from_wire(message.args)
                # after the caller's close only the engine can send this: it gives up;
                # otherwise the caller ended its request with an error (or the engine
                # gave up for it, which its error code says)
                cancels = request.ended or (error.category, error.code) in errors.CANCELLING
                request.fail(error)
                if cancels:
                    pair[1].cancel(error)
                self._maybe_forget(channel)
        elif channel == CONTROL_CHANNEL:
            if message.type == TERMINATE:
                self.log.info("terminate from the engine: {args!r:.100}", args=message.args)
                self.send(CONTROL_CHANNEL, TERMINATE, message.args)
                self.exit_code = EXIT_TERMINATED
                self.transport.loseConnection()
        elif channel > self.last_channel:
            self.last_channel = channel
            if message.type == 0 and message.args and isinstance(message.args[0], bytes):
                self._invoke(channel, message.args[0], message.headers)

    def _invoke(self, channel: int, event: bytes, headers: tuple[HeaderEntry, ...]) -> None:
        name = event.decode("utf-8", "replace")
        handler = self.worker.handlers.get(name)
        if handler is None:
            self.send(
                channel,
                ERROR,
                [
                    [errors.APPLICATION, errors.NO_HANDLER],
                    f"there is no handler for event {name!r}",
                ],
            )
            return
        request = Request(name, headers)
        response = Response(self, channel)
        self.sessions[channel] = (request, response)

        def call() -> Any:
            result = handler(request, response)
            if inspect.iscoroutine(result):
                return Deferred.fromCoroutine(result)
            return result

        def done(_: object) -> None:
            if not response.closed:
                response.close()

        def failed(failure: Failure) -> None:
            if failure.value is request.error or failure.value is response.cancelled:
                # the caller (or the engine for it) ended the request with an error
                self.log.info(
                    "{event!r} stopped by the caller: {error}",
                    event=name,
                    error=failure.getErrorMessage(),
                )
            else:
                self.log.failure("handler for {event!r} failed", failure, event=name)
            if not response.closed and self.transport is not None:
                error = failure.value
                response.error(errors.UNCAUGHT_EXCEPTION, f"{type(error).__name__}: {error}")

        maybeDeferred(call).addCallbacks(done, failed)

    def response_done(self, channel: int) -> None:
        self._maybe_forget(channel)

    def _maybe_forget(self, channel: int) -> None:
        pair = self.sessions.get(channel)
        if pair is not None and pair[0].ended and pair[1].closed:
            del self.sessions[channel]

    def send(self, channel: int, mtype: int, args: Any, headers: Any = None) -> None:
        if self.transport is not None and not self.transport.disconnecting:
            MessageConnection.send(self, channel, mtype, args, headers)

    def connectionLost(self, reason: object = None) -> None:
        for name in ("_heartbeat", "_disown"):
            timer = getattr(self, name)
            if timer is not None and timer.active():
                timer.cancel()
        gone = errors.ServiceError(errors.ENGINE, errors.CONNECTION_LOST, "engine connection lost")
        for request, _response in self.sessions.values():
            request.fail(gone)
        self.sessions.clear()
        if self.exit_code == EXIT_ENGINE_GONE:
            self.log.error("the engine closed the connection; exiting")
        self.worker.finish(self.exit_code)
