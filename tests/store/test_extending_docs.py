"""The storage-backend section of docs/extending.md: its command line starts a store.

Its Python examples are run by tests/test_docs.py with the rest of the page.
"""

from __future__ import annotations

import re
from pathlib import Path

from support.processes import twistd

DOC = Path(__file__).resolve().parents[2] / "docs" / "extending.md"


def section() -> str:
    text = DOC.read_text()
    start = text.index("## Storage backends")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_the_command_line_example_starts_a_sqlite_store(tmp_path: Path) -> None:
    (command,) = re.findall(r"^twistd -n storeserver (.*)$", section(), flags=re.M)
    args = command.replace("var/", f"{tmp_path}/").split()
    server = twistd("storeserver", "--listen", "tcp:0:interface=127.0.0.1", *args, cwd=tmp_path)
    with server.start():
        server.wait_for(r"backend sqlite in .*facts\.db")
        server.wait_for(r"listening on tcp:127\.0\.0\.1:\d+")
        assert server.terminate() == 0
    assert (tmp_path / "facts.db").exists()
