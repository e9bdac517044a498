"""HTTP: WSGI and twisted.web apps as workers, through the host's HTTP front end."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import pytest_twisted
from twisted.internet import threads

from support.workerhost import call, short_tmpdir, start_host, wait_until
from txloom.wire.cocaine_http import encode_request
from txloom.worker.client import connect
from txloom.worker.host import WorkerHost

APPS = Path(__file__).resolve().parent / "apps"
ADAPTER = ["{python}", "-m", "txloom.worker.http"]


@pytest.fixture(scope="module")
def host() -> Iterator[WorkerHost]:
    with short_tmpdir() as root:
        host = start_host(
            root,
            {
                "wsgi": {"command": [*ADAPTER, "--wsgi", "webapps:wsgi_app"], "cwd": str(APPS)},
                "web": {"command": [*ADAPTER, "--resource", "webapps:root"], "cwd": str(APPS)},
                "test": {},
                "narrow": {"profile": {"pool-limit": 1, "concurrency": 1, "queue-limit": 1}},
            },
            http=True,
        )
        yield host
        pytest_twisted.blockon(host.stopService())


class Reply:
    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.status = response.status
        self.headers = response.headers
        self.chunked = response.chunked
        self.body = response.read()


def _request(
    address: tuple[str, int], method: str, path: str, body: bytes | None, headers: dict
) -> Reply:
    connection = http.client.HTTPConnection(*address, timeout=20)
    try:
        connection.request(method, path, body=body, headers=headers)
        return Reply(connection.getresponse())
    finally:
        connection.close()


def fetch(
    host: WorkerHost, path: str, method: str = "GET", body: bytes | None = None, **headers: Any
) -> Any:
    """A real HTTP/1.1 request from a thread, so the reactor keeps serving."""
    headers = {k.replace("_", "-"): v for k, v in headers.items()}
    return threads.deferToThread(_request, host.http_address, method, path, body, headers)


@pytest_twisted.ensureDeferred
async def test_wsgi_app_status_headers_and_environ(host: WorkerHost) -> None:
    reply = await fetch(host, "/wsgi/info?x=1&y=2", X_Test="yes")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.headers["X-Served-By"] == "wsgi"
    assert reply.headers.get_all("Set-Cookie") == ["a=1", "b=2"]
    assert not reply.chunked
    seen = json.loads(reply.body)
    assert seen == {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/info",
        "QUERY_STRING": "x=1&y=2",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_X_FORWARDED_PREFIX": "/wsgi",
        "HTTP_X_TEST": "yes",
        "HTTP_HOST": f"{host.http_address[0]}:{host.http_address[1]}",
    }


@pytest_twisted.ensureDeferred
async def test_wsgi_post_body_and_streamed_response(host: WorkerHost) -> None:
    payload = bytes(range(256)) * 400
    reply = await fetch(host, "/wsgi/echo", "POST", payload)
    assert reply.status == 200 and reply.body == payload
    reply = await fetch(host, "/wsgi/stream")
    assert reply.status == 200 and reply.chunked
    assert reply.body == b"".join(b"part-%d\n" % i for i in range(100))
    reply = await fetch(host, "/wsgi/missing")
    assert reply.status == 404 and reply.body == b"not here\n"


@pytest_twisted.ensureDeferred
async def test_twisted_web_resource_streams(host: WorkerHost) -> None:
    reply = await fetch(host, "/web/slow")
    assert reply.status == 201
    assert reply.headers["X-Served-By"] == "twisted.web"
    assert reply.body == b"".join(b"tick-%d\n" % i for i in range(5))
    reply = await fetch(host, "/web/hello?q=1")
    assert (reply.status, reply.body) == (200, b"hello /hello?q=1")


@pytest_twisted.ensureDeferred
async def test_routing_by_headers(host: WorkerHost) -> None:
    reply = await fetch(host, "/hello", X_Cocaine_Service="web")
    assert (reply.status, reply.body) == (200, b"hello /hello")
    reply = await fetch(host, "/anything", X_Cocaine_Service="test", X_Cocaine_Event="nope")
    assert reply.status == 501  # the app has no handler for that event


@pytest_twisted.ensureDeferred
async def test_unknown_app_is_404(host: WorkerHost) -> None:
    reply = await fetch(host, "/no-such-app/x")
    assert reply.status == 404 and b"no such app" in reply.body
    reply = await fetch(host, "/", X_Cocaine_Service="nope")
    assert reply.status == 404


@pytest_twisted.ensureDeferred
async def test_full_queue_is_503(host: WorkerHost) -> None:
    service = await connect("narrow", host.locator_address)
    try:
        busy = service.enqueue("hang")
        await busy.rx.read()
        waiting = service.enqueue("ping")
        waiting.tx.close()
        await wait_until(lambda: len(host.pools["narrow"].queue) == 1, 5, "one queued")
        reply = await fetch(host, "/narrow/")
        assert reply.status == 503 and reply.body == b"queue is full\n"
    finally:
        service.close()


@pytest_twisted.ensureDeferred
async def test_worker_lost_is_502_and_bad_reply_is_502(host: WorkerHost) -> None:
    reply = await fetch(host, "/x", X_Cocaine_Service="test", X_Cocaine_Event="vanish")
    assert reply.status == 502 and b"worker has been lost" in reply.body
    reply = await fetch(host, "/x", X_Cocaine_Service="test", X_Cocaine_Event="ping")
    assert reply.status == 502 and b"bad response" in reply.body


@pytest_twisted.ensureDeferred
async def test_timeout_is_504(host: WorkerHost) -> None:
    reply = await fetch(
        host, "/x", X_Cocaine_Service="test", X_Cocaine_Event="silent", X_Request_Timeout="200"
    )
    assert reply.status == 504 and b"timed out" in reply.body


def _hang_up_after_first_bytes(address: tuple[str, int], path: str) -> bytes:
    import socket

    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        return sock.recv(100)


@pytest_twisted.ensureDeferred
async def test_http_client_vanishing_mid_stream_cancels_the_session(host: WorkerHost) -> None:
    first = await threads.deferToThread(_hang_up_after_first_bytes, host.http_address, "/web/slow")
    assert first.startswith(b"HTTP/1.1 201")
    pool = host.pools["web"]
    await wait_until(lambda: sum(w.load for w in pool.workers.values()) == 0, 5, "cancelled")
    reply = await fetch(host, "/web/hello")
    assert reply.status == 200


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--wsgi", "nosuch.module:app"], "cannot import nosuch"),
        (["--wsgi", "json:nothing"], "json has no attribute nothing"),
        (["--resource", "json:dumps"], "is not a twisted.web resource"),
        (["--wsgi", "no-colon"], "is not of the form"),
    ],
)
def test_adapter_refuses_bad_targets_with_one_line(args: list[str], message: str) -> None:
    import subprocess
    import sys

    spawn = ["--app", "a", "--endpoint", "/nonexistent.sock", "--uuid", "u", "--protocol", "1"]
    result = subprocess.run(
        [sys.executable, "-m", "txloom.worker.http", *spawn, *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 64
    assert result.stderr.strip().count("\n") == 0
    assert message in result.stderr


# -- request targets with dot segments ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_dot_segments_are_removed_before_routing(host: WorkerHost) -> None:
    reply = await fetch(host, "/web/a/./b/../../hello?q=1")
    assert (reply.status, reply.body) == (200, b"hello /hello?q=1")
    reply = await fetch(host, "/wsgi/x/%2e%2E/info")
    assert reply.status == 200 and json.loads(reply.body)["PATH_INFO"] == "/info"
    reply = await fetch(host, "/a/../hello", X_Cocaine_Service="web")
    assert (reply.status, reply.body) == (200, b"hello /hello")


@pytest.mark.parametrize(
    "path", ["/web/../../etc/passwd", "/web/%2e%2e/%2E%2E/etc/passwd", "/web/..%2F..%2Fetc"]
)
@pytest_twisted.ensureDeferred
async def test_a_target_that_climbs_above_the_root_is_refused(host: WorkerHost, path: str) -> None:
    reply = await fetch(host, path)
    assert reply.status == 400 and b"bad request target" in reply.body


@pytest_twisted.ensureDeferred
async def test_the_worker_adapter_refuses_a_climbing_target_from_any_engine(
    host: WorkerHost,
) -> None:
    chunk = encode_request("GET", "/x/../../etc/passwd", "1.1", [], b"")
    reply = await call(host, "wsgi", "http", [chunk])
    unpacker = msgpack.Unpacker(raw=True)
    unpacker.feed(reply)
    status, _headers = unpacker.unpack()
    assert status == 400
    assert b"climbs above the root" in reply[unpacker.tell() :]
