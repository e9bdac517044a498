"""The store's own storage backends as extension factories (``--backend file|memory``).

Found through ``twisted/plugins/txloom_extensions.py`` exactly as a third-party backend
is (see docs/extending.md); each imports its implementation only when it builds one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.plugin import IPlugin
from zope.interface import implementer

from txloom.interfaces import IStorageBackendFactory
from txloom.store.config import (
    DEFAULT_READER_THREADS,
    DEFAULT_STORAGE_RETRY_MAX,
    FsyncPolicy,
)
from txloom.wire.crcjson import DEFAULT_MAX_FRAME_SIZE

if TYPE_CHECKING:
    from txloom.store.backend import StoreBackend

__all__ = ["FileBackendFactory", "MemoryBackendFactory", "file_backend", "memory_backend"]


@implementer(IPlugin, IStorageBackendFactory)
class FileBackendFactory:
    """WAL segments and snapshot files in ``--data``, with group-committed fsyncs."""

    name = "file"
    description = "WAL and snapshot files in --data; survives restarts and crashes"
    options = None

    def backend(self, reactor: Any, config: Any, options: Any) -> Any:
        return file_backend(
            reactor,
            config.data_dir,
            config.fsync,
            config.max_frame_size,
            reader_threads=config.reader_threads,
            retry_max=config.storage_retry_max,
        )


@implementer(IPlugin, IStorageBackendFactory)
class MemoryBackendFactory:
    """The file backend's rules over byte arrays: for tests and throw-away stores."""

    name = "memory"
    description = "same protocol and rules, nothing kept after exit"
    options = None

    def backend(self, reactor: Any, config: Any, options: Any) -> Any:
        return memory_backend(reactor, config.max_frame_size)


def file_backend(
    reactor: Any,
    path: str,
    fsync: FsyncPolicy | None = None,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    *,
    reader_threads: int = DEFAULT_READER_THREADS,
    retry_max: float = DEFAULT_STORAGE_RETRY_MAX,
) -> StoreBackend:
    """The durable backend: WAL and snapshot files in ``path``, written by one thread."""
    from txloom.store.backend import StoreBackend  # noqa: PLC0415 - not at plugin scan
    from txloom.store.directory import FileDirectory  # noqa: PLC0415

    return StoreBackend(
        reactor,
        lambda: FileDirectory(path),
        name="file",
        fsync=fsync,
        threaded=True,
        max_frame_size=max_frame_size,
        reader_threads=reader_threads,
        retry_max=retry_max,
    )


def memory_backend(reactor: Any, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> StoreBackend:
    """Facts in process memory, same semantics as ``file``, gone at exit."""
    from txloom.store.backend import StoreBackend  # noqa: PLC0415 - not at plugin scan
    from txloom.store.directory import MemoryDirectory  # noqa: PLC0415

    return StoreBackend(
        reactor,
        MemoryDirectory,
        name="memory",
        fsync=FsyncPolicy("never"),
        threaded=False,
        max_frame_size=max_frame_size,
    )
