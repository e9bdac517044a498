"""``--status ENDPOINT``: the one option every txloom plugin shares for its status site."""

from __future__ import annotations

from typing import Any

from twisted.python import usage

__all__ = ["STATUS_HELP", "status_option", "valid_status_endpoint"]

STATUS_HELP = (
    "Serve /healthz, /readyz and /metrics (Prometheus) over HTTP on this endpoint, "
    "e.g. tcp:9400:interface=127.0.0.1"
)


def status_option(default: str | None = None) -> list[Any]:
    """The ``optParameters`` entry (off unless given, for the single plugins)."""
    text = STATUS_HELP + ("; 'none' switches it off." if default else " (off unless given).")
    return ["status", None, default, text]


def valid_status_endpoint(value: str | None) -> str | None:
    """The endpoint, None for off; ``UsageError`` naming the option for a bad one."""
    if value is None or value == "none":
        return None
    from twisted.internet import reactor  # noqa: PLC0415 - only to parse the endpoint
    from twisted.internet.endpoints import serverFromString  # noqa: PLC0415

    try:
        serverFromString(reactor, value)
    except (ValueError, TypeError, KeyError) as e:
        raise usage.UsageError(f"--status {value!r}: {e}") from None
    return value
