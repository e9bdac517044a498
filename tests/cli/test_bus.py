"""``txloom bus ...`` against a real ``twistd busnode``.

Publishing, subscribing, a reply and the node's status are run by docs/operating.md's
test (tests/test_operating_docs.py); these are the failures.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.cli import txloom
from support.processes import twistd

LISTENING = r"listening on tcp:127\.0\.0\.1:(\d+)"


@pytest.fixture(scope="module")
def node() -> Iterator[str]:
    child = twistd("busnode", "--listen", "tcp:0:interface=127.0.0.1")
    with child.start():
        port = child.wait_for(LISTENING, timeout=30).group(1)
        yield f"ws://127.0.0.1:{port}/meta/message"
        assert child.terminate() == 0


def test_an_unreachable_node_is_status_3() -> None:
    run = txloom("bus", "stats", "--node", "ws://127.0.0.1:1/meta/message", "--timeout", "0.5")
    assert run.returncode == 3
    assert "no connection to ws://127.0.0.1:1/meta/message" in run.stderr


def test_no_reply_and_a_bad_url_are_one_line(node: str) -> None:
    run = txloom("bus", "pub", "--node", node, "--reply", "--timeout", "1", "nobody.answers")
    assert (run.returncode, run.stdout) == (1, "")
    assert run.stderr == "txloom bus pub: no reply within 1.0 s\n"
    run = txloom("bus", "stats", "--node", "http://127.0.0.1:1/")
    assert run.returncode == 1 and run.stderr.startswith("txloom bus stats: --node: ")
