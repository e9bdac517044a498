"""Worker output and the Logging service end up in the host log, tagged with app and uuid."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.logger import LogLevel

from support.workerhost import LogCapture, call, raw_connect, short_tmpdir, start_host, wait_until
from txloom.worker.client import LoggerClient
from txloom.worker.host import WorkerHost


@pytest.fixture(scope="module")
def host() -> Iterator[WorkerHost]:
    with short_tmpdir() as root:
        host = start_host(root, {"logs": {}})
        yield host
        pytest_twisted.blockon(host.stopService())


def output(logs: LogCapture, uuid: str) -> list[dict]:
    return [e for e in logs.matching(app="logs", uuid=uuid) if "stream" in e]


@pytest_twisted.ensureDeferred
async def test_worker_stdout_and_stderr_lines_are_tagged(host: WorkerHost) -> None:
    with LogCapture() as logs:
        assert await call(host, "logs", "print") == b"printed"
        [uuid] = list(host.pools["logs"].workers)
        await wait_until(lambda: len(output(logs, uuid)) >= 2, 5, "lines")
    lines = {e["stream"]: e["line"] for e in output(logs, uuid)}
    assert lines["stdout"] == f"out-line from {uuid}"
    assert lines["stderr"] == f"err-line from {uuid}"
    assert f"[logs {uuid}] out-line from {uuid}" in logs.texts()


@pytest_twisted.ensureDeferred
async def test_a_worker_traceback_is_one_error_event_with_the_app(host: WorkerHost) -> None:
    with LogCapture() as logs:
        with pytest.raises(Exception, match="boom"):
            await call(host, "logs", "raise")
        [uuid] = list(host.pools["logs"].workers)
        await wait_until(lambda: logs.matching(app="logs", log_level=LogLevel.error), 5, "it")
        assert await call(host, "logs", "print") == b"printed"  # lines after it: one each
        await wait_until(lambda: len(output(logs, uuid)) >= 3, 5, "lines")
    [event] = logs.matching(app="logs", log_level=LogLevel.error)
    lines = event["traceback"].splitlines()
    assert "handler for 'raise' failed" in lines[0]
    assert lines[1] == "Traceback (most recent call last):" and "ValueError: boom" in lines[-1]
    assert event["uuid"] == uuid and event["stream"] == "stderr"
    assert not any("Traceback" in e.get("line", "") for e in output(logs, uuid))


@pytest_twisted.ensureDeferred
async def test_logging_service_from_a_worker(host: WorkerHost) -> None:
    with LogCapture() as logs:
        verbosity = await call(host, "logs", "log", [b"hello from the app"])
        [uuid] = list(host.pools["logs"].workers)
    assert verbosity == b"1"
    [event] = logs.matching(log_namespace="txloom.worker.apps")
    assert (event["app"], event["uuid"], event["message"]) == ("logs", uuid, "hello from the app")
    assert event["source"] == "app/logs"
    assert event["attributes"]["where"] == "testworker"
    assert event["log_level"].name == "warn"
    assert not any("too verbose" in t for t in logs.texts())


@pytest_twisted.ensureDeferred
async def test_logger_client_and_verbosity(host: WorkerHost) -> None:
    logger = await LoggerClient.connect("app/tool", host.locator_address, uuid="u-1")
    try:
        assert await logger.verbosity() == 1
        await logger.set_verbosity(0)
        assert host.logging.verbosity == 0
        with LogCapture() as logs:
            logger.debug("now visible", step=3)
            await wait_until(lambda: logs.matching(message="now visible"), 5, "debug line")
        [event] = logs.matching(message="now visible")
        assert event["app"] == "tool" and event["attributes"] == {"uuid": "u-1", "step": "3"}
    finally:
        await logger.set_verbosity(1)
        logger.close()


@pytest_twisted.ensureDeferred
async def test_malformed_emit_is_logged_and_ignored(host: WorkerHost) -> None:
    (address,) = host.locator.resolve("logging")[0]
    peer = await raw_connect(tuple(address))
    with LogCapture() as logs:
        peer.send(1, 0, [b"not a priority"])
        peer.send(2, 1, [])
        [reply] = await peer.wait_messages(1)
    assert reply.channel == 2 and reply.args == [1]
    assert any("malformed emit" in t for t in logs.texts())
    peer.transport.loseConnection()
