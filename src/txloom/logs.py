"""``twistd --logger txloom.logs.json``: one JSON object per log event, one per line.

Log shippers (journald's JSON export, Vector, Fluent Bit, Loki's promtail) read JSON
lines without a parser per format. Each line has ``time`` (RFC 3339, UTC), ``level``,
``namespace`` (the logger: module and class), ``system``, ``message`` (the event
formatted as twistd's text log would show it), the event's own fields when they are
plain JSON values, and ``traceback`` for a logged failure.

The lines go to standard output, which is where a service manager collects them; set
``TXLOOM_LOG_FILE`` to write them to a file instead (appended, for daemon mode).
"""

from __future__ import annotations

import json as jsonlib
import os
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

from twisted.logger import FileLogObserver, formatEvent

__all__ = ["LOG_FILE_VARIABLE", "event_line", "json"]

#: Environment variable naming a file for the lines (default: standard output).
LOG_FILE_VARIABLE = "TXLOOM_LOG_FILE"

_PLAIN = (str, int, float, bool, type(None))


def event_line(event: dict[str, Any]) -> str:
    """One event as a JSON line (with its newline)."""
    level = event.get("log_level")
    line: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), timezone.utc).isoformat(),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", "-"),
        "system": event.get("log_system", "-"),
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in line or not isinstance(key, str):
            continue
        if isinstance(value, _PLAIN):
            line[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        line["traceback"] = failure.getTraceback()
    return jsonlib.dumps(line, ensure_ascii=False, default=str, separators=(",", ":")) + "\n"


def json(stream: TextIO | None = None) -> FileLogObserver:
    """The observer ``--logger txloom.logs.json`` asks for (the name is the option's)."""
    if stream is None:
        path = os.environ.get(LOG_FILE_VARIABLE)
        stream = open(path, "a", encoding="utf-8") if path else sys.stdout  # noqa: SIM115
    return FileLogObserver(stream, event_line)
