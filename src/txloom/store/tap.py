"""``twistd storeserver``: command line options and ``makeService``.

    twistd -n storeserver                                  # TCP 127.0.0.1:7400, ./var/store
    twistd -n storeserver --listen tcp:7400 --listen unix:/run/txloom/store.sock:lockfile=1
    twistd -n storeserver --fsync interval:20 --data /srv/facts
    twistd -n storeserver --backend memory --max-connections 256

An all-in-one node builds the store on defaults with
``makeService(Options().parseOptions(["--data", DIR]) ...)``: ``Options()`` parsed with
``["--data", DIR]`` then ``makeService(options)``.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from txloom import extensions, systemd
from txloom.config import PluginOptions
from txloom.interfaces import IStorageBackendFactory
from txloom.shutdown import CleanExitOnSignal
from txloom.status.options import status_option, valid_status_endpoint
from txloom.status.site import StatusService
from txloom.store.config import (
    DEFAULT_AUTH_TIMEOUT,
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_FRAME_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_LISTEN,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_MAX_PARTIAL_BYTES,
    DEFAULT_MAX_PIPELINE,
    DEFAULT_MAX_UNAUTHENTICATED,
    DEFAULT_OVERFLOW_CLOSE_TIMEOUT,
    DEFAULT_READER_THREADS,
    DEFAULT_STORAGE_RETRY_MAX,
    DEFAULT_SUBSCRIBER_MAX_BYTES,
    DEFAULT_SUBSCRIBER_MAX_EVENTS,
    FsyncPolicy,
    SlowSubscriberPolicy,
    StoreConfig,
)
from txloom.store.service import StoreService
from txloom.wire.crcjson import FRAME_OVERHEAD

__all__ = ["Options", "makeService"]

#: The file backend's directory unless --data says otherwise.
DEFAULT_DATA_DIR = os.path.join(".", "var", "store")

#: Frames smaller than this could not carry a fact with its envelope.
MIN_FRAME_SIZE = 1024


def _positive(kind: type, name: str, what: str) -> Any:
    """A coercer for ``--name`` that accepts only numbers above 0."""

    def coerce(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise ValueError(f"--{name} must be {what}, not {value!r}") from None
        if number <= 0:
            raise ValueError(f"--{name} must be above 0")
        return number

    coerce.coerceDoc = f"{what[0].upper()}{what[1:]}, above 0."  # type: ignore[attr-defined]
    return coerce


def _positive_int(name: str) -> Any:
    return _positive(int, name, "a whole number")


def _positive_float(name: str) -> Any:
    return _positive(float, name, "a number of seconds")


class Options(PluginOptions):
    config_section = "store"

    synopsis = "[--listen ENDPOINT]... [--data DIR] [--backend NAME] [options]"
    longdesc = (
        "Durable fact store server speaking the Igniter store wire protocol (CRC32-framed "
        "JSON). Facts are appended to a write-ahead log in --data and acknowledged once "
        "on stable storage (--fsync always, with group commit). Clients: "
        "txloom.store.NetworkBackend (blocking), txloom.store.client.StoreClient (Twisted), "
        "or any Igniter NetworkBackend. See docs/store.md."
    )

    optParameters = [
        [
            "data",
            "d",
            DEFAULT_DATA_DIR,
            "Directory of the WAL segments and snapshot files (file backend); created if "
            "missing, locked while the server runs.",
        ],
        [
            "backend",
            "b",
            "file",
            "Where facts live, by the name of an installed storage backend: "
            + extensions.describe(IStorageBackendFactory)
            + ". Packages add more as Twisted plugins (docs/extending.md).",
        ],
        [
            "nats",
            None,
            None,
            "With --backend jetstream: NATS URLs, comma-separated (the same as "
            "--backend-option nats=URLS). Without it, nothing connects to NATS.",
        ],
        [
            "replicas",
            None,
            None,
            "With --backend jetstream: replicas of the streams it creates (the same as "
            "--backend-option replicas=N).",
        ],
        [
            "fsync",
            None,
            "always",
            "When writes are acknowledged: 'always' (after an fsync covering them; "
            "concurrent writes share one fsync), 'interval:MS' (after the write to the OS, "
            "fsync every MS milliseconds), or 'never' (the OS decides).",
        ],
        [
            "max-frame-size",
            None,
            DEFAULT_MAX_FRAME_SIZE,
            "Largest frame accepted or sent, in bytes. Larger requests get frame_too_large "
            "and a close; a plain replay that would not fit gets frame_too_large and should "
            "be read in pages (replay with since/limit).",
            _positive_int("max-frame-size"),
        ],
        [
            "max-connections",
            None,
            DEFAULT_MAX_CONNECTIONS,
            "Open connections allowed; the next one is answered 'overloaded' and closed.",
            _positive_int("max-connections"),
        ],
        [
            "max-pipeline",
            None,
            DEFAULT_MAX_PIPELINE,
            "Requests one connection may have unanswered before the server stops reading from it.",
            _positive_int("max-pipeline"),
        ],
        [
            "max-unauthenticated",
            None,
            DEFAULT_MAX_UNAUTHENTICATED,
            "Connections that have not authenticated yet (with --auth-token-file). Past this, "
            "or at --max-connections, the oldest of them is closed to make room, so a client "
            "with the token always gets in.",
            _positive_int("max-unauthenticated"),
        ],
        [
            "max-partial-bytes",
            None,
            DEFAULT_MAX_PARTIAL_BYTES,
            "Bytes of unfinished frames held across all connections; the connection whose "
            "bytes would pass it is answered 'overloaded' and closed. At least "
            "--max-frame-size plus 8.",
            _positive_int("max-partial-bytes"),
        ],
        [
            "auth-timeout",
            None,
            DEFAULT_AUTH_TIMEOUT,
            "Seconds a connection has to authenticate (with --auth-token-file) before it "
            "is answered 'unauthorized' and closed.",
            _positive_float("auth-timeout"),
        ],
        [
            "idle-timeout",
            None,
            DEFAULT_IDLE_TIMEOUT,
            "Seconds a connection may send nothing while nothing is in flight before it is "
            "closed (push connections excepted).",
            _positive_float("idle-timeout"),
        ],
        [
            "frame-timeout",
            None,
            DEFAULT_FRAME_TIMEOUT,
            "Seconds a frame may take from its first byte to its last before the "
            "connection is answered 'bad_frame' and closed.",
            _positive_float("frame-timeout"),
        ],
        [
            "auth-token-file",
            None,
            None,
            "File holding a token (surrounding whitespace ignored). When set, the first "
            'request of every connection must be {"op":"auth","token":...}.',
        ],
        [
            "subscriber-max-events",
            None,
            DEFAULT_SUBSCRIBER_MAX_EVENTS,
            "Push events queued for a subscriber that is not reading before it counts as "
            "fallen behind.",
            _positive_int("subscriber-max-events"),
        ],
        [
            "subscriber-max-bytes",
            None,
            DEFAULT_SUBSCRIBER_MAX_BYTES,
            "Bytes of push events queued for a subscriber before it counts as fallen behind.",
            _positive_int("subscriber-max-bytes"),
        ],
        [
            "slow-subscriber",
            None,
            SlowSubscriberPolicy.DISCONNECT,
            "What a subscriber that fell behind gets, after an overflow event: "
            "'disconnect' (the connection is closed) or 'skip' (queued events are "
            "dropped and it continues with new ones).",
        ],
        [
            "overflow-close-timeout",
            None,
            DEFAULT_OVERFLOW_CLOSE_TIMEOUT,
            "Seconds a disconnected slow subscriber has to read its overflow event.",
            _positive_float("overflow-close-timeout"),
        ],
        [
            "reader-threads",
            None,
            DEFAULT_READER_THREADS,
            "Threads reading stored facts for replays and catch-up subscriptions (file "
            "backend): this many large reads progress at once, and none of them holds up "
            "other clients or the writes.",
            _positive_int("reader-threads"),
        ],
        [
            "storage-retry-max",
            None,
            DEFAULT_STORAGE_RETRY_MAX,
            "After a write or fsync failed (a full disk), writes are refused while the server "
            "tries to repair the end of the log, first after 0.1 s, then doubling the pause up "
            "to this many seconds; writes resume once a try succeeds.",
            _positive_float("storage-retry-max"),
        ],
        [
            "drain-timeout",
            None,
            DEFAULT_DRAIN_TIMEOUT,
            "Seconds a shutdown waits for clients to take their last answers.",
            _positive_float("drain-timeout"),
        ],
        status_option(),
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["backend-option"] = []

    def opt_backend_option(self, word: str) -> None:
        """KEY=VALUE setting of the chosen backend (repeat for several), e.g.
        --backend sqlite --backend-option path=facts.db; see that backend's docs.
        """
        self["backend-option"].append(word)

    def opt_listen(self, description: str) -> None:
        """Twisted endpoint to listen on; repeat for several (TCP, Unix, TLS), e.g.
        tcp:7400:interface=127.0.0.1, unix:/run/txloom/store.sock:lockfile=1,
        ssl:7401:privateKey=key.pem:certKey=cert.pem. Default: tcp:7400:interface=127.0.0.1.
        """
        self["listen"].append(description)

    opt_l = opt_listen

    def postOptions(self) -> None:
        from twisted.internet import reactor  # noqa: PLC0415 - only to parse endpoints

        self["status"] = valid_status_endpoint(self["status"])
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        for description in self["listen"]:
            try:
                serverFromString(reactor, description)
            except (ValueError, TypeError, KeyError) as e:
                raise usage.UsageError(f"--listen {description!r}: {e}") from None
        backend = extensions.choose(IStorageBackendFactory, self["backend"], "--backend")
        words = list(self["backend-option"])
        for shorthand in ("nats", "replicas"):
            if self[shorthand] is not None:
                if self["backend"] != "jetstream":
                    raise usage.UsageError(f"--{shorthand} goes with --backend jetstream")
                words.insert(0, f"{shorthand}={self[shorthand]}")
        backend_options = extensions.parse_options(backend, words, "--backend-option")
        try:
            fsync = FsyncPolicy.parse(self["fsync"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        if self["max-frame-size"] < MIN_FRAME_SIZE:
            raise usage.UsageError(f"--max-frame-size must be at least {MIN_FRAME_SIZE}")
        if self["max-partial-bytes"] < self["max-frame-size"] + FRAME_OVERHEAD:
            raise usage.UsageError(
                "--max-partial-bytes must be at least --max-frame-size plus 8, or no "
                "frame of the largest size could ever be received"
            )
        if self["slow-subscriber"] not in SlowSubscriberPolicy.ALL:
            raise usage.UsageError(
                f"--slow-subscriber must be disconnect or skip, not {self['slow-subscriber']!r}"
            )
        token = None
        if self["auth-token-file"] is not None:
            try:
                with open(self["auth-token-file"], encoding="utf-8") as f:
                    token = f.read().strip()
            except OSError as e:
                raise usage.UsageError(f"--auth-token-file: {e.strerror}: {e.filename}") from None
            if not token:
                raise usage.UsageError(f"--auth-token-file {self['auth-token-file']} is empty")
        self.config = StoreConfig(
            listen=list(self["listen"]),
            data_dir=self["data"],
            backend=self["backend"],
            backend_options=backend_options,
            fsync=fsync,
            max_frame_size=self["max-frame-size"],
            max_connections=self["max-connections"],
            max_pipeline=self["max-pipeline"],
            max_unauthenticated=self["max-unauthenticated"],
            max_partial_bytes=self["max-partial-bytes"],
            auth_timeout=self["auth-timeout"],
            idle_timeout=self["idle-timeout"],
            frame_timeout=self["frame-timeout"],
            auth_token=token,
            subscriber_max_events=self["subscriber-max-events"],
            subscriber_max_bytes=self["subscriber-max-bytes"],
            slow_subscriber=self["slow-subscriber"],
            overflow_close_timeout=self["overflow-close-timeout"],
            drain_timeout=self["drain-timeout"],
            reader_threads=self["reader-threads"],
            storage_retry_max=self["storage-retry-max"],
        )


def makeService(options: Options) -> StoreService:
    """The store server for ``twistd``: a start failure exits 1, SIGTERM drains and exits 0."""
    service = StoreService(options.config, exit_on_failure=True)
    CleanExitOnSignal(service.reactor).setServiceParent(service)
    systemd.ready_when(service.ready)
    if options["status"]:
        from txloom.status.store import watch_store  # noqa: PLC0415 - only when asked for

        StatusService(options["status"], [watch_store(service)]).setServiceParent(service)
    return service
