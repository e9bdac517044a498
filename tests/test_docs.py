"""README.md and every docs/*.md page, run as written (the markers: tests/support/docs.py).

Each page runs top to bottom in a directory of its own, as a reader would type it: the
virtualenv's ``bin`` first on PATH (an activated virtualenv), ``.venv`` pointing at it
(for the ``.venv/bin/...`` spelling), python blocks as scripts, sh blocks with ``bash -e``.
Only the port numbers change: each well-known port of the project is replaced, all over
the page, by a free one, and the ``TXLOOM_*`` variables point at those, so that a page
never collides with anything else running on the machine. A block passes when it exits
0 without a traceback and prints what its ``expect`` markers say.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from support.docs import ROOT, Block, blocks, pages
from support.processes import BIN_DIR, ChildProcess, free_port, twistd
from support.workerhost import short_tmpdir

#: The project's well-known ports, as the pages spell them.
PORTS = (7300, 7301, 7400, 7401, 7402, 7410, 8080, 8081, 8082, 9080, 9400, 10053)
_PORT = re.compile(r"(?<![\d.])(" + "|".join(map(str, PORTS)) + r")\b")

#: How long one block may run (s): an upper bound for a broken run, not a pace.
BLOCK_TIMEOUT = 120


def _store(ports: dict[int, int], workdir: Path, runtime: Path) -> list[str]:
    return ["storeserver", "--listen", f"tcp:{ports[7400]}:interface=127.0.0.1",
            "--data", str(workdir / "store-data")]  # fmt: skip


def _workerhost(ports: dict[int, int], workdir: Path, runtime: Path) -> list[str]:
    from txloom.worker.examples import APPS_DIR

    return ["workerhost", "--apps", str(APPS_DIR), "--runtime", str(runtime),
            "--locator", f"tcp:{ports[10053]}:interface=127.0.0.1",
            "--http", f"tcp:{ports[8080]}:interface=127.0.0.1"]  # fmt: skip


def _node(ports: dict[int, int], workdir: Path, runtime: Path) -> list[str]:
    return ["txloom", "--data", str(workdir / "node-data"), "--runtime", str(runtime),
            "--store-listen", f"tcp:{ports[7400]}:interface=127.0.0.1",
            "--locator", f"tcp:{ports[10053]}:interface=127.0.0.1",
            "--http", f"tcp:{ports[8080]}:interface=127.0.0.1",
            "--streams", f"tcp:{ports[7410]}:interface=127.0.0.1",
            "--bus-listen", f"tcp:{ports[8081]}:interface=127.0.0.1",
            "--rpc", f"tcp:{ports[7300]}:interface=127.0.0.1",
            "--status", f"tcp:{ports[9400]}:interface=127.0.0.1"]  # fmt: skip


#: What ``needs``/``service`` markers may name: the twistd arguments, and the log lines
#: that say it is ready.
SERVICES: dict[str, tuple[Callable[[dict[int, int], Path, Path], list[str]], list[str]]] = {
    "store": (_store, [r"listening on tcp:127\.0\.0\.1:\d+"]),
    "workerhost": (_workerhost, [r"worker host ready"]),
    "node": (_node, [r"worker host ready", r"stream services listening"]),
}


def test_every_page_and_marker_is_understood() -> None:
    found = pages()
    assert ROOT / "README.md" in found and ROOT / "docs" / "operating.md" in found
    for page in found:
        for block in blocks(page):  # raises on an unknown marker
            for name in block.marked("needs") + block.marked("service"):
                assert name in SERVICES, f"{block.where}: no service {name!r} ({list(SERVICES)})"
            for path in block.marked("tested-by"):
                test = ROOT / path
                assert test.is_file(), f"{block.where}: tested-by {path}: no such file"
                assert page.name in test.read_text(), f"{block.where}: {path} never names it"
            if block.marked("expect"):
                assert block.runs, f"{block.where}: 'expect' on a block that is not run"


def _local(ports: dict[int, int]) -> Callable[[str], str]:
    return lambda text: _PORT.sub(lambda m: str(ports[int(m[1])]), text)


def _kill_daemons(directory: Path) -> None:
    """Daemons a page started with ``--pidfile`` and did not stop (a failed block)."""
    for pidfile in directory.glob("*.pid"):
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)


def _run(block: Block, code: str, workdir: Path, env: dict[str, str]) -> str:
    if block.language == "python":
        script = workdir / f"doc_block_{block.line}.py"
        script.write_text(code)
        argv = [sys.executable, str(script)]
    else:
        argv = ["bash", "-e", "-c", code]
    try:
        run = subprocess.run(
            argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{block.where} still running after {BLOCK_TIMEOUT}s:\n{code}") from e
    output = run.stdout + run.stderr
    report = f"{block.where}:\n{code}\nstdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}"
    assert run.returncode == 0, f"exit status {run.returncode}: {report}"
    assert "Traceback" not in output, f"a traceback: {report}"
    for text in block.marked("expect"):
        assert text in output, f"{text!r} not in the output of {report}"
    return output


@pytest.mark.slow
@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_page_runs_as_written(page: Path, tmp_path: Path) -> None:
    page_blocks = blocks(page)
    if not any(b.runs or b.marked("file") for b in page_blocks):
        pytest.skip("nothing on the page to run")
    ports = {port: free_port() for port in PORTS}
    local = _local(ports)
    (tmp_path / ".venv").symlink_to(BIN_DIR.parent)
    env = {
        **os.environ,
        "PATH": f"{BIN_DIR}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": str(BIN_DIR.parent),
        "TXLOOM_STORE": f"127.0.0.1:{ports[7400]}",
        "TXLOOM_BUS": f"ws://127.0.0.1:{ports[8081]}/meta/message",
        "TXLOOM_LOCATOR": f"127.0.0.1:{ports[10053]}",
    }
    env.pop("NOTIFY_SOCKET", None)
    services: dict[str, ChildProcess] = {}
    with short_tmpdir() as runtime:
        try:
            for block in page_blocks:
                for name in block.marked("service") + block.marked("needs"):
                    if name not in services:
                        arguments, ready = SERVICES[name]
                        child = twistd(*arguments(ports, tmp_path, runtime), cwd=tmp_path)
                        services[name] = child.start()
                        for pattern in ready:
                            child.wait_for(pattern, timeout=60)
                for path in block.marked("file"):
                    target = tmp_path / path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(local(block.text))
                if block.runs:
                    _run(block, local(block.text), tmp_path, env)
        finally:
            _kill_daemons(tmp_path)
            for name, child in services.items():
                assert child.terminate(60) == 0, f"{name} did not stop cleanly:\n{child.tail()}"
