"""A bus discovery that reads its peers from a file, and notices when the file changes.

    # /etc/txloom/peers: one peer URL per line
    ws://10.0.0.2:8080/meta/message
    wss://node-b.example:8443/meta/message   # comments and blank lines are fine

    twistd -n busnode --discovery file --discovery-option path=/etc/txloom/peers

The file is checked every ``interval`` seconds (its size, modification time and inode: an
editor that writes a new file and renames it over the old one is noticed too) and read
again when it changed; every URL in it is then reported to the mesh, which dials the new
ones and ignores those already connected. A line that is not a peer URL is logged and
skipped, so one typo does not hide the other peers; a missing or unreadable file is logged
and counts as an empty list until it appears.

It is an example of a discovery shipped by a package other than txloom: ``FilePeers``
implements ``txloom.interfaces.IDiscovery``, ``FilePeersFactory`` implements
``IDiscoveryFactory`` (and ``IPlugin``), and the dropin ``twisted/plugins/
txloom_extras_plugins.py`` exposes one factory instance. See docs/extending.md in txloom.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

from txloom.bus.mesh.urls import BadPeerURL, PeerURL
from txloom.interfaces import IDiscovery, IDiscoveryFactory

__all__ = ["DEFAULT_INTERVAL", "MAX_FILE_SIZE", "FilePeers", "FilePeersFactory"]

#: Seconds between two looks at the file.
DEFAULT_INTERVAL = 2.0
#: A peers file larger than this is not read (it is surely not a list of peers).
MAX_FILE_SIZE = 1024 * 1024

Found = Callable[[str, "str | None"], None]


@implementer(IDiscovery)
class FilePeers:
    """The peers listed in a file (see the module doc)."""

    log = Logger()

    def __init__(
        self, path: str, *, interval: float = DEFAULT_INTERVAL, reactor: Any = None
    ) -> None:
        if not interval > 0:
            raise ValueError("interval must be positive")
        if reactor is None:
            from twisted.internet import reactor as default_reactor  # noqa: PLC0415

            reactor = default_reactor
        self.path = path
        self.interval = interval
        self.reactor = reactor
        #: The peer URLs from the last reading of the file.
        self.peers: list[str] = []
        #: How many times the file was read (its first reading included).
        self.readings = 0
        self._found: Found | None = None
        self._seen: tuple[int, int, int] | None = None
        self._loop: LoopingCall | None = None

    def start(self, announcement: object, found: Found) -> Deferred[None]:
        """Read the file, report its peers, and keep watching it."""
        self._found = found
        self._check()
        self._loop = LoopingCall(self._check)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False).addErrback(self._watch_failed)
        self.log.info(
            "peers file {path}: {count} peers; checked every {interval}s",
            path=self.path,
            count=len(self.peers),
            interval=self.interval,
        )
        return succeed(None)

    def stop(self) -> Deferred[None]:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return succeed(None)

    def _watch_failed(self, failure: Any) -> None:
        self.log.failure("peers file {path}: stopped watching", failure, path=self.path)

    def _check(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError as e:
            if self._seen != (0, 0, 0):
                self._seen = (0, 0, 0)
                self.log.warn(
                    "peers file {path}: {error}; no peers from it until it appears",
                    path=self.path,
                    error=e.strerror,
                )
                self.peers = []
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._seen:
            return
        self._seen = stamp
        if st.st_size > MAX_FILE_SIZE:
            self.log.warn(
                "peers file {path}: {size} bytes is over the {limit} byte limit; not read",
                path=self.path,
                size=st.st_size,
                limit=MAX_FILE_SIZE,
            )
            return
        try:
            with open(self.path, "rb") as f:
                text = f.read(MAX_FILE_SIZE + 1).decode("utf-8", "replace")
        except OSError as e:
            self.log.warn("peers file {path}: {error}", path=self.path, error=e.strerror)
            return
        self.readings += 1
        self.peers = self._parse(text)
        if self._found is not None:
            for url in self.peers:
                self._found(url, None)

    def _parse(self, text: str) -> list[str]:
        peers: list[str] = []
        for number, line in enumerate(text.splitlines(), 1):
            entry = line.split("#", 1)[0].strip()
            if not entry:
                continue
            try:
                url = PeerURL.parse(entry).url
            except BadPeerURL as e:
                self.log.warn(
                    "peers file {path}, line {number}: {error}; skipped",
                    path=self.path,
                    number=number,
                    error=str(e),
                )
                continue
            if url not in peers:
                peers.append(url)
        return peers


class FilePeersOptions(usage.Options):
    optParameters = [
        ["path", None, None, "The peers file (required)."],
        ["interval", None, DEFAULT_INTERVAL, "Seconds between looks at the file.", float],
    ]

    def postOptions(self) -> None:
        if not self["path"]:
            raise usage.UsageError("path=FILE is required")
        if not self["interval"] > 0:
            raise usage.UsageError("interval must be positive")


@implementer(IPlugin, IDiscoveryFactory)
class FilePeersFactory:
    name = "file"
    description = "peers listed in a file, one URL per line, re-read when it changes"
    options = FilePeersOptions

    def discovery(self, config: Any, options: Any, reactor: Any) -> FilePeers:
        if options is None:
            raise usage.UsageError("--discovery file needs --discovery-option path=FILE")
        return FilePeers(options["path"], interval=options["interval"], reactor=reactor)
