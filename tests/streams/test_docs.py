"""The Python examples of docs/streams.md (and its section of docs/extending.md) run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from support.processes import free_port, twistd
from support.workerhost import short_tmpdir

DOCS = Path(__file__).resolve().parents[2] / "docs"


def examples(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)


def run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"example failed:\n{code}\n{done.stderr[-3000:]}"
    return done.stdout


def test_server_and_client_example_runs() -> None:
    out = run(examples("streams.md")[0])
    assert "b'red 2'" in out and "b'green 0'" in out


def test_resolver_example_of_extending_runs() -> None:
    (code,) = [e for e in examples("extending.md") if "FileResolver" in e]
    run(code)


@pytest.mark.slow
def test_locator_and_facts_examples_against_the_all_in_one_node(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("store", "locator", "http", "streams", "bus")}
    with short_tmpdir() as runtime:
        node = twistd(
            "txloom",
            "--data", str(tmp_path),
            "--store-listen", f"tcp:{ports['store']}:interface=127.0.0.1",
            "--locator", f"tcp:{ports['locator']}:interface=127.0.0.1",
            "--http", f"tcp:{ports['http']}:interface=127.0.0.1",
            "--streams", f"tcp:{ports['streams']}:interface=127.0.0.1",
            "--bus-listen", f"tcp:{ports['bus']}:interface=127.0.0.1",
            "--runtime", str(runtime),
            "--status", "none",
        )  # fmt: skip
        with node.start():
            node.wait_for(r"stream services listening on tcp:127\.0\.0\.1:\d+: facts")
            node.wait_for(r"worker host ready")
            for example in examples("streams.md")[1:]:
                code = example.replace("127.0.0.1:10053", f"127.0.0.1:{ports['locator']}")
                out = run(code.replace("127.0.0.1:7400", f"127.0.0.1:{ports['store']}"))
                assert "Traceback" not in out
            assert "orders ['o0', 'o1', 'o2']" in out
            assert node.terminate() == 0, node.tail()
