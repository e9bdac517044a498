"""``twistd --logger txloom.logs.json``: every line a JSON object, failures with tracebacks."""

from __future__ import annotations

import io
import json
from pathlib import Path

from twisted.logger import Logger, LogLevel

from support.processes import BIN_DIR, ChildProcess
from txloom.logs import json as json_observer


def test_events_become_json_lines_with_their_fields_and_tracebacks() -> None:
    out = io.StringIO()
    log = Logger(namespace="txloom.example", observer=json_observer(out))
    log.info("stored {count} facts in {store}", count=3, store="tasks", blob=object())
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        log.failure("could not divide")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["message"] == "stored 3 facts in tasks"
    assert (first["level"], first["namespace"]) == ("info", "txloom.example")
    assert (first["count"], first["store"]) == (3, "tasks")
    assert "blob" not in first  # not a plain JSON value
    assert first["time"].endswith("+00:00")
    assert second["level"] == LogLevel.critical.name
    assert "ZeroDivisionError" in second["traceback"]


def test_twistd_logs_json_lines(tmp_path: Path) -> None:
    argv = [
        str(BIN_DIR / "twistd"), "-n", "--pidfile=", "--logger", "txloom.logs.json",
        "storeserver", "--listen", "tcp:0:interface=127.0.0.1", "--data", str(tmp_path),
    ]  # fmt: skip
    with ChildProcess(argv).start() as server:
        server.wait_for(r'"message":"storeserver listening on tcp:127\.0\.0\.1:\d+"')
        assert server.terminate() == 0
    events = [json.loads(line) for line in server.lines]
    assert any(e["namespace"] == "txloom.store.service.StoreService" for e in events)
    assert all({"time", "level", "namespace", "message"} <= set(e) for e in events)
