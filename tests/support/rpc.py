"""One harness per reverse-RPC transport, for the behaviour suite in tests/rpc.

A harness starts a controller transport reporting to a ``Clients``, builds agents that
connect to it, cuts an agent the way a killed process would, and sends the controller bytes
no agent would. Adding a transport to the suite is adding a harness here and its name to
``HARNESSES``; the tests themselves never look at which transport runs.
"""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred

from support.certs import self_signed_certificate
from txloom.rpc import Clients, Dispatcher, HandlerRegistry

#: Fast reconnects, so that tests of reconnecting do not wait for the spec's defaults.
FAST_RECONNECT = {"reconnect_initial": 0.05, "reconnect_max": 0.2}


class Harness:
    """What the behaviour suite needs from a transport (see the module doc)."""

    kind = "abstract"

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.server: Any = None
        self.agents: list[Any] = []

    async def start(self, clients: Clients) -> None:
        raise NotImplementedError

    def client(self, name: str, dispatcher: Any, token: str | None) -> Any:
        raise NotImplementedError

    async def agent(self, name: str, handlers: HandlerRegistry, token: str | None = None) -> Any:
        """An agent connected (not necessarily joined yet: wait on ``clients``)."""
        transport = self.client(name, Dispatcher(handlers), token)
        self.agents.append(transport)
        await transport.start()
        return transport

    def kill(self, agent: Any) -> None:
        """Cut the agent off as its process dying would: no goodbye, sockets reset."""
        raise NotImplementedError

    async def send_garbage(self) -> None:
        """Act as a broken agent: well-framed nonsense; return once the controller refused."""
        raise NotImplementedError

    async def stop(self) -> None:
        for agent in self.agents:
            await agent.stop()
        if self.server is not None:
            await self.server.stop()


class StreamHarness(Harness):
    """The stream transport over one kind of endpoint."""

    kind = "tcp"

    def listen(self) -> str:
        return "tcp:0:interface=127.0.0.1"

    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.server.address.port}"

    async def start(self, clients: Clients) -> None:
        from txloom.rpc.transports.stream import StreamServerTransport

        self.server = StreamServerTransport(clients, self.listen(), hello_timeout=2.0)
        await self.server.start()

    def client(self, name: str, dispatcher: Any, token: str | None) -> Any:
        from txloom.rpc.transports.stream import StreamClientTransport

        return StreamClientTransport(self.url(), name, dispatcher, token, **FAST_RECONNECT)

    def kill(self, agent: Any) -> None:
        agent.service.stopService()  # no new sessions
        if agent.protocol is not None:
            agent.protocol.transport.abortConnection()

    def raw_socket(self) -> socket.socket:
        address = self.server.address
        return socket.create_connection((address.host, address.port))

    async def send_garbage(self) -> None:
        # A valid length prefix around bytes that are not a CBOR message.
        with self.raw_socket() as sock:
            sock.sendall(b"\x00\x00\x00\x05\xff\xfe\xfd\xfc\xfb")
            sock.setblocking(False)
            await until_closed(sock)


class UnixHarness(StreamHarness):
    kind = "unix"

    def listen(self) -> str:
        self.path = tempfile.mktemp(prefix="rpc-", suffix=".sock", dir="/tmp")
        return f"unix:{self.path}"

    def url(self) -> str:
        return f"unix://{self.path}"

    def raw_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(self.path)
        return sock


class TlsHarness(StreamHarness):
    kind = "tls"

    def listen(self) -> str:
        self.cert, self.key = self_signed_certificate(self.tmp / "tls")
        return f"ssl:0:interface=127.0.0.1:privateKey={self.key}:certKey={self.cert}"

    def url(self) -> str:
        return f"tls://localhost:{self.server.address.port}?trustRoots={self.cert.parent}"

    async def send_garbage(self) -> None:
        # Not TLS at all: the handshake fails and the controller drops the connection.
        with self.raw_socket() as sock:
            sock.sendall(b"\x00\x00\x00\x05\xff\xfe\xfd\xfc\xfb" * 20)
            sock.setblocking(False)
            await until_closed(sock)


async def until_closed(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Wait (on the reactor) until the peer closed ``sock``; returns what it sent."""
    from support.waiting import until

    sock.setblocking(False)
    received = bytearray()

    def closed() -> bool:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return False
        except OSError:
            return True
        received.extend(data)
        return data == b""

    await until(closed, timeout, "the controller to close the connection")
    return bytes(received)


class HttpHarness(Harness):
    """The heartbeat transport (and, subclassed, long-poll) on a loopback HTTP port."""

    kind = "heartbeat"
    #: Short enough that a killed agent is noticed fast, long enough for a loaded machine.
    interval = 0.25

    async def start(self, clients: Clients) -> None:
        from txloom.rpc.transports.http_server import HttpServerTransport

        self.server = HttpServerTransport(
            clients, self.kind, "tcp:0:interface=127.0.0.1", interval=self.interval, hold=2.0
        )
        await self.server.start()

    def url(self) -> str:
        return f"{self.kind}+http://127.0.0.1:{self.server.address.port}/rpc"

    def client(self, name: str, dispatcher: Any, token: str | None) -> Any:
        from txloom.rpc.transports.http_client import HttpClientTransport

        return HttpClientTransport(
            self.url(), name, dispatcher, token, interval=0.05, **FAST_RECONNECT
        )

    def kill(self, agent: Any) -> None:
        agent.kill()

    async def send_garbage(self) -> None:
        address = self.server.address
        path = self.server.path.decode()
        with socket.create_connection((address.host, address.port)) as sock:
            sock.sendall(
                f"POST /rpc/{path} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                "Connection: close\r\n\r\n".encode()
                + b"\xff\xfe\xfd\xfc\xfb"
            )
            answer = await until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 400"), answer[:100]


class LongPollHarness(HttpHarness):
    kind = "longpoll"
    interval = 0.5


class GrpcHarness(Harness):
    """The gRPC transport (aperture's wire), built through its plugin factory; grpc.aio on
    the reactor's own loop (the suite runs on the asyncio reactor)."""

    kind = "grpc"
    asyncio = "same"

    async def start(self, clients: Clients) -> None:
        from txloom.extensions import available, parse_options
        from txloom.interfaces import IRPCTransportFactory

        self.factory = available(IRPCTransportFactory)["grpc"]
        words = ["listen=tcp:0:interface=127.0.0.1", "hello-timeout=2", f"asyncio={self.asyncio}"]
        self.server = self.factory.server(clients, parse_options(self.factory, words, "-"))
        await self.server.start()

    def client(self, name: str, dispatcher: Any, token: str | None) -> Any:
        from txloom.extensions import parse_options

        words = ["reconnect-initial=0.05", "reconnect-max=0.2", f"asyncio={self.asyncio}"]
        options = parse_options(self.factory, words, "-")
        url = f"grpc://127.0.0.1:{self.server.port}"
        return self.factory.client(url, name, dispatcher, token, options)

    def kill(self, agent: Any) -> None:
        agent.stop()  # the channel is closed at once: the controller sees its stream end

    async def send_garbage(self) -> None:
        # Not HTTP/2 at all: the gRPC server drops the connection.
        with socket.create_connection(("127.0.0.1", self.server.port)) as sock:
            sock.sendall(b"\x00\x00\x00\x05\xff\xfe\xfd\xfc\xfb" * 20)
            await until_closed(sock)


class GrpcThreadHarness(GrpcHarness):
    """The gRPC transport with grpc.aio in a thread of its own, as under twistd's epoll."""

    kind = "grpc-thread"
    asyncio = "thread"


def sleep(seconds: float) -> Deferred[None]:
    """Wait on the reactor (only to let a handler be mid-call; never to wait for a result)."""
    from twisted.internet import reactor

    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


#: Every transport the behaviour suite runs against.
HARNESSES: dict[str, Callable[[Path], Harness]] = {
    "tcp": StreamHarness,
    "unix": UnixHarness,
    "tls": TlsHarness,
    "heartbeat": HttpHarness,
    "longpoll": LongPollHarness,
    "grpc": GrpcHarness,
    "grpc-thread": GrpcThreadHarness,
}
