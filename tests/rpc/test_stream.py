"""The stream transport's own concerns: URLs, limits, hello deadline, slow agents,
reconnecting with backoff on a Clock."""

from __future__ import annotations

import socket
import struct

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from support.rpc import sleep, until_closed
from support.waiting import until
from txloom.rpc import Clients, Dispatcher, HandlerRegistry
from txloom.rpc.backoff import reconnect_policy
from txloom.rpc.transports.stream import (
    StreamClientTransport,
    StreamServerTransport,
    endpoint_for_url,
)
from txloom.wire.rpc import Hello, encode_frame


def test_urls_become_endpoint_strings() -> None:
    assert endpoint_for_url("tcp://h.example:7300") == "tcp:host=h.example:port=7300"
    assert endpoint_for_url("unix:///run/a.sock") == "unix:path=/run/a.sock"
    assert (
        endpoint_for_url("tls://h:1?trustRoots=/etc/ca&timeout=3")
        == "tls:host=h:port=1:trustRoots=/etc/ca:timeout=3"
    )
    assert endpoint_for_url("ssl://h:1").startswith("tls:host=h:port=1")
    for bad in ("tcp://h", "http://h:1", "unix://"):
        with pytest.raises(ValueError):
            endpoint_for_url(bad)


def test_backoff_grows_caps_and_jitters() -> None:
    policy = reconnect_policy(0.5, 10.0, rand=lambda: 0.0)
    assert [policy(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert policy(10_000) == 10.0
    jittered = reconnect_policy(0.5, 10.0, jitter=0.25, rand=lambda: 1.0)
    assert jittered(1) == 0.375
    with pytest.raises(ValueError):
        reconnect_policy(0, 1)


async def listening(clients: Clients, **kw: object) -> StreamServerTransport:
    server = StreamServerTransport(clients, "tcp:0:interface=127.0.0.1", **kw)  # type: ignore[arg-type]
    await server.start()
    return server


@pytest_twisted.ensureDeferred
async def test_agent_reconnects_with_backoff_on_its_clock() -> None:
    # A port that refuses connections: bind, note it, close.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clock = Clock()
    transport = StreamClientTransport(
        f"tcp://127.0.0.1:{port}",
        "a",
        Dispatcher(HandlerRegistry()),
        clock=clock,
        reconnect_initial=0.5,
    )
    await transport.start()
    try:
        await until(clock.getDelayedCalls, what="a retry to be scheduled")
        first = clock.getDelayedCalls()[0].getTime() - clock.seconds()
        assert 0.375 <= first <= 0.5
        clock.advance(first)
        await until(clock.getDelayedCalls, what="the second retry")
        second = clock.getDelayedCalls()[0].getTime() - clock.seconds()
        assert 0.75 <= second <= 1.0
        assert not transport.connected
    finally:
        await transport.stop()


@pytest_twisted.ensureDeferred
async def test_oversize_frame_and_silent_connections_are_dropped() -> None:
    clients = Clients()
    server = await listening(clients, max_frame_size=1024, hello_timeout=0.2)
    try:
        host, port = server.address.host, server.address.port
        with socket.create_connection((host, port)) as big:
            big.sendall(struct.pack(">I", 10**9))
            await until_closed(big)
        with socket.create_connection((host, port)) as silent:
            await until_closed(silent)  # no hello within the deadline
        with socket.create_connection((host, port)) as twice:
            twice.sendall(encode_frame(Hello("x", 1)) + encode_frame(Hello("x", 1)))
            await until_closed(twice)
        assert not clients.list()
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_an_agent_that_never_reads_is_dropped_not_buffered() -> None:
    clients = Clients()
    server = await listening(clients, send_queue_limit=256 * 1024)
    try:
        address = server.address
        with socket.create_connection((address.host, address.port)) as stuck:
            stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stuck.sendall(encode_frame(Hello("stuck", 1)))
            stuck.setblocking(False)
            await clients.when_joined("stuck")
            calls = []
            payload = b"x" * 60_000
            from txloom.rpc import Raw

            while "stuck" in clients and len(calls) < 2000:
                calls.append(clients.call("stuck", Raw("t.Big", payload), timeout=30))
                if len(calls) % 20 == 0:
                    await sleep(0)
            await until(lambda: "stuck" not in clients, what="the stuck agent dropped")
            errors = []
            for d in calls:
                d.addErrback(errors.append)
            assert len(errors) == len(calls)
            assert len(calls) < 2000
    finally:
        await server.stop()
