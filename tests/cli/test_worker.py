"""``txloom worker|rpc|streams ...`` against a real ``twistd workerhost`` (example apps).

Their successes are run by docs/operating.md's blocks (tests/test_docs.py); these are the
failures, and ``worker reload`` is tested with reloads in tests/worker/test_reload.py.
"""

from __future__ import annotations

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


@pytest.mark.parametrize(
    ("args", "status", "words"),
    [
        (["worker", "call", "nope", "ping"], 1, "no app 'nope'"),
        (["worker", "call", "echo", "nosuchevent"], 1, "no handler for event 'nosuchevent'"),
        (["worker", "apps", "--locator", "127.0.0.1:1"], 3, "no Locator at 127.0.0.1:1"),
        (["rpc", "list"], 3, "runs no RPC controller (--rpc)"),
        (["rpc", "call", "a", "T", "{not json"], 1, "REQUEST is not JSON"),
        (["streams", "post", "nosuch", "body"], 1, "no endpoint serves 'nosuch'"),
        (["streams", "post", "s", "--at", "tcp:127.0.0.1:1"], 3, "cannot connect to s"),
        (["streams", "post", "s", "--tag", "novalue"], 2, "--tag must be KEY=VALUE"),
    ],
)
def test_failures(locator: str, args: list[str], status: int, words: str) -> None:
    run = txloom(*args, env={"TXLOOM_LOCATOR": locator})
    assert run.returncode == status, run.stderr
    assert words in run.stderr and "Traceback" not in run.stderr
