"""Every Python example of docs/rpc.md runs, unchanged, and prints what the page says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "rpc.md"


def examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


EXPECTED = [
    ["Pong(text='HELLO')", "{'agent-1': Pong(text='ALL')}", "error code: not_found"],
    ["'lp-1': b'db-1: up 3 days'", "'hb-1': b'db-1: up 3 days'"],
    ["b'agent-host-1'"],
    ["hello, world", "UNAVAILABLE"],
    ["own thread {'agent-1': 'hello, epoll'}"],
    ["Echo(text='desserts')"],
]


def test_the_page_has_one_example_per_transport() -> None:
    code = "\n".join(examples())
    for needle in ("StreamServerTransport", '"longpoll"', '"heartbeat"', '["grpc"]', "aio"):
        assert needle in code
    assert len(examples()) == len(EXPECTED)


@pytest.mark.parametrize("n", range(len(EXPECTED)))
def test_example_runs(n: int) -> None:
    run = subprocess.run(
        [sys.executable, "-c", examples()[n]], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, f"example {n} failed:\n{run.stderr[-3000:]}"
    for text in EXPECTED[n]:
        assert text in run.stdout, run.stdout
