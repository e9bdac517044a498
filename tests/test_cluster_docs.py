"""docs/cluster.md, run as written (ports aside): its nats-server configurations, the shell
lines that start the three nodes and two store servers, and its Python example."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from support.nats import nats_server_binary
from support.processes import BIN_DIR, ChildProcess, free_port

DOC = Path(__file__).resolve().parents[1] / "docs" / "cluster.md"
#: The ports the page uses (NATS clients, routes, store servers).
PORTS = ("4222", "4223", "4224", "6222", "6223", "6224", "7400", "7401")


def section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_the_page_has_its_sections() -> None:
    text = DOC.read_text()
    for title in ("Store on JetStream", "Worker hosts as a cluster", "RPC controllers as a fleet"):
        assert f"\n## {title}\n" in text


@pytest.mark.slow
def test_the_store_walkthrough_runs(tmp_path: Path) -> None:
    text = section("Store on JetStream")
    ports = {port: str(free_port()) for port in PORTS}

    def local(s: str) -> str:
        return re.sub(r"\b(" + "|".join(PORTS) + r")\b", lambda m: ports[m.group(1)], s)

    configs = blocks(text, "conf")
    assert len(configs) == 3
    for config in configs:
        name = config.splitlines()[0].removeprefix("# ").strip()
        (tmp_path / name).write_text(local(config))
    (shell,) = blocks(text, "sh")
    children: list[ChildProcess] = []
    try:
        for line in shell.strip().splitlines():
            argv = shlex.split(local(line).removesuffix("&"))
            if argv[0] == "nats-server":
                argv[0] = nats_server_binary()
                ready = r"Server is ready"
            else:
                assert argv[0] == "twistd"
                argv[0] = str(BIN_DIR / "twistd")
                ready = r"storeserver listening on"
            child = ChildProcess(argv, cwd=tmp_path).start()
            children.append(child)
            if argv[0] != str(BIN_DIR / "twistd"):
                child.wait_for(ready, timeout=30)
        for child in children[3:]:
            child.wait_for(r"storeserver listening on", timeout=60)
        (example,) = blocks(text, "python")
        run = subprocess.run(
            [sys.executable, "-c", local(example)], capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, run.stderr[-3000:]
        key, seq = run.stdout.split()
        assert key == "o-1" and int(seq) >= 1
    finally:
        for child in children:
            child.kill()
