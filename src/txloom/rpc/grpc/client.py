"""The agent's end of the gRPC transport: one ``Connect`` stream to a controller.

Each session opens a fresh channel and stream, says hello (the token in the call metadata)
and then hands every request to the dispatcher on the reactor thread; responses go back up
the same stream. A cancel from the controller cancels the dispatcher's Deferred, and so
does the end of the session: a new stream is a new session, whose ids the controller does
not relate to the old one's, so nothing computed for the old one could be delivered.

Sessions follow each other until ``stop``, with exponential backoff and jitter between
attempts (``backoff_delay``). A session that got anything from the controller, or that
lasted ``STABLE_SESSION`` seconds, resets the backoff, so an agent refused at once (a bad
token) slows down while one whose controller restarted comes back at once.

grpc.aio runs on the loop ``txloom.aioloop`` picks (see ``server.py``); hand-overs between
it and the reactor are batched in both directions.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from typing import Any

import grpc
from grpc import aio
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from txloom.aioloop import AsyncioRunner, SameLoop, runner_for
from txloom.interfaces import IRPCClientTransport
from txloom.rpc.grpc.address import ClientTLS
from txloom.rpc.grpc.messages import (
    METHOD,
    decode_server_message,
    encode_client_message,
    token_metadata,
)
from txloom.wire.rpc import (
    DEFAULT_MAX_FRAME_SIZE,
    Cancel,
    ErrorResponse,
    Hello,
    InvalidMessage,
    Request,
    Response,
)

__all__ = [
    "CONNECT_TIMEOUT",
    "RECONNECT_INITIAL",
    "RECONNECT_MAX",
    "STABLE_SESSION",
    "GrpcClientTransport",
    "backoff_delay",
]

#: First wait (seconds) after a failed session; doubled per failure up to ``RECONNECT_MAX``.
RECONNECT_INITIAL = 0.5
#: Longest wait between two sessions (seconds).
RECONNECT_MAX = 10.0
#: A session that lasted this long (seconds) counts as established and resets the backoff.
STABLE_SESSION = 2.0
#: Seconds a session may take to connect and send its hello before it counts as failed.
CONNECT_TIMEOUT = 5.0

_ENDED = object()  # in the inbox: the session the items before it came on is over


def backoff_delay(
    failures: int,
    low: float = RECONNECT_INITIAL,
    high: float = RECONNECT_MAX,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after ``failures`` failed sessions in a row (1, 2, ...).

    Exponential from ``low`` to ``high``, with "equal jitter": at least half the step, so
    agents cut off together do not come back together, and never a zero wait.
    """
    if failures < 1:
        return 0.0
    step = min(high, low * 2 ** min(failures - 1, 32))
    return step / 2 + (rng or random).uniform(0, step / 2)


@implementer(IRPCClientTransport)
class GrpcClientTransport:
    """Connect agent ``name`` to the controller at ``target`` (``HOST:PORT``).

    ``tls`` (``ClientTLS``) makes the channel secure; ``token`` goes in the call metadata.
    """

    log = Logger()

    def __init__(
        self,
        target: str,
        name: str,
        dispatcher: Any,
        token: str | None = None,
        *,
        tls: ClientTLS | None = None,
        reactor: Any = None,
        runner: AsyncioRunner | str = "auto",
        max_message_size: int = DEFAULT_MAX_FRAME_SIZE,
        reconnect_initial: float = RECONNECT_INITIAL,
        reconnect_max: float = RECONNECT_MAX,
        connect_timeout: float = CONNECT_TIMEOUT,
        rng: random.Random | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor  # noqa: PLC0415

            reactor = default_reactor
        if not 0 < reconnect_initial <= reconnect_max or connect_timeout <= 0:
            raise ValueError("need 0 < reconnect_initial <= reconnect_max and connect_timeout > 0")
        self.target = target
        self.name = name
        self.dispatcher = dispatcher
        self.token = token
        self.tls = tls
        self.reactor = reactor
        self._own_runner = not isinstance(runner, AsyncioRunner)
        self.runner = runner if isinstance(runner, AsyncioRunner) else runner_for(reactor, runner)
        self._same_loop = isinstance(self.runner, SameLoop)
        self.max_message_size = max_message_size
        self.reconnect_initial = reconnect_initial
        self.reconnect_max = reconnect_max
        self.connect_timeout = connect_timeout
        self._rng = rng or random.Random()
        #: sessions begun (hello sent), for logs and tests
        self.sessions = 0
        # reactor side
        self.connected = False
        self._session = 0  # the session whose requests are in _inflight
        self._inflight: dict[int, Deferred[Any]] = {}
        self._inbox_scheduled = False
        self._run_d: Deferred[None] | None = None
        self._stopped: Deferred[None] | None = None
        # loop side
        self._inbox: deque[tuple[int, Any]] = deque()
        self._outbox: deque[tuple[int, bytes]] = deque()
        self._outbox_scheduled = False
        self._ready: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None
        self._session_task: asyncio.Future[bool] | None = None
        self._next_id = 0

    # IRunnable (reactor thread) ------------------------------------------------------------

    def start(self) -> Deferred[None]:
        if self._run_d is None:
            self.runner.start()
            self._run_d = self.runner.run(self._run())
            self._run_d.addErrback(
                lambda f: self.log.failure("the gRPC agent transport failed", failure=f)
            )
        return succeed(None)

    def stop(self) -> Deferred[None]:
        if self._stopped is None:
            if self._run_d is None:
                self._stopped = succeed(None)
            else:
                self.runner.call_in_loop(self._stop_in_loop)
                self._stopped = Deferred()
                run_d = self._run_d

                def finished(result: Any) -> Any:
                    self._end_session()
                    if self._own_runner:
                        self.runner.stop()
                    assert self._stopped is not None
                    self._stopped.callback(None)
                    return result

                run_d.addBoth(finished)
        d: Deferred[None] = Deferred()
        self._stopped.addBoth(lambda r: (d.callback(None), r)[1])
        return d

    # Requests and responses (reactor thread) -----------------------------------------------

    def _deliver(self) -> None:
        self._inbox_scheduled = False
        inbox = self._inbox
        while inbox:
            session, item = inbox.popleft()
            if item is _ENDED:
                if session == self._session:
                    self._end_session()
                continue
            if session != self._session:
                self._end_session()
                self._session = session
                self.connected = True
            if item is None:  # the session's hello went out
                continue
            if isinstance(item, Request):
                self._dispatch(session, item)
            elif isinstance(item, Cancel):
                d = self._inflight.pop(item.id, None)
                if d is not None:
                    d.cancel()

    def _dispatch(self, session: int, request: Request) -> None:
        rid = request.id
        try:
            d = self.dispatcher.dispatch(request)
        except Exception as e:
            self.log.failure("the dispatcher raised on request {id}", id=rid)
            d = succeed(ErrorResponse(rid, "internal", str(e)))
        self._inflight[rid] = d
        d.addErrback(lambda f: ErrorResponse(rid, "internal", f.getErrorMessage()))
        d.addCallback(self._respond, session, rid)

    def _respond(self, response: Response | ErrorResponse, session: int, rid: int) -> None:
        # Gone from _inflight: cancelled by the controller, or its session is over.
        if session != self._session or self._inflight.pop(rid, None) is None:
            return
        data = encode_client_message(response)
        self._outbox.append((session, data))
        if not self._outbox_scheduled:
            self._outbox_scheduled = True
            if self._same_loop:  # on the loop's own thread already: no hop needed
                self._wake()
            else:
                self.runner.call_in_loop(self._wake)

    def _end_session(self) -> None:
        """The session is over: what its requests would still compute has nowhere to go."""
        self.connected = False
        inflight, self._inflight = self._inflight, {}
        for d in inflight.values():
            d.cancel()

    # Loop side -----------------------------------------------------------------------------

    def _inbound(self, session: int, item: Any) -> None:
        self._inbox.append((session, item))
        if not self._inbox_scheduled:
            self._inbox_scheduled = True
            self.runner.to_reactor(self._deliver)

    def _wake(self) -> None:
        self._outbox_scheduled = False
        if self._ready is not None:
            self._ready.set()

    def _stop_in_loop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._session_task is not None:
            self._session_task.cancel()

    def _say(self, level: str, text: str, **fields: Any) -> None:
        """Log from the loop (Twisted's log observers run on the reactor thread)."""
        self.runner.to_reactor(lambda: getattr(self.log, level)(text, **fields))

    def _channel(self) -> aio.Channel:
        options = [
            ("grpc.max_receive_message_length", self.max_message_size),
            ("grpc.max_send_message_length", self.max_message_size),
            # Reconnecting is this transport's business (with its own backoff).
            ("grpc.enable_retries", 0),
        ]
        if self.tls is None:
            return aio.insecure_channel(self.target, options=options)
        if self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return aio.secure_channel(self.target, self.tls.credentials(), options=options)

    async def _run(self) -> None:
        self._stopping = stopping = asyncio.Event()
        self._ready = asyncio.Event()
        failures = 0
        loop = asyncio.get_running_loop()
        while not stopping.is_set():
            began = loop.time()
            established = False
            self._session_task = asyncio.ensure_future(self._one_session())
            try:
                established = await self._session_task
            except asyncio.CancelledError:
                if not stopping.is_set():
                    raise
            except Exception as e:
                self._say("warn", "agent {name}: session failed: {why}", name=self.name, why=e)
            finally:
                self._session_task = None
            if stopping.is_set():
                break
            if established or loop.time() - began >= STABLE_SESSION:
                failures = 0
            failures += 1
            delay = backoff_delay(failures, self.reconnect_initial, self.reconnect_max, self._rng)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)

    async def _one_session(self) -> bool:
        """Run one stream to its end; True when the controller sent anything on it."""
        established = False
        channel = self._channel()
        call = channel.stream_stream(METHOD)(metadata=token_metadata(self.token))
        self.sessions += 1
        session = self.sessions
        try:
            hello = encode_client_message(Hello(self.name, self._next_id))
            await asyncio.wait_for(call.write(hello), self.connect_timeout)
            self._inbound(session, None)
            writer = asyncio.ensure_future(self._write_loop(call, session))
            try:
                while True:
                    data = await call.read()
                    if data is aio.EOF:
                        self._say(
                            "info", "agent {name}: the controller ended the stream", name=self.name
                        )
                        break
                    established = True
                    try:
                        msg = decode_server_message(data)
                    except InvalidMessage as e:
                        self._say(
                            "warn",
                            "agent {name}: malformed message from the controller: {why}",
                            name=self.name,
                            why=e,
                        )
                        break
                    if isinstance(msg, Request):
                        self._next_id = max(self._next_id, msg.id + 1)
                    self._inbound(session, msg)
            finally:
                writer.cancel()
                with contextlib.suppress(BaseException):
                    await writer
                self._inbound(session, _ENDED)
        except grpc.RpcError as e:
            self._say(
                "warn",
                "agent {name}: the controller ended the stream: {code} {details}",
                name=self.name,
                code=_code(e),
                details=_details(e),
            )
        finally:
            call.cancel()
            await channel.close()
        return established

    async def _write_loop(self, call: Any, session: int) -> None:
        assert self._ready is not None
        ready = self._ready
        outbox = self._outbox
        while True:
            while outbox:
                owner, data = outbox.popleft()
                if owner == session:
                    await call.write(data)
            await ready.wait()
            ready.clear()


def _code(e: Any) -> Any:
    code = getattr(e, "code", None)
    return code() if callable(code) else code


def _details(e: Any) -> Any:
    details = getattr(e, "details", None)
    return details() if callable(details) else details
