"""Every number that limits the store server, with its default and why it is that.

``StoreConfig`` is what ``twistd storeserver`` options turn into and what the service,
the protocol and the subscription hub read; tests build one directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from txloom.wire.crcjson import DEFAULT_MAX_FRAME_SIZE

__all__ = [
    "DEFAULT_AUTH_TIMEOUT",
    "DEFAULT_DRAIN_TIMEOUT",
    "DEFAULT_FRAME_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_LISTEN",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_MAX_PARTIAL_BYTES",
    "DEFAULT_MAX_PIPELINE",
    "DEFAULT_MAX_UNAUTHENTICATED",
    "DEFAULT_READER_THREADS",
    "DEFAULT_STORAGE_RETRY_INITIAL",
    "DEFAULT_STORAGE_RETRY_MAX",
    "DEFAULT_SUBSCRIBER_MAX_BYTES",
    "DEFAULT_SUBSCRIBER_MAX_EVENTS",
    "FsyncPolicy",
    "SlowSubscriberPolicy",
    "StoreConfig",
]

#: Where the server listens unless told otherwise (the reference server's port).
DEFAULT_LISTEN = "tcp:7400:interface=127.0.0.1"

#: Open connections beyond this are answered ``overloaded`` and closed. Each connection
#: costs a socket and a few kilobytes; the cap keeps a connection storm from taking the
#: descriptors the WAL needs.
DEFAULT_MAX_CONNECTIONS = 1024

#: Of those, connections not yet authenticated (a token is configured and no good
#: ``auth`` came yet). A newcomer past this cap, or past ``max_connections``, takes the
#: place of the oldest unauthenticated connection (which is answered ``overloaded``), so
#: strangers can never keep a client with the token out. Without a token every
#: connection counts as authenticated from the start.
DEFAULT_MAX_UNAUTHENTICATED = 64

#: Seconds a connection has to authenticate when a token is configured; then it is
#: answered ``unauthorized`` and closed. A client authenticates in its first round trip.
DEFAULT_AUTH_TIMEOUT = 10.0

#: Seconds a connection may stay silent with nothing in flight (no unanswered request,
#: not a push connection) before it is closed, so that forgotten or hostile
#: connections do not hold their descriptors for ever. Clients reconnect.
DEFAULT_IDLE_TIMEOUT = 300.0

#: Seconds a frame may take from its first byte to its last: a peer that sends part of a
#: frame and stops is answered ``bad_frame`` and closed. 16 MiB in this time needs about
#: 280 KiB/s.
DEFAULT_FRAME_TIMEOUT = 60.0

#: Bytes of unfinished frames the server holds across all connections. A connection
#: whose bytes would pass it is answered ``overloaded`` and closed, so that many peers
#: each sending most of a large frame cannot exhaust memory (32 x 16 MiB = 512 MiB).
DEFAULT_MAX_PARTIAL_BYTES = 4 * DEFAULT_MAX_FRAME_SIZE

#: Largest frame a connection may send before it authenticated (an ``auth`` request is
#: small): a stranger cannot make the server buffer a 16 MiB frame.
UNAUTHENTICATED_MAX_FRAME_SIZE = 64 * 1024

#: Longest ``request_id`` echoed, in bytes of JSON: a larger one is refused with
#: ``invalid_request``. Answers keep ``REPLY_HEADROOM`` free for the request id and the
#: envelope, so that any stored fact can be replayed in a page of its own.
MAX_REQUEST_ID_BYTES = 1024

#: Requests one connection may have in flight (sent, not yet answered). Past this the
#: server stops reading from that connection until answers drain: a client that
#: pipelines without reading cannot make the server buffer without bound.
DEFAULT_MAX_PIPELINE = 1024

#: Push events queued for one subscriber that is not reading, by count and by bytes.
#: Whichever is reached first counts as falling behind.
DEFAULT_SUBSCRIBER_MAX_EVENTS = 10_000
DEFAULT_SUBSCRIBER_MAX_BYTES = 8 * 1024 * 1024

#: Seconds a SIGTERM drain waits for connections to take their last answers.
DEFAULT_DRAIN_TIMEOUT = 10.0

#: Seconds a subscriber cut off for falling behind has to read its overflow event
#: before the connection is aborted.
DEFAULT_OVERFLOW_CLOSE_TIMEOUT = 5.0

#: Threads that read stored facts for replays and catch-up subscriptions (the file
#: backend), so that a read from a cold disk never holds the reactor thread. Each
#: replay has at most one read in flight, so this many replays progress at once and the
#: rest wait their turn; appends have a thread of their own and never wait for readers.
DEFAULT_READER_THREADS = 2

#: After a write or fsync failed (a full disk, a device error), the backend refuses writes
#: and tries to repair the end of its log after this many seconds, doubling the pause
#: after each failed try up to ``DEFAULT_STORAGE_RETRY_MAX``: writes resume within that
#: long of the cause going away, and a disk that stays broken is not hammered.
DEFAULT_STORAGE_RETRY_INITIAL = 0.1
DEFAULT_STORAGE_RETRY_MAX = 5.0

#: Bytes kept free in the frame limit for the envelope around facts in an answer
#: (``{"ok":true,"facts":[...],"next":N,...}``, a ``request_id``), so that a fact that was
#: accepted can always be replayed in a page of its own.
REPLY_HEADROOM = 4096


@dataclass(frozen=True)
class FsyncPolicy:
    """When WAL appends reach stable storage, and so when writes are acknowledged.

    ``always``: a write is answered only after an fsync covering it (group commit shares
    one fsync among all writes waiting for it). ``interval``: answered after the write
    to the OS; fsync every ``interval_ms``. ``never``: the OS decides.
    """

    mode: str = "always"
    interval_ms: int = 0

    _PATTERN = re.compile(r"^(always|never|interval:(\d+))$")

    @classmethod
    def parse(cls, text: str) -> FsyncPolicy:
        m = cls._PATTERN.match(text.strip())
        if m is None:
            raise ValueError(f"--fsync must be always, never or interval:MS, not {text!r}")
        if m.group(2) is not None:
            interval = int(m.group(2))
            if interval <= 0:
                raise ValueError("--fsync interval:MS needs MS > 0")
            return cls("interval", interval)
        return cls(m.group(1))

    def __str__(self) -> str:
        return f"interval:{self.interval_ms}" if self.mode == "interval" else self.mode


class SlowSubscriberPolicy:
    """What happens to a subscriber whose queue is full."""

    #: Send ``{"event":"overflow","dropped":N}`` and close the connection.
    DISCONNECT = "disconnect"
    #: Drop what is queued, send the overflow event when it reads again, keep going.
    SKIP = "skip"
    ALL = (DISCONNECT, SKIP)


@dataclass
class StoreConfig:
    """The store server's settings; see ``txloom.store.tap`` for the command line."""

    listen: list[str] = field(default_factory=lambda: [DEFAULT_LISTEN])
    data_dir: str = "var/store"
    #: The storage backend's factory name (``IStorageBackendFactory``) and its parsed
    #: options; ``StoreService`` builds it unless it is handed a backend.
    backend: str = "file"
    backend_options: Any = None
    fsync: FsyncPolicy = field(default_factory=FsyncPolicy)
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_pipeline: int = DEFAULT_MAX_PIPELINE
    max_unauthenticated: int = DEFAULT_MAX_UNAUTHENTICATED
    max_partial_bytes: int = DEFAULT_MAX_PARTIAL_BYTES
    auth_timeout: float = DEFAULT_AUTH_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    frame_timeout: float = DEFAULT_FRAME_TIMEOUT
    auth_token: str | None = None
    subscriber_max_events: int = DEFAULT_SUBSCRIBER_MAX_EVENTS
    subscriber_max_bytes: int = DEFAULT_SUBSCRIBER_MAX_BYTES
    slow_subscriber: str = SlowSubscriberPolicy.DISCONNECT
    overflow_close_timeout: float = DEFAULT_OVERFLOW_CLOSE_TIMEOUT
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    reader_threads: int = DEFAULT_READER_THREADS
    storage_retry_max: float = DEFAULT_STORAGE_RETRY_MAX

    @property
    def max_fact_size(self) -> int:
        """Largest stored fact: one that can always be answered in a frame of its own."""
        return max(self.max_frame_size - REPLY_HEADROOM, self.max_frame_size // 2)
