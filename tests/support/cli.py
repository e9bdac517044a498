"""Running the ``txloom`` console script as users do: a real process, its output, its status."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

from support.processes import BIN_DIR, ChildProcess

TXLOOM = str(BIN_DIR / "txloom")


def txloom(
    *args: str, input: str | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``txloom ARGS`` to the end; stdout, stderr and the exit status are in the result."""
    return subprocess.run(
        [TXLOOM, *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=None if input is not None else subprocess.DEVNULL,
    )


def txloom_child(args: Sequence[str]) -> ChildProcess:
    """``txloom ARGS`` as a child whose lines a test waits for (``tail``, ``sub``)."""
    return ChildProcess([TXLOOM, *args])
