"""Sessions end to end: a real host, real worker processes, the client library."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import pytest_twisted

from support.workerhost import call, short_tmpdir, start_host
from txloom.worker import errors
from txloom.worker.client import LocatorClient, Service, as_text, connect
from txloom.worker.host import WorkerHost


@pytest.fixture(scope="module")
def host() -> Iterator[WorkerHost]:
    with short_tmpdir() as root:
        host = start_host(root, {"test": {"profile": {"pool-limit": 2}}})
        yield host
        pytest_twisted.blockon(host.stopService())


@pytest_twisted.ensureDeferred
async def test_echo_through_locator_and_app_service(host: WorkerHost) -> None:
    assert await call(host, "test", "echo", [b"hello ", b"world"]) == b"hello world"
    assert await call(host, "test", "ping") == b"pong"


@pytest_twisted.ensureDeferred
async def test_streaming_1000_chunks_each_way(host: WorkerHost) -> None:
    service = await connect("test", host.locator_address)
    try:
        up = service.enqueue("sum")
        for i in range(1000):
            up.tx.write(b"x" * (i % 50))
        up.tx.close()
        assert await up.rx.read() == b"1000 %d" % sum(i % 50 for i in range(1000))

        down = service.enqueue("count")
        down.tx.write(b"1000")
        down.tx.close()
        chunks = [chunk async for chunk in down.rx]
        assert chunks == [b"chunk-%d" % i for i in range(1000)]

        # echo streams both ways at once on one channel
        both = service.enqueue("echo")
        got = []
        for i in range(1000):
            both.tx.write(b"%d," % i)
            if i % 100 == 99:
                got.append(await both.rx.read())
        both.tx.close()
        got.extend([chunk async for chunk in both.rx])
        assert b"".join(got) == b"".join(b"%d," % i for i in range(1000))
    finally:
        service.close()


@pytest_twisted.ensureDeferred
async def test_error_reply_propagates_with_category_and_code(host: WorkerHost) -> None:
    with pytest.raises(errors.ServiceError) as info:
        await call(host, "test", "fail")
    assert (info.value.category, info.value.code) == (42, 7)
    assert info.value.reason == "requested failure"


@pytest_twisted.ensureDeferred
async def test_unknown_event_is_error_200(host: WorkerHost) -> None:
    with pytest.raises(errors.NoHandler) as info:
        await call(host, "test", "nope")
    assert (info.value.category, info.value.code) == (42, 200)
    assert "nope" in info.value.reason


@pytest_twisted.ensureDeferred
async def test_handler_exception_is_error_100_and_worker_serves_on(host: WorkerHost) -> None:
    with pytest.raises(errors.UncaughtException) as info:
        await call(host, "test", "raise")
    assert (info.value.category, info.value.code) == (42, 100)
    assert "ValueError: boom" in info.value.reason
    assert await call(host, "test", "ping") == b"pong"


@pytest_twisted.ensureDeferred
async def test_locator_resolves_builtin_services_and_apps(host: WorkerHost) -> None:
    locator = LocatorClient(host.locator_address)
    await locator.connect()
    try:
        endpoints, version, graph = await locator.resolve("locator")
        assert endpoints == [host.locator_address] and version == 3
        assert graph[0][0] == "resolve"
        _, version, graph = await locator.resolve("logging")
        assert version == 2
        assert {name for name, _, _ in graph.values()} >= {"emit", "verbosity", "set_verbosity"}
        endpoints, version, graph = await locator.resolve("test")
        assert version == 1
        assert graph[0] == (
            "enqueue",
            {0: ("write", None), 1: ("error", {}), 2: ("close", {})},
            {0: ("write", None), 1: ("error", {}), 2: ("close", {})},
        )
        assert graph[1] == ("info", {}, {0: ("value", {}), 1: ("error", {})})
        with pytest.raises(errors.ServiceNotAvailable, match="service is not available"):
            await locator.resolve("no-such-app")
    finally:
        locator.close()


@pytest_twisted.ensureDeferred
async def test_info_reports_pool_and_queue(host: WorkerHost) -> None:
    await call(host, "test", "ping")
    service: Service = await connect("test", host.locator_address)
    try:
        info = as_text(await service.call("info"))
    finally:
        service.close()
    assert info["state"] == "running"
    assert info["pool"]["active"] >= 1
    assert info["queue"] == {"depth": 0, "capacity": 100}
    assert info["profile"]["pool-limit"] == 2


@pytest_twisted.ensureDeferred
async def test_many_concurrent_sessions_share_workers(host: WorkerHost) -> None:
    service = await connect("test", host.locator_address)
    try:
        channels = []
        for i in range(60):
            ch = service.enqueue("echo")
            ch.tx.write(b"%d" % i)
            ch.tx.close()
            channels.append(ch)
        replies = [await ch.rx.read_all() for ch in channels]
    finally:
        service.close()
    assert replies == [b"%d" % i for i in range(60)]


def test_second_host_on_the_same_runtime_directory_is_refused(host: WorkerHost) -> None:
    from txloom.worker.host import HostError

    second = WorkerHost(host.apps_dir, host.runtime_dir, locator="tcp:0:interface=127.0.0.1")
    with pytest.raises(HostError, match="in use by another running host"):
        second.startService()
    assert not second._ports  # everything it had opened is closed again


@pytest_twisted.ensureDeferred
async def test_stale_socket_of_a_dead_host_is_replaced() -> None:
    import socket

    with short_tmpdir() as root:
        (root / "run").mkdir()
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(root / "run" / "test.sock"))
        stale.close()  # the file stays, nobody listens
        host = start_host(root, {"test": {}})
        try:
            assert await call(host, "test", "ping") == b"pong"
        finally:
            await host.stopService()
