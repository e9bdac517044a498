"""The controller's end of the gRPC transport: ``aperture.rpc.v1.Coordinator/Connect``.

Every agent holds one bidirectional stream. Its first message is a hello (the token rides
in the call metadata); after it the stream carries requests and cancels down and
responses up. The stream's handler runs on asyncio (``txloom.aioloop``: the reactor's own
loop under the asyncio reactor, a private thread under any other) and talks to the
registry only on the reactor thread, through two batched hand-overs per peer: requests
and cancels go reactor -> loop through a deque and one wake-up per burst, responses and
the departure go loop -> reactor the same way, in the order they arrived.

Requests are serialized on the reactor thread as they are queued, so the bound on what
waits for a slow agent is counted in bytes there (``SEND_QUEUE_LIMIT``); past it the
agent is dropped with ``RESOURCE_EXHAUSTED`` and the registry sees it leave. A malformed
message, a second hello or a missing hello ends that stream with ``INVALID_ARGUMENT`` (or
``DEADLINE_EXCEEDED``); the other streams go on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any

import grpc
from grpc import aio
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from txloom.aioloop import AsyncioRunner, SameLoop, runner_for
from txloom.interfaces import IRPCPeer, IRPCServerTransport
from txloom.rpc.grpc.address import ServerTLS, parse_listen
from txloom.rpc.grpc.messages import (
    SERVICE,
    decode_client_message,
    encode_server_message,
    token_from_metadata,
)
from txloom.wire.rpc import DEFAULT_MAX_FRAME_SIZE, Cancel, Hello, InvalidMessage, Request

__all__ = [
    "HELLO_TIMEOUT",
    "KEEPALIVE_TIME",
    "KEEPALIVE_TIMEOUT",
    "SEND_QUEUE_LIMIT",
    "STATUS_CODES",
    "GrpcPeer",
    "GrpcServerTransport",
]

#: Seconds a new stream has to send its hello before it is ended.
HELLO_TIMEOUT = 10.0
#: Bytes of requests and cancels that may wait for one agent's stream before the agent is
#: taken for stuck and dropped (the sum of serialized messages not yet written).
SEND_QUEUE_LIMIT = 8 * 1024 * 1024
#: Seconds between HTTP/2 pings on an idle stream, so a vanished agent host is noticed.
KEEPALIVE_TIME = 30.0
#: Seconds a ping may stay unanswered before the connection is taken for dead.
KEEPALIVE_TIMEOUT = 10.0
#: Seconds ``stop`` lets streams end on their own before cutting them.
STOP_GRACE = 1.0

#: txloom error code -> the gRPC status a stream is ended with.
STATUS_CODES: dict[str, grpc.StatusCode] = {
    "cancelled": grpc.StatusCode.CANCELLED,
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    "deadline_exceeded": grpc.StatusCode.DEADLINE_EXCEEDED,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "internal": grpc.StatusCode.INTERNAL,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
}

_LEFT = object()  # marks the departure in a peer's inbox, after the responses before it


@implementer(IRPCPeer)
class GrpcPeer:
    """One agent's stream, seen from the registry (reactor side) and the loop (loop side).

    Each attribute is written by one thread only; the deques are the hand-over points.
    """

    transport = "grpc"
    log = Logger()

    def __init__(
        self,
        owner: GrpcServerTransport,
        name: str,
        address: str,
        queue_limit: int,
    ) -> None:
        self.name = name
        self.address = address
        self._owner = owner
        self._runner = owner.runner
        self._same_loop = isinstance(owner.runner, SameLoop)
        self._queue_limit = queue_limit
        # reactor side
        #: set once the registry accepted the hello; only then is a departure reported
        self.joined = False
        self._gone = False
        self._queued_bytes = 0  # total ever queued
        self._inbox_scheduled = False
        # loop side
        self._written_bytes = 0  # total ever written
        self._outbox: deque[bytes] = deque()
        self._outbox_scheduled = False
        self._inbox: deque[Any] = deque()
        self._ready = asyncio.Event()
        self._ending: tuple[grpc.StatusCode | None, str] | None = None

    def __repr__(self) -> str:
        return f"<GrpcPeer {self.name!r} from {self.address}>"

    # =========================================================================================
    # IRPCPeer (reactor thread)
    # =========================================================================================

    def send_request(self, request: Request) -> None:
        self._queue(encode_server_message(request))

    def send_cancel(self, request_id: int) -> None:
        self._queue(encode_server_message(Cancel(request_id)))

    def close(self, code: str, reason: str) -> None:
        if self._gone:
            return
        self._gone = True
        status = STATUS_CODES.get(code, grpc.StatusCode.INTERNAL)
        self._runner.call_in_loop(self.end_stream, status, reason)

    def _queue(self, data: bytes) -> None:
        if self._gone:
            return
        self._queued_bytes += len(data)
        if self._queued_bytes - self._written_bytes > self._queue_limit:
            reason = f"more than {self._queue_limit} bytes waiting for the agent"
            self._report_left(reason)
            self._runner.call_in_loop(self.end_stream, grpc.StatusCode.RESOURCE_EXHAUSTED, reason)
            return
        self._outbox.append(data)
        if not self._outbox_scheduled:
            self._outbox_scheduled = True
            if self._same_loop:  # on the loop's own thread already: no hop needed
                self._wake()
            else:
                self._runner.call_in_loop(self._wake)

    def _deliver(self) -> None:
        """Responses and the departure, into the registry, in arrival order."""
        self._inbox_scheduled = False
        inbox = self._inbox
        registry = self._owner.registry
        while inbox:
            item = inbox.popleft()
            if item[0] is _LEFT:
                self._report_left(item[1])
            elif not self._gone:
                try:
                    registry.received(self, item[0])
                except Exception:
                    self.log.failure("the registry failed on a response from {peer}", peer=self)

    def _report_left(self, reason: str) -> None:
        if self._gone:
            return
        self._gone = True
        if self.joined:
            try:
                self._owner.registry.left(self, reason)
            except Exception:
                self.log.failure("the registry failed on the departure of {peer}", peer=self)

    # =========================================================================================
    # Loop side
    # =========================================================================================

    def _wake(self) -> None:
        self._outbox_scheduled = False
        self._ready.set()

    def end_stream(self, status: grpc.StatusCode | None, reason: str) -> None:
        """End the stream (the handler aborts with ``status``; None ends it cleanly)."""
        if self._ending is None:
            self._ending = (status, reason)
        self._ready.set()

    def _inbound(self, item: Any, detail: Any = None) -> None:
        self._inbox.append((item, detail))
        if not self._inbox_scheduled:
            self._inbox_scheduled = True
            self._runner.to_reactor(self._deliver)

    def left(self, reason: str) -> None:
        """The stream is over: the registry hears it after the responses before it."""
        self._inbound(_LEFT, reason)

    async def serve(self, context: aio.ServicerContext) -> tuple[grpc.StatusCode, str] | None:
        """Carry the stream until it ends; the status to end it with, if not a clean end."""
        reader = asyncio.ensure_future(self._read_loop(context))
        reason = "the agent's stream ended"
        try:
            await self._write_loop(context)
        except asyncio.CancelledError:
            reason = "the agent disconnected"
            raise
        except Exception as e:
            reason = f"the agent's stream broke: {e}"
        finally:
            if not reader.done():
                reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            ending = self._ending
            if ending is not None:
                reason = ending[1]
            self.left(reason)
        if ending is None or ending[0] is None:
            return None
        return ending[0], ending[1]

    async def _write_loop(self, context: aio.ServicerContext) -> None:
        ready = self._ready
        outbox = self._outbox
        while True:
            await ready.wait()
            ready.clear()
            if self._ending is not None:
                return
            while outbox:
                data = outbox.popleft()
                await context.write(data)
                self._written_bytes += len(data)
                if self._ending is not None:
                    return

    async def _read_loop(self, context: aio.ServicerContext) -> None:
        try:
            await self._read_messages(context)
        except Exception as e:
            self.end_stream(None, f"the agent's stream broke: {e}")

    async def _read_messages(self, context: aio.ServicerContext) -> None:
        while self._ending is None:
            data = await context.read()
            if data is aio.EOF:
                self.end_stream(None, "the agent closed its stream")
                return
            try:
                msg = decode_client_message(data)
            except InvalidMessage as e:
                self.end_stream(grpc.StatusCode.INVALID_ARGUMENT, f"malformed message: {e}")
                return
            if isinstance(msg, Hello):
                self.end_stream(grpc.StatusCode.INVALID_ARGUMENT, "unexpected second hello")
                return
            self._inbound(msg)


@implementer(IRPCServerTransport)
class GrpcServerTransport:
    """Serve ``aperture.rpc.v1.Coordinator`` to agents, reporting them to ``registry``.

    ``listen`` is an endpoint string (see ``txloom.rpc.grpc.address``); ``tls`` secures a
    ``tcp:`` or bare address. After ``start`` fires, ``port`` is the bound TCP port.
    """

    name = "grpc"
    log = Logger()

    def __init__(
        self,
        registry: Any,
        listen: str = "tcp:0:interface=127.0.0.1",
        *,
        tls: ServerTLS | None = None,
        reactor: Any = None,
        runner: AsyncioRunner | str = "auto",
        max_message_size: int = DEFAULT_MAX_FRAME_SIZE,
        send_queue_limit: int = SEND_QUEUE_LIMIT,
        hello_timeout: float = HELLO_TIMEOUT,
        keepalive_time: float = KEEPALIVE_TIME,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor  # noqa: PLC0415

            reactor = default_reactor
        if min(max_message_size, send_queue_limit) < 1 or hello_timeout <= 0:
            raise ValueError("max_message_size, send_queue_limit and hello_timeout must be > 0")
        self.registry = registry
        self.listen = parse_listen(listen, tls)
        self.reactor = reactor
        self._own_runner = not isinstance(runner, AsyncioRunner)
        self.runner = runner if isinstance(runner, AsyncioRunner) else runner_for(reactor, runner)
        self.max_message_size = max_message_size
        self.send_queue_limit = send_queue_limit
        self.hello_timeout = hello_timeout
        self.keepalive_time = keepalive_time
        self.keepalive_timeout = keepalive_timeout
        self.port: int | None = None
        self._server: aio.Server | None = None
        self._streams: set[GrpcPeer] = set()  # loop side: the streams being served
        self._stopped: Deferred[None] | None = None

    # IRunnable -----------------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        self.runner.start()
        d = self.runner.run(self._start())

        def started(port: int) -> None:
            self.port = port
            self.log.info(
                "gRPC reverse-RPC transport on {address} (port {port}, asyncio: {mode})",
                address=self.listen.address,
                port=port,
                mode=self.runner.mode,
            )

        return d.addCallback(started)

    def stop(self) -> Deferred[None]:
        if self._stopped is None:
            if self._server is None and self.port is None:
                self._stopped = succeed(None)
            else:
                self._stopped = self.runner.run(self._stop())

                def release(result: Any) -> Any:
                    if self._own_runner:
                        self.runner.stop()
                    return result

                self._stopped.addBoth(release)
        d: Deferred[None] = Deferred()
        self._stopped.addBoth(lambda r: (d.callback(None), r)[1])
        return d

    # Loop side -----------------------------------------------------------------------------

    def _options(self) -> list[tuple[str, Any]]:
        return [
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", self.max_message_size),
            ("grpc.max_send_message_length", self.max_message_size),
            ("grpc.keepalive_time_ms", int(self.keepalive_time * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout * 1000)),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]

    async def _start(self) -> int:
        server = aio.server(options=self._options())
        handler = grpc.stream_stream_rpc_method_handler(self._connect)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Connect": handler}),)
        )
        tls = self.listen.tls
        try:
            if tls is None:
                port = server.add_insecure_port(self.listen.address)
            else:
                port = server.add_secure_port(self.listen.address, tls.credentials())
        except RuntimeError as e:
            raise OSError(f"cannot listen on {self.listen.address}: {e}") from None
        await server.start()
        self._server = server
        return port

    async def _stop(self) -> None:
        if self._server is not None:
            # Streams never end on their own: end them, so stopping takes no grace time.
            for peer in list(self._streams):
                peer.end_stream(grpc.StatusCode.UNAVAILABLE, "the controller is shutting down")
            await self._server.stop(STOP_GRACE)
            self._server = None

    def _on_reactor(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Call ``fn`` on the reactor thread; the future (on the loop) gets its outcome."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def settle(ok: bool, value: Any) -> None:
            if not future.done():
                (future.set_result if ok else future.set_exception)(value)

        def call() -> None:
            try:
                result = fn(*args)
            except Exception as e:
                self.runner.call_in_loop(settle, False, e)
            else:
                self.runner.call_in_loop(settle, True, result)

        self.runner.to_reactor(call)
        return future

    async def _connect(self, _requests: Any, context: aio.ServicerContext) -> None:
        """One agent's stream, from hello to the end."""
        address = context.peer()
        try:
            first = await asyncio.wait_for(context.read(), self.hello_timeout)
        except asyncio.TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no hello in time")
        if first is aio.EOF:
            return
        token = token_from_metadata(context.invocation_metadata())
        try:
            hello = decode_client_message(first, token)
        except InvalidMessage as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed message: {e}")
        if not isinstance(hello, Hello):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a hello"
            )
        peer = GrpcPeer(self, hello.name, address, self.send_queue_limit)
        try:
            await self._on_reactor(self._join, peer, hello)
        except asyncio.CancelledError:
            # Gone while the registry looked at its hello: if it was let in, it has left.
            peer.left("the agent disconnected")
            raise
        except Exception as e:
            # The registry refuses with txloom.rpc.RPCError (a code and a message).
            code = getattr(e, "code", None)
            status = STATUS_CODES.get(code, grpc.StatusCode.INTERNAL)
            await context.abort(status, str(getattr(e, "message", None) or e))
        self._streams.add(peer)
        try:
            ending = await peer.serve(context)
        finally:
            self._streams.discard(peer)
        if ending is not None:
            await context.abort(*ending)

    def _join(self, peer: GrpcPeer, hello: Hello) -> None:
        self.registry.join(peer, hello)
        peer.joined = True
