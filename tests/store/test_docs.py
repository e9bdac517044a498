"""The Python examples of docs/store.md run, unchanged but for the port, against twistd."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from support.processes import twistd

DOC = Path(__file__).resolve().parents[2] / "docs" / "store.md"


def examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_page_has_the_examples_it_promises() -> None:
    code = "\n".join(examples())
    for needle in ("NetworkBackend", ".subscribe(", "StoreClient", "replay_pages"):
        assert needle in code


@pytest.mark.slow
def test_every_python_example_runs(tmp_path: Path) -> None:
    server = twistd(
        "storeserver", "--listen", "tcp:0:interface=127.0.0.1", "--data", str(tmp_path / "data")
    )
    with server.start():
        port = server.wait_for(r"listening on tcp:127\.0\.0\.1:(\d+)").group(1)
        for n, example in enumerate(examples()):
            code = example.replace("127.0.0.1:7400", f"127.0.0.1:{port}").replace(
                "port=7400", f"port={port}"
            )
            run = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
            )
            assert run.returncode == 0, f"example {n} failed:\n{code}\n{run.stderr[-2000:]}"
        assert server.terminate() == 0
