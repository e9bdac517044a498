"""The agent's end of the gRPC transport: one ``Connect`` stream to a controller.

Each session opens a fresh channel and stream, says hello (the token in the call metadata)
and then feeds what the controller sends to an ``AgentSession`` on the reactor thread (the
same one every client transport uses); its answers go back up the same stream. A cancel
from the controller cancels the handler, and so does the end of the session: a new stream
is a new session, whose ids the controller does not relate to the old one's, so nothing
computed for the old one could be delivered. The hello's ``next_id`` follows the highest
request id seen so far, so ids stay unique for the agent's whole life.

Sessions follow each other until ``stop``, with exponential backoff and jitter between
attempts (``txloom.rpc.backoff``, as for every client transport). A session that got
anything from the controller, or that lasted ``STABLE_SESSION`` seconds, resets the
backoff, so an agent refused at once (a bad token) slows down while one whose controller
restarted comes back at once.

grpc.aio runs on the loop ``txloom.aioloop`` picks (see ``server.py``); hand-overs between
it and the reactor are batched in both directions.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from functools import partial
from typing import Any

import grpc
from grpc import aio
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from txloom.aioloop import AsyncioRunner, SameLoop, runner_for
from txloom.interfaces import IRPCClientTransport
from txloom.rpc.backoff import RECONNECT_INITIAL, RECONNECT_MAX, reconnect_policy
from txloom.rpc.grpc.address import ClientTLS
from txloom.rpc.grpc.messages import (
    METHOD,
    decode_server_message,
    encode_client_message,
    token_metadata,
)
from txloom.rpc.session import AgentSession
from txloom.wire.rpc import (
    DEFAULT_MAX_FRAME_SIZE,
    ErrorResponse,
    Hello,
    InvalidMessage,
    Request,
    Response,
)

__all__ = [
    "CONNECT_TIMEOUT",
    "STABLE_SESSION",
    "GrpcClientTransport",
]

#: A session that lasted this long (seconds) counts as established and resets the backoff.
STABLE_SESSION = 2.0
#: Seconds a session may take to connect and send its hello before it counts as failed.
CONNECT_TIMEOUT = 5.0

_ENDED = object()  # in the inbox: the session the items before it came on is over


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
        self._policy = reconnect_policy(
            reconnect_initial, reconnect_max, rand=(rng or random.Random()).random
        )
        #: sessions begun (hello sent), for logs and tests
        self.sessions = 0
        # reactor side
        self.connected = False
        self._session = 0  # the session ``_agent`` runs requests for
        self._agent: AgentSession | None = None
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
                self._agent = AgentSession(self.dispatcher, partial(self._send, session))
                self.connected = True
            if item is None or self._agent is None:  # None: the session's hello went out
                continue
            try:
                self._agent.received(item)
            except InvalidMessage as e:
                self.log.warn("agent {name}: {why}; reconnecting", name=self.name, why=e)
                self._end_session()
                self.runner.call_in_loop(self._drop_session, session)

    def _send(self, session: int, response: Response | ErrorResponse) -> None:
        if session != self._session:
            return
        self._outbox.append((session, encode_client_message(response)))
        if not self._outbox_scheduled:
            self._outbox_scheduled = True
            if self._same_loop:  # on the loop's own thread already: no hop needed
                self._wake()
            else:
                self.runner.call_in_loop(self._wake)

    def _end_session(self) -> None:
        """The session is over: what its requests would still compute has nowhere to go."""
        self.connected = False
        agent, self._agent = self._agent, None
        if agent is not None:
            agent.close()

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

    def _drop_session(self, session: int) -> None:
        if self._session_task is not None and self.sessions == session:
            self._session_task.cancel()

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
            # Waited on, not awaited: cancelling the session (stop, a misbehaving
            # controller) must not cancel this loop.
            task = self._session_task = asyncio.ensure_future(self._one_session())
            try:
                await asyncio.wait({task})
            except asyncio.CancelledError:
                task.cancel()
                raise
            finally:
                self._session_task = None
            if not task.cancelled():
                if task.exception() is None:
                    established = task.result()
                else:
                    why = task.exception()
                    self._say(
                        "warn", "agent {name}: session failed: {why}", name=self.name, why=why
                    )
            if stopping.is_set():
                break
            if established or loop.time() - began >= STABLE_SESSION:
                failures = 0
            delay = self._policy(failures)
            failures += 1
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
