"""The store's own storage backends as extension factories (``--backend file|memory``).

Found through ``twisted/plugins/txloom_extensions.py`` exactly as a third-party backend
is (see docs/extending.md); each imports its implementation only when it builds one.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

from txloom.extensions import positive
from txloom.interfaces import IStorageBackendFactory
from txloom.store.config import (
    DEFAULT_READER_THREADS,
    DEFAULT_STORAGE_RETRY_MAX,
    FsyncPolicy,
)
from txloom.wire.crcjson import DEFAULT_MAX_FRAME_SIZE

if TYPE_CHECKING:
    from txloom.store.backend import StoreBackend

__all__ = [
    "FileBackendFactory",
    "JetStreamBackendFactory",
    "JetStreamOptions",
    "MemoryBackendFactory",
    "file_backend",
    "jetstream_backend",
    "memory_backend",
]

_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")


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


class JetStreamOptions(usage.Options):
    """``--backend-option`` words of the jetstream backend (``twistd storeserver`` also
    takes ``--nats`` and ``--replicas`` for the two that every deployment sets)."""

    optParameters = [
        ["nats", None, "nats://127.0.0.1:4222", "NATS server URLs, comma-separated."],
        [
            "replicas",
            None,
            1,
            "Replicas of the streams when this server creates them.",
            positive(int),
        ],
        ["prefix", None, "txloom", "Name prefix of the streams and their subjects."],
        ["token", None, None, "NATS authentication token."],
        ["creds", None, None, "NATS credentials file (JWT and NKey seed)."],
        ["tls-ca", None, None, "CA bundle that NATS server certificates are checked against."],
        ["tls-cert", None, None, "Client certificate for NATS (TLS client authentication)."],
        ["tls-key", None, None, "Private key of --tls-cert."],
        [
            "retry-for",
            None,
            30.0,
            "Seconds a write without a JetStream acknowledgement is retried (same message "
            "id, stored once) before it is answered storage_failed.",
            positive(float),
        ],
    ]

    def postOptions(self) -> None:
        from txloom.cluster.connection import parse_servers  # noqa: PLC0415 - imports nats

        try:
            self["servers"] = list(parse_servers(self["nats"]))
        except ValueError as e:
            raise usage.UsageError(f"nats: {e}") from None
        if not _PREFIX.match(self["prefix"]):
            raise usage.UsageError(f"prefix {self['prefix']!r}: letters, digits, '-' and '_' only")
        if (self["tls-cert"] is None) != (self["tls-key"] is None):
            raise usage.UsageError("tls-cert and tls-key go together")


@implementer(IPlugin, IStorageBackendFactory)
class JetStreamBackendFactory:
    """Facts in a NATS JetStream stream, shared by every server pointed at it."""

    name = "jetstream"
    description = (
        "a NATS JetStream stream (--nats URLS, --replicas N); several servers may share it"
    )
    options = JetStreamOptions

    def backend(self, reactor: Any, config: Any, options: JetStreamOptions | None) -> Any:
        return jetstream_backend(
            reactor,
            options if options is not None else _parsed(JetStreamOptions, []),
            reader_threads=config.reader_threads,
        )


def jetstream_backend(
    reactor: Any, options: Any, *, reader_threads: int = DEFAULT_READER_THREADS
) -> Any:
    """A ``JetStreamBackend`` from parsed ``JetStreamOptions``."""
    from txloom.store.jetstream.backend import JetStreamBackend  # noqa: PLC0415 - on demand
    from txloom.store.jetstream.link import LinkSettings  # noqa: PLC0415

    settings = LinkSettings(
        servers=options["servers"],
        replicas=options["replicas"],
        prefix=options["prefix"],
        token=options["token"],
        creds=options["creds"],
        tls_ca=options["tls-ca"],
        tls_cert=options["tls-cert"],
        tls_key=options["tls-key"],
        retry_for=options["retry-for"],
    )
    return JetStreamBackend(reactor, settings, reader_threads=reader_threads)


def _parsed(options_class: type[usage.Options], argv: list[str]) -> usage.Options:
    options = options_class()
    options.parseOptions(argv)
    return options
