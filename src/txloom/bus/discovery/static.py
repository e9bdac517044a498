"""Static peers: the ``--peer`` URLs, handed to the mesh once at start.

The mesh keeps each of them connected (redialling with backoff), so there is nothing to
repeat here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from txloom.bus.mesh.urls import PeerURL
from txloom.interfaces import IDiscovery
from txloom.wire.grav import Announcement

__all__ = ["StaticPeers"]


@implementer(IDiscovery)
class StaticPeers:
    """A fixed list of peer URLs (checked when made, so a typo fails at start)."""

    def __init__(self, urls: Iterable[str]) -> None:
        self.urls = [PeerURL.parse(u).url for u in urls]

    def start(
        self, announcement: Announcement, found: Callable[[str, str | None], None]
    ) -> Deferred[None]:
        for url in self.urls:
            found(url, None)
        return succeed(None)

    def stop(self) -> Deferred[None]:
        return succeed(None)
