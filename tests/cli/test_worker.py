"""``txloom worker ...`` against a real ``twistd workerhost`` serving the example apps.

``apps``, ``status`` and ``call`` succeeding are run by docs/operating.md's test
(tests/test_operating_docs.py); these are the failures.
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
    ],
)
def test_failures(locator: str, args: list[str], status: int, words: str) -> None:
    run = txloom(*args, env={"TXLOOM_LOCATOR": locator})
    assert run.returncode == status, run.stderr
    assert words in run.stderr and "Traceback" not in run.stderr
