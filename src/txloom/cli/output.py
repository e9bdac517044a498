"""How every ``txloom`` subcommand talks back: exit codes, JSON lines, errors, progress.

A shell script reads a command by its exit status and by lines it can parse, so both are
fixed here once: one JSON object per line for data (``--json`` for summaries), one line on
stderr for an error, and a progress bar only where a person is watching (stderr is a
terminal) unless asked for one.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any, TextIO

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "CommandFailed",
    "Progress",
    "print_fields",
    "write_json_line",
]

#: The command did what it was asked.
EXIT_OK = 0
#: The server answered with an error, or the input was refused.
EXIT_FAILED = 1
#: The command line was wrong (argparse's own status).
EXIT_USAGE = 2
#: The server could not be reached (not running, wrong address, timed out).
EXIT_UNAVAILABLE = 3


class CommandFailed(Exception):
    """Ends a subcommand with one line on stderr and ``code`` as the exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def write_json_line(obj: Any, out: TextIO | None = None) -> None:
    """One compact JSON object and a newline, flushed: a reader at the other end of a pipe
    sees each line as soon as it is written (``tail`` runs for hours)."""
    stream = out if out is not None else sys.stdout
    stream.write(json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n")
    stream.flush()


def print_fields(fields: Mapping[str, Any], as_json: bool, out: TextIO | None = None) -> None:
    """A summary: one JSON object with ``--json``, else aligned ``name: value`` lines."""
    stream = out if out is not None else sys.stdout
    if as_json:
        write_json_line(dict(fields), stream)
        return
    width = max((len(k) for k in fields), default=0)
    for name, value in fields.items():
        text = json.dumps(value) if isinstance(value, dict | list) else value
        stream.write(f"{name + ':':<{width + 1}} {text}\n")
    stream.flush()


class Progress:
    """A progress bar on stderr (tqdm) when a person watches, else nothing at all.

    ``enabled`` None means "if stderr is a terminal": piped or redirected runs stay quiet,
    so their stderr holds only errors.
    """

    def __init__(self, description: str, total: int | None, enabled: bool | None) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty()
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm  # noqa: PLC0415 - only where a bar is shown

            self._bar = tqdm(
                total=total, desc=description, unit="fact", file=sys.stderr, dynamic_ncols=True
            )

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
