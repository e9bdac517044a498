"""The factories this distribution offers txloom: cheap to import (the dropin imports this
module whenever Twisted scans plugins); each builds its extension on demand."""

from __future__ import annotations

import os
from typing import Any

from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

from txloom.interfaces import IStorageBackendFactory

__all__ = ["SQLiteBackendFactory", "SQLiteOptions"]


class SQLiteOptions(usage.Options):
    """``--backend-option`` words of the sqlite backend."""

    optParameters = [
        ["path", None, None, "The database file (default: facts.sqlite3 in --data)."],
    ]


@implementer(IPlugin, IStorageBackendFactory)
class SQLiteBackendFactory:
    name = "sqlite"
    description = "one SQLite database in WAL mode, an example from txloom-extras"
    options = SQLiteOptions

    def backend(self, reactor: Any, config: Any, options: SQLiteOptions | None) -> Any:
        from txloom_extras.sqlite_backend import SQLiteBackend  # noqa: PLC0415 - on demand

        path = options["path"] if options is not None else None
        if path is None:
            path = os.path.join(config.data_dir, "facts.sqlite3")
        return SQLiteBackend(
            reactor, path, fsync=config.fsync, reader_threads=config.reader_threads
        )
