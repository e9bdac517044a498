"""Factories of the worker launchers txloom ships, found as Twisted plugins.

``twistd workerhost --launcher NAME`` chooses among every installed
``IWorkerLauncherFactory`` (see ``txloom.extensions``); txloom's own is ``process``. A
factory stays cheap to import: it imports its launcher only when it builds one.
"""

from __future__ import annotations

from typing import Any

from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

from txloom.interfaces import IWorkerLauncher, IWorkerLauncherFactory


@implementer(IPlugin, IWorkerLauncherFactory)
class ProcessLauncherFactory:
    """Builds ``ProcessLauncher``: each worker a child process leading its own session."""

    name = "process"
    description = "each worker a child process of the host, in a process group of its own"
    options: type[usage.Options] | None = None

    def launcher(self, reactor: Any, options: usage.Options | None) -> IWorkerLauncher:
        from txloom.worker.process import ProcessLauncher  # noqa: PLC0415 - cheap dropin

        return ProcessLauncher(reactor)
