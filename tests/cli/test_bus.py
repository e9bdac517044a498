"""``txloom bus ...`` against a real ``twistd busnode``."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from support.cli import txloom, txloom_child
from support.processes import twistd
from support.waiting import until_blocking

LISTENING = r"listening on tcp:127\.0\.0\.1:(\d+)"


@pytest.fixture(scope="module")
def node() -> Iterator[str]:
    # --relay: what one command publishes reaches the other commands attached to the node
    child = twistd("busnode", "--listen", "tcp:0:interface=127.0.0.1", "--relay")
    with child.start():
        port = child.wait_for(LISTENING, timeout=30).group(1)
        yield f"ws://127.0.0.1:{port}/meta/message"
        assert child.terminate() == 0


def peers(node: str) -> int:
    """Peers of the node besides the ``stats`` command asking."""
    run = txloom("bus", "stats", "--json", "--node", node)
    assert run.returncode == 0, run.stderr
    return len(json.loads(run.stdout)["peers"]) - 1


def test_sub_prints_what_pub_sends(node: str) -> None:
    with txloom_child(["bus", "sub", "greeting", "--count", "1", "--node", node]) as sub:
        until_blocking(lambda: peers(node) >= 1, what="the subscriber to join")
        run = txloom("bus", "pub", "--node", node, "other", "not for the subscriber")
        assert run.returncode == 0, run.stderr
        run = txloom("bus", "pub", "--node", node, "greeting", "hello")
        assert run.returncode == 0, run.stderr
        line = json.loads(sub.wait_for(r'"type":"greeting"').string)
        assert line["data"] == "hello" and line["uuid"]
        assert sub.wait() == 0
        assert "not for the subscriber" not in sub.output


def test_an_unreachable_node_is_status_3() -> None:
    run = txloom("bus", "stats", "--node", "ws://127.0.0.1:1/meta/message", "--timeout", "0.5")
    assert run.returncode == 3
    assert "no connection to ws://127.0.0.1:1/meta/message" in run.stderr
