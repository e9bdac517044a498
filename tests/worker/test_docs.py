"""The examples of docs/worker.md that need a harness of their own, against a real host.

An app written on the page and hosted from its own manifest, two client snippets with
top-level await (run as one coroutine), and the embedding example. The page's other
blocks run in tests/test_docs.py.
"""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from support.docs import blocks as doc_blocks
from support.workerhost import short_tmpdir
from txloom.worker.examples import APPS_DIR
from txloom.worker.host import WorkerHost

DOC = Path(__file__).resolve().parents[2] / "docs" / "worker.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def example(language: str, first_line: str) -> str:
    """The ``language`` block of the page that starts with ``first_line``."""
    found = [block for block in blocks(language) if block.startswith(first_line)]
    assert len(found) == 1, f"docs/worker.md should have one {language} block {first_line!r}"
    return found[0]


def test_every_example_marked_for_this_module_is_run_here() -> None:
    mine = [b for b in doc_blocks(DOC) if "tests/worker/test_docs.py" in b.marked("tested-by")]
    assert {block.text.splitlines()[0] for block in mine if block.language == "python"} == {
        "# myapp.py",
        "from txloom.worker.client import LocatorClient, LoggerClient, as_text, connect",
        'info = as_text(await svc.call("info"))',
        "from txloom.worker.examples import APPS_DIR",
    }


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_the_examples_run_against_a_real_host() -> None:
    with short_tmpdir() as root:
        apps = root / "apps"
        apps.mkdir()
        shutil.copy(APPS_DIR / "echo.json", apps)
        (apps / "myapp.py").write_text(example("python", "# myapp.py"))
        (apps / "myapp.toml").write_text(example("toml", "# apps/myapp.toml"))
        host = WorkerHost(apps, root / "run", locator="tcp:0:interface=127.0.0.1")
        host.startService()
        try:
            port = host.locator_address[1]

            def here(code: str) -> str:
                return code.replace("10053", str(port))

            from txloom.worker import errors
            from txloom.worker.client import as_text

            client = here(example("python", "from txloom.worker.client import"))
            info_example = example("python", 'info = as_text(await svc.call("info"))')
            # the two client snippets use top-level await: run them as one coroutine,
            # the second before the first one closes its service
            first, _, rest = client.partition("svc.close()")
            body = first + info_example + "svc.close()" + rest
            scope: dict[str, Any] = {"errors": errors, "as_text": as_text}
            source = "async def snippet():\n" + textwrap.indent(body, "    ")
            source += "\n    return info, endpoints, version, log\n"
            exec(compile(source, "docs/worker.md", "exec"), scope)
            info, endpoints, version, log = await scope["snippet"]()
            assert info["state"] == "running" and "backlog" in info["buffers"]
            assert version == 2 and endpoints
            log.close()

            embedding = example("python", "from txloom.worker.examples import APPS_DIR")
            embedding = embedding.replace("/tmp/txloom-run", str(root / "embedded"))
            scope = {}
            exec(compile(embedding, "docs/worker.md", "exec"), scope)
            assert isinstance(scope["service"], WorkerHost)
        finally:
            await host.stopService()
