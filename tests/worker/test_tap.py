"""``twistd workerhost``: options, --help, a real twistd process, SIGTERM."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import threads
from twisted.python import usage

from support.processes import BIN_DIR, twistd
from support.workerhost import short_tmpdir
from txloom.worker.client import connect
from txloom.worker.examples import APPS_DIR
from txloom.worker.host import WorkerHost
from txloom.worker.tap import Options, makeService


def test_options_for_an_embedding_program(tmp_path: Path) -> None:
    options = Options()
    options.parseOptions(
        [
            "--apps",
            str(APPS_DIR),
            "--runtime",
            str(tmp_path / "run"),
            "--locator",
            "tcp:10053:interface=127.0.0.1",
            "--http",
            "tcp:8080:interface=127.0.0.1",
        ]
    )
    host = makeService(options)
    assert isinstance(host, WorkerHost)
    assert (host.apps_dir, host.runtime_dir) == (APPS_DIR, tmp_path / "run")
    assert host.locator_description == "tcp:10053:interface=127.0.0.1"
    assert host.http_description == "tcp:8080:interface=127.0.0.1"
    assert host.logging.verbosity == 1 and host.max_message_size == 64 * 1024 * 1024


def test_defaults(tmp_path: Path) -> None:
    options = Options()
    options.parseOptions(["--apps", str(tmp_path)])
    assert options["locator"] == "tcp:10053:interface=127.0.0.1"
    assert options["http"] is None
    assert options["runtime"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--apps DIR is required"),
        (["--apps", "/no/such/dir"], "is not a directory"),
        (["--apps", ".", "--verbosity", "loud"], "--verbosity must be one of"),
        (["--apps", ".", "--locator", "nonsense:1"], "--locator: bad endpoint"),
        (["--apps", ".", "--http", "tcp:notaport"], "--http: bad endpoint"),
        (["--apps", ".", "--max-message-size", "ten"], "--max-message-size must be"),
        (["--apps", ".", "--http-max-connections", "0"], "--http-max-connections must be"),
        (["--apps", ".", "--http-head-timeout", "nan"], "--http-head-timeout must be"),
        (["--apps", ".", "--fd-reserve", "-1"], "--fd-reserve must be"),
    ],
)
def test_bad_options(args: list[str], message: str) -> None:
    with pytest.raises(usage.UsageError, match=re.escape(message)):
        Options().parseOptions(args)


def test_help_explains_every_option() -> None:
    shown = subprocess.run(
        [str(BIN_DIR / "twistd"), "workerhost", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    for option in (
        *("--apps", "--runtime", "--locator", "--http", "--service-host", "--verbosity"),
        *("--http-max-connections", "--http-head-timeout", "--fd-reserve", "--launcher"),
    ):
        assert option in shown.stdout
    assert "SIGTERM" in shown.stdout
    assert "process (each worker a child process" in " ".join(shown.stdout.split())


def test_bad_command_line_and_busy_port_exit_nonzero_with_a_readable_line() -> None:
    bad = subprocess.run(
        [str(BIN_DIR / "twistd"), "-n", "--pidfile=", "workerhost"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0
    assert "--apps DIR is required" in (bad.stdout + bad.stderr).strip().splitlines()[-1]
    with socket.socket() as busy, short_tmpdir() as root:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        child = twistd(
            "workerhost",
            "--apps",
            str(APPS_DIR),
            "--runtime",
            str(root / "run"),
            "--locator",
            f"tcp:{port}:interface=127.0.0.1",
        ).start()
        assert child.wait() != 0
        assert re.search(
            r"workerhost: cannot listen on tcp:\d+.*Address already in use", child.output
        )


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_twistd_serves_the_example_apps_and_exits_0_on_sigterm() -> None:
    with short_tmpdir() as root:
        child = twistd(
            "workerhost",
            "--apps",
            str(APPS_DIR),
            "--runtime",
            str(root / "run"),
            "--locator",
            "tcp:0:interface=127.0.0.1",
            "--http",
            "tcp:0:interface=127.0.0.1",
            cwd=root,
        ).start()
        try:
            locator = int((await child.when(r"locator listening on tcp:127\.0\.0\.1:(\d+)"))[1])
            http = int((await child.when(r"HTTP front end listening on tcp:127\.0\.0\.1:(\d+)"))[1])
            service = await connect("echo", ("127.0.0.1", locator))
            try:
                channel = service.enqueue("echo")
                channel.tx.write(b"through twistd")
                channel.tx.close()
                assert await channel.rx.read_all() == b"through twistd"
            finally:
                service.close()
            body = await threads.deferToThread(_get, http, "/hello/")
            assert body == b"Hello, world!\n"
            pids = [int(m) for m in re.findall(r"ready \(pid (\d+)", child.output)]
            assert len(pids) == 2
            code = await threads.deferToThread(child.terminate, 30)
            assert code == 0, child.tail()
            assert "worker host stopped" in child.output
            assert child.output.count("exited with code 0") == 2
            for pid in pids:
                with pytest.raises(ProcessLookupError):
                    os.kill(pid, 0)
            assert not list((root / "run").glob("*.sock"))
        finally:
            child.kill()


def _get(port: int, path: str) -> bytes:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        connection.request("GET", path)
        return connection.getresponse().read()
    finally:
        connection.close()
