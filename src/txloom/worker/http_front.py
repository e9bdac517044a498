"""HTTP front end (placeholder until built)."""

from __future__ import annotations

from typing import Any


class HttpFront:
    def __init__(self, host: Any) -> None:
        raise NotImplementedError("the HTTP front end is not built yet")
