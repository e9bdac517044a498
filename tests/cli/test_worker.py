"""``txloom worker ...`` against a real ``twistd workerhost`` serving the example apps."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from support.cli import txloom
from support.processes import twistd
from support.store import short_tempdir
from txloom.worker.examples import APPS_DIR

LISTENING = r"locator listening on tcp:127\.0\.0\.1:(\d+)"


@pytest.fixture(scope="module")
def locator() -> Iterator[str]:
    with short_tempdir() as runtime:
        child = twistd(
            "workerhost", "--apps", str(APPS_DIR), "--runtime", runtime,
            "--locator", "tcp:0:interface=127.0.0.1",
        )  # fmt: skip
        with child.start():
            yield "127.0.0.1:" + child.wait_for(LISTENING, timeout=30).group(1)
            assert child.terminate() == 0


def test_apps_status_call(locator: str) -> None:
    env = {"TXLOOM_LOCATOR": locator}
    run = txloom("worker", "apps", "--json", env=env)
    assert run.returncode == 0, run.stderr
    apps = {row["app"]: row for row in map(json.loads, run.stdout.splitlines())}
    assert set(apps) == {"echo", "hello"}
    assert apps["echo"]["state"] == "running"
    assert "echo" in txloom("worker", "apps", env=env).stdout

    run = txloom("worker", "call", "echo", "ping", env=env)
    assert (run.returncode, run.stdout) == (0, "pong"), run.stderr

    status = json.loads(txloom("worker", "status", "echo", "--json", env=env).stdout)
    assert status["counters"]["accepted"] >= 1 and status["queue"]["capacity"] > 0


@pytest.mark.parametrize(
    ("args", "status", "words"),
    [
        (["worker", "call", "nope", "ping"], 1, "no app 'nope'"),
        (["worker", "call", "echo", "nosuchevent"], 1, "no handler for event 'nosuchevent'"),
        (["worker", "apps", "--locator", "127.0.0.1:1"], 3, "no Locator at 127.0.0.1:1"),
    ],
)
def test_failures(locator: str, args: list[str], status: int, words: str) -> None:
    run = txloom(*args, env={"TXLOOM_LOCATOR": locator})
    assert run.returncode == status, run.stderr
    assert words in run.stderr and "Traceback" not in run.stderr
