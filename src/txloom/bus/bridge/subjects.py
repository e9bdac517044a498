"""NATS subjects of bridged message types (kept apart so the command line can check them
without importing the NATS client)."""

from __future__ import annotations

import re

__all__ = ["valid_subject"]

_NOT_IN_SUBJECTS = re.compile(r"[\s*>]")


def valid_subject(subject: str) -> bool:
    """A literal NATS subject: dot-separated non-empty tokens without spaces, '*' or '>'."""
    return all(tok and not _NOT_IN_SUBJECTS.search(tok) for tok in subject.split("."))
