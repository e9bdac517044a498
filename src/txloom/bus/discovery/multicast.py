"""Local discovery, compatible with Grav's: UDP multicast announcements on the LAN.

Every ``interval`` seconds a node multicasts ``{"uuid":..,"port":"8080","path":..}`` to
239.255.255.250:9999 with TTL 2; a node that hears an announcement dials
``ws://<source address>:<port><path>`` unless the uuid is its own or already connected
(the mesh decides that). Several nodes on one host share the port (``SO_REUSEADDR``), and
multicast loopback is on, so nodes on the same machine find each other too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from txloom.interfaces import IDiscovery
from txloom.wire.grav import (
    MAX_DATAGRAM_SIZE,
    Announcement,
    BadAnnouncement,
    decode_announcement,
    encode_announcement,
)

__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_INTERVAL",
    "DEFAULT_PORT",
    "DEFAULT_TTL",
    "LocalMulticastDiscovery",
]

#: Grav's multicast group, port, hop limit and announcement period.
DEFAULT_GROUP = "239.255.255.250"
DEFAULT_PORT = 9999
DEFAULT_TTL = 2
DEFAULT_INTERVAL = 10.0


class _Listener(DatagramProtocol):
    noisy = False

    def __init__(self, owner: LocalMulticastDiscovery) -> None:
        self.owner = owner

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.owner._heard(datagram, addr[0])


@implementer(IDiscovery)
class LocalMulticastDiscovery:
    """Announce this node and report the nodes heard (see the module doc)."""

    log = Logger()

    def __init__(
        self,
        group: str = DEFAULT_GROUP,
        port: int = DEFAULT_PORT,
        interface: str = "0.0.0.0",
        *,
        interval: float = DEFAULT_INTERVAL,
        ttl: int = DEFAULT_TTL,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor  # noqa: PLC0415

            reactor = default_reactor
        self.reactor = reactor
        self.group = group
        self.port = port
        self.interface = interface
        self.interval = interval
        self.ttl = ttl
        self.heard = 0
        self.ignored = 0
        self._announcement: Announcement | None = None
        self._payload = b""
        self._found: Callable[[str, str | None], None] | None = None
        self._udp: Any = None
        self._loop: LoopingCall | None = None

    def start(
        self, announcement: Announcement, found: Callable[[str, str | None], None]
    ) -> Deferred[None]:
        """Join the group and start announcing; fails if the kernel refuses multicast."""
        return Deferred.fromCoroutine(self._start(announcement, found))

    async def _start(
        self, announcement: Announcement, found: Callable[[str, str | None], None]
    ) -> None:
        self._announcement = announcement
        self._payload = encode_announcement(announcement) if announcement.port else b""
        self._found = found
        self._udp = self.reactor.listenMulticast(
            self.port, _Listener(self), maxPacketSize=MAX_DATAGRAM_SIZE + 1, listenMultiple=True
        )
        self._udp.setTTL(self.ttl)
        self._udp.setLoopbackMode(1)
        if self.interface != "0.0.0.0":
            self._udp.setOutgoingInterface(self.interface)
        await self._udp.joinGroup(self.group, self.interface)
        self.log.info(
            "local discovery on {group}:{port} (interface {interface}, every {interval}s)",
            group=self.group,
            port=self.port,
            interface=self.interface,
            interval=self.interval,
        )
        if self._payload:
            self._loop = LoopingCall(self._announce)
            self._loop.clock = self.reactor
            self._loop.start(self.interval, now=True).addErrback(self._announce_failed)

    def _announce(self) -> None:
        self._udp.write(self._payload, (self.group, self.port))

    def _announce_failed(self, failure: Any) -> None:
        self.log.failure("local discovery stopped announcing", failure)

    def _heard(self, datagram: bytes, host: str) -> None:
        try:
            ann = decode_announcement(datagram)
        except BadAnnouncement as e:
            self.ignored += 1
            if self.ignored & (self.ignored - 1) == 0:
                self.log.info(
                    "ignored a discovery datagram from {host} ({error}); {count} so far",
                    host=host,
                    error=str(e),
                    count=self.ignored,
                )
            return
        self.heard += 1
        if self._announcement is not None and ann.uuid == self._announcement.uuid:
            return
        if self._found is not None:
            address = f"[{host}]" if ":" in host else host
            self._found(f"ws://{address}:{ann.port}{ann.path}", ann.uuid)

    def stop(self) -> Deferred[None]:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        udp, self._udp = self._udp, None
        if udp is None:
            return succeed(None)
        return Deferred.fromCoroutine(self._leave(udp))

    async def _leave(self, udp: Any) -> None:
        try:
            await udp.leaveGroup(self.group, self.interface)
        except Exception:  # leaving a group the kernel dropped already is not an error
            self.log.debug("leaving the discovery group failed")
        await maybeDeferred(udp.stopListening)
