"""Reloading the apps directory of a running host: what changes, and SIGHUP to ask for it.

A reload compares the manifests now in the apps directory with the running apps, by
name: a new name is added, a missing one is drained and removed, a different manifest
rolls that app's workers (``WorkerPool.roll``), and an unchanged app is not touched at
all, so its running sessions never notice. If any manifest cannot be read, nothing
changes: the reason is reported and the apps running before go on as they were, since a
half-applied set (one app gone because its file has a typo) is worse than a stale one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

from txloom.worker.manifest import AppManifest, ManifestError


class ReloadError(Exception):
    """The apps directory cannot be used as it is now; the message says why, in one line."""


@dataclasses.dataclass(frozen=True)
class ReloadPlan:
    """What a reload does, by app name."""

    added: tuple[AppManifest, ...] = ()
    changed: tuple[AppManifest, ...] = ()
    removed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()

    def summary(self) -> dict[str, list[str]]:
        """Names per kind of change (what ``txloom worker reload`` prints)."""
        return {
            "added": sorted(m.name for m in self.added),
            "changed": sorted(m.name for m in self.changed),
            "removed": sorted(self.removed),
            "unchanged": sorted(self.unchanged),
        }


def plan_reload(
    running: Mapping[str, AppManifest],
    found: Sequence[AppManifest],
    problems: Sequence[ManifestError],
) -> ReloadPlan:
    """The plan from the running apps' manifests to those ``load_apps`` found.

    Raises ``ReloadError`` if any manifest had a problem: then nothing is to change.
    """
    if problems:
        reasons = "; ".join(str(p) for p in problems)
        raise ReloadError(f"reload refused, running apps kept: {reasons}")
    names = {m.name for m in found}
    return ReloadPlan(
        added=tuple(m for m in found if m.name not in running),
        changed=tuple(m for m in found if m.name in running and running[m.name] != m),
        removed=tuple(sorted(set(running) - names)),
        unchanged=tuple(sorted(m.name for m in found if running.get(m.name) == m)),
    )


class ReloadOnHangup(Service):
    """SIGHUP runs ``reload`` on the reactor instead of ending the process.

    ``reload`` reports its own outcome; a refused reload is logged here, in one line.
    """

    log = Logger()

    def __init__(self, reactor: Any, reload: Callable[[], object]) -> None:
        self.reactor = reactor
        self.reload = reload
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        self.reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        if self.running:
            self._previous = signal.signal(signal.SIGHUP, self._received)

    def stopService(self) -> None:
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None

    def _received(self, number: int, frame: Any) -> None:
        self.reactor.callFromThread(self._reload)

    def _reload(self) -> None:
        self.log.info("Received SIGHUP, reloading the apps directory.")
        with contextlib.suppress(ReloadError):  # the host has logged why
            self.reload()
