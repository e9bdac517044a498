"""The client library: resolving, errors as exceptions, Deferred and async styles."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from zope.interface import verify

from support.workerhost import short_tmpdir, start_host
from txloom.interfaces import IAddressResolver
from txloom.worker import errors
from txloom.worker.app_service import AppService
from txloom.worker.client import LocatorAddressResolver, Service, as_text, connect
from txloom.worker.host import WorkerHost


@pytest.fixture(scope="module")
def host() -> Iterator[WorkerHost]:
    with short_tmpdir() as root:
        host = start_host(root, {"cli": {}})
        yield host
        pytest_twisted.blockon(host.stopService())


@pytest_twisted.ensureDeferred
async def test_deferred_style_reads(host: WorkerHost) -> None:
    service = await connect("cli", host.locator_address)
    try:
        channel = service.enqueue("echo")
        channel.tx.write("text is sent as UTF-8")
        channel.tx.close()
        got: list[object] = []
        d = channel.rx.read()
        d.addCallback(got.append)
        await d
        assert got == [b"text is sent as UTF-8"]
        assert await channel.rx.read() is None  # the end of the stream
        assert await channel.rx.read() is None
    finally:
        service.close()


@pytest_twisted.ensureDeferred
async def test_sending_after_close_and_unknown_methods_are_refused(host: WorkerHost) -> None:
    service = await connect("cli", host.locator_address)
    try:
        channel = service.enqueue("echo")
        channel.tx.close()
        with pytest.raises(errors.ServiceError, match="not allowed"):
            channel.tx.write(b"late")
        with pytest.raises(errors.UnknownMethod):
            service.invoke("no-such-method")
        assert await channel.rx.read_all() == b""
    finally:
        service.close()


@pytest_twisted.ensureDeferred
async def test_client_sends_an_error_upstream(host: WorkerHost) -> None:
    service = await connect("cli", host.locator_address)
    try:
        channel = service.enqueue("echo")
        channel.tx.write(b"a")
        channel.tx.error(5, "client gave up")
        # the echo handler's read raises; the worker reports it as an uncaught exception
        with pytest.raises(errors.UncaughtException, match="client gave up"):
            await channel.rx.read_all()
    finally:
        service.close()


@pytest_twisted.ensureDeferred
async def test_unknown_service_and_dead_locator() -> None:
    with short_tmpdir() as root:
        host = start_host(root, {})
        try:
            with pytest.raises(errors.ServiceNotAvailable, match="service is not available"):
                await connect("missing", host.locator_address)
            address = host.locator_address
        finally:
            await host.stopService()
    with pytest.raises(errors.ServiceNotAvailable, match="cannot connect"):
        await connect("cli", address)


@pytest_twisted.ensureDeferred
async def test_lost_connection_fails_open_channels() -> None:
    class Hangup(Protocol):
        def dataReceived(self, data: bytes) -> None:
            self.transport.loseConnection()

    port = reactor.listenTCP(0, Factory.forProtocol(Hangup), interface="127.0.0.1")
    try:
        service = Service("fake", [("127.0.0.1", port.getHost().port)], AppService.graph)
        await service.connect()
        channel = service.enqueue("anything")
        with pytest.raises(errors.ConnectionLost):
            await channel.rx.read()
        with pytest.raises(errors.ServiceError, match="connection lost"):
            service.enqueue("again")
    finally:
        await port.stopListening()


def test_as_text() -> None:
    assert as_text({b"a": [b"b", b"\xff", 1]}) == {"a": ["b", b"\xff", 1]}
    assert errors.ServiceError.from_wire([[3, 1], b"queue is full"]).__class__ is errors.QueueFull
    odd = errors.ServiceError.from_wire([b"garbage"])
    assert (odd.category, odd.code) == (errors.DISPATCH, errors.BAD_ARGUMENTS)


@pytest_twisted.ensureDeferred
async def test_locator_as_address_resolver(host: WorkerHost) -> None:
    resolver = LocatorAddressResolver(host.locator_address)
    verify.verifyObject(IAddressResolver, resolver)
    [endpoint] = await resolver.resolve("cli")
    port = host.locator.resolve("cli")[0][0][1]
    assert endpoint == f"tcp:host=127.0.0.1:port={port}"
    assert await resolver.resolve("nothing-here") == []
