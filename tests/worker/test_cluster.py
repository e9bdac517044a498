"""Worker hosts as a cluster, with real ``twistd workerhost`` processes on a real
three-node nats-server cluster with JetStream: an app that only host B runs is served
through host A's Locator and A's HTTP front end; B killed, A says "not found" within the
TTL; B back, served again. The hosts run the commands of docs/cluster.md, and its
examples call them."""

from __future__ import annotations

import http.client
import json
import re
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import threads, utils
from twisted.python import usage

from support.nats import NatsCluster, NatsServer, nats_cluster  # noqa: F401
from support.processes import ChildProcess, twistd
from support.waiting import until
from support.workerhost import short_tmpdir, start_host
from txloom.status.worker import watch_worker
from txloom.worker.client import connect
from txloom.worker.cluster import HostCluster
from txloom.worker.errors import ServiceNotAvailable
from txloom.worker.examples import APPS_DIR
from txloom.worker.host import WorkerHost
from txloom.worker.tap import Options

TTL = 2.0
DOC = Path(__file__).resolve().parents[2] / "docs" / "cluster.md"


def doc_blocks(language: str) -> list[str]:
    """The ``language`` blocks of the page's "Worker hosts as a cluster" section."""
    text = DOC.read_text()
    section = text[text.index("## Worker hosts as a cluster") :]
    end = section.find("\n## ", 1)
    section = section if end < 0 else section[:end]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def doc_host_args(host_id: str) -> list[str]:
    """The page's ``twistd workerhost`` arguments for ``host_id`` (after the plugin name)."""
    commands = [
        shlex.split(line)
        for line in doc_blocks("sh")[0].replace("\\\n", " ").splitlines()
        if line.startswith("twistd")
    ]
    (argv,) = [c for c in commands if c[-2:] == ["--cluster-id", host_id]]
    return argv[argv.index("workerhost") + 1 :]


def test_every_example_of_the_section_is_run_here() -> None:
    assert len(doc_blocks("sh")) == 2  # the hosts (run below) and the curl (done below)
    assert [b.splitlines()[0] for b in doc_blocks("python")] == [
        "# through_a.py: B's echo app, called through A's Locator"
    ]
    assert len(doc_blocks("toml")) == 1


@pytest.fixture
def jetstream(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path, "-js", "-sd", str(tmp_path / "js")).start()
    try:
        yield server
    finally:
        server.stop()


def _options(*args: str) -> Options:
    options = Options()
    options.parseOptions(["--apps", str(APPS_DIR), *args])
    return options


def test_cluster_options_are_checked_and_read_from_the_config_file(tmp_path: Path) -> None:
    assert _options()["cluster"] is None  # no cluster unless asked
    for bad, message in (
        (["--cluster", "h1:4222"], "--cluster: bad NATS server URL"),
        (["--cluster", "nats://h1:4222", "--cluster-ttl", "0.5"], "--cluster-ttl must be"),
        (["--cluster", "nats://h1:4222", "--cluster-id", "a b"], "--cluster-id"),
        (["--cluster", "nats://h1:4222", "--cluster-bucket", "a.b"], "--cluster-bucket"),
    ):
        with pytest.raises(usage.UsageError, match=message):
            _options(*bad)
    config = tmp_path / "txloom.toml"
    config.write_text(doc_blocks("toml")[0].replace('"apps-a"', json.dumps(str(APPS_DIR))))
    options = Options()
    options.parseOptions(["--config", str(config)])
    assert len(options["cluster"]) == 3 and options["cluster-replicas"] == 3
    assert (options["cluster-ttl"], options["cluster-id"]) == (10.0, "host-a")
    options = _options("--cluster", "nats://h1:4222,nats://h2:4222", "--cluster-ttl", "3")
    assert options["cluster"] == ("nats://h1:4222", "nats://h2:4222")


def _host(root: Path, name: str, apps: Path, nats: str) -> ChildProcess:
    """Host ``name`` as the page starts it, on free ports, with a short TTL."""
    args = doc_host_args(f"host-{name}")
    given = {"--apps": str(apps), "--cluster": nats}
    for option in ("--locator", "--http"):
        given[option] = "tcp:0:interface=127.0.0.1"
    for i, word in enumerate(args[:-1]):
        if word in given:
            args[i + 1] = given[word]
    extra = ["--runtime", str(root / f"run-{name}"), "--cluster-ttl", f"{TTL:g}"]
    return twistd("workerhost", *args, *extra, cwd=root).start()


async def _addresses(child: ChildProcess) -> tuple[int, int]:
    locator = int((await child.when(r"locator listening on tcp:127\.0\.0\.1:(\d+)"))[1])
    http = int((await child.when(r"HTTP front end listening on tcp:127\.0\.0\.1:(\d+)"))[1])
    return locator, http


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


async def _echo(locator: int) -> bytes | None:
    """Call the ``echo`` app through the Locator at ``locator``; None if it is unknown."""
    try:
        service = await connect("echo", ("127.0.0.1", locator))
    except ServiceNotAvailable:
        return None
    try:
        channel = service.enqueue("echo")
        channel.tx.write(b"across hosts")
        channel.tx.close()
        return await channel.rx.read_all()
    finally:
        service.close()


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_an_app_on_host_b_is_served_through_host_a_until_b_dies(
    nats_cluster: NatsCluster,  # noqa: F811
) -> None:
    with short_tmpdir() as root:
        (root / "none").mkdir()
        a = _host(root, "a", root / "none", nats_cluster.url)
        b = _host(root, "b", APPS_DIR, nats_cluster.url)
        try:
            a_locator, a_http = await _addresses(a)
            await _addresses(b)
            await a.when(r"worker host host-b joined: .*echo")
            assert await _echo(a_locator) == b"across hosts"
            # the page's examples, against A: curl, and the Locator client
            (url,) = re.findall(r"curl http://127\.0\.0\.1:8081(\S+)", doc_blocks("sh")[1])
            status, body = await threads.deferToThread(_get, a_http, url)
            assert (status, body) == (200, b"Hello, world!\n")
            script = doc_blocks("python")[0].replace("10054", str(a_locator))
            out, err, code = await utils.getProcessOutputAndValue(
                sys.executable, ["-c", script], path=str(root)
            )
            assert (code, out.strip()) == (0, b"b'hello from A'"), err.decode()

            b.kill()  # SIGKILL: no withdrawal, the entry has to expire
            killed = time.monotonic()
            await until(
                lambda: _get(a_http, "/hello/")[0] == 404, 20, "A to stop routing to B", 0.1
            )  # meanwhile A answers 503: B's address refuses connections
            assert await _echo(a_locator) is None
            assert time.monotonic() - killed < TTL + 3.0  # TTL, expiry check, busy machine

            b = _host(root, "b", APPS_DIR, nats_cluster.url)
            await _addresses(b)
            await until(lambda: _get(a_http, "/hello/")[0] == 200, 30, "B served again", 0.1)
            assert await _echo(a_locator) == b"across hosts"
            # a clean stop: A withdraws its entry, then exits 0
            assert await threads.deferToThread(a.terminate, 30) == 0, a.tail()
            await b.when(r"worker host host-a left the cluster")
        finally:
            b.kill()
            a.kill()


async def _in_process_host(root: Path, name: str, apps: dict, nats: str) -> WorkerHost:
    cluster = HostCluster(nats, ttl=TTL, host_id=f"host-{name}")
    (root / name).mkdir()
    host = start_host(root / name, apps, http=True, cluster=cluster)
    await until(lambda: cluster.membership.members.get(f"host-{name}"), 20, f"{name} listed")
    return host


@pytest_twisted.ensureDeferred
async def test_routing_streams_the_response_and_never_routes_twice(
    jetstream: NatsServer,
) -> None:
    with short_tmpdir() as root:
        b = await _in_process_host(root, "b", {"tw": {}}, jetstream.url)
        a = await _in_process_host(root, "a", {}, jetstream.url)
        try:
            assert a.http_address is not None and a.cluster is not None
            await until(lambda: "tw" in a.locator.names(), 20, "A to list B's app")
            port = a.http_address[1]
            size = 3 * 1024 * 1024
            status, body = await threads.deferToThread(_get, port, f"/tw/stream?{size}")
            assert (status, len(body)) == (200, size)
            assert a.cluster.routed == 1
            # a request another host has routed already is not routed again
            status, body = await threads.deferToThread(
                _get, port, "/tw/x", {"X-Txloom-Routed": "host-c"}
            )
            assert status == 404 and a.cluster.routed == 1
            metrics = {
                s.name: s.value
                for family in watch_worker(a).collectors[0].collect()
                for s in family.samples
            }
            assert metrics["txloom_worker_cluster_routed_total"] == 1
            assert metrics["txloom_worker_cluster_hosts"] == 1
            assert metrics["txloom_worker_cluster_connected"] == 1
            # a clean stop withdraws B's entry at once: no waiting for the TTL
            await b.stopService()
            await until(lambda: "tw" not in a.locator.names(), 10, "B's app to go")
            assert (await threads.deferToThread(_get, port, "/tw/x"))[0] == 404
        finally:
            await a.stopService()
            if b.running:
                await b.stopService()
