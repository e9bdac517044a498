"""The store bench's C load generator speaks the store wire: built with the machine's C
compiler, it drives a real ``twistd storeserver`` and every write it counts is stored."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from support.processes import twistd

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no cc")
def test_loadgen_writes_facts_the_server_stores(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import store_bench  # a script, found on its own path
    finally:
        sys.path.remove(str(ROOT / "bench"))
    binary = store_bench.build_loadgen(tmp_path)
    assert binary is not None
    server = twistd(
        "storeserver", "--listen", "tcp:0:interface=127.0.0.1", "--data", str(tmp_path / "d")
    )
    with server.start():
        port = server.wait_for(r"listening on tcp:127\.0\.0\.1:(\d+)").group(1)
        run = subprocess.run(
            [str(binary), "127.0.0.1", port, "4", "0.3", "0.1"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        lines = run.stdout.split()
        assert lines[:2] == ["start", "stop"]
        acked = int(lines[lines.index("acked") + 1])
        assert acked > 0
        with socket.create_connection(("127.0.0.1", int(port))) as sock:
            stats = store_bench.rpc(sock, {"op": "stats"})
        # the writes of the warm-up and those cut off at the end are stored too
        assert stats["facts_written"] >= acked
        assert stats["last_seq"] == stats["facts_written"]
