"""Worker hosts as a cluster: each host publishes its apps to a NATS KV membership table
and resolves, through it, the apps of every other host.

``twistd workerhost --cluster nats://h1:4222,nats://h2:4222`` gives the host a
``HostCluster``. Its entry in the table (key: the host's id) holds where its Locator and
HTTP front end listen and every service its Locator publishes, except those that only
make sense on the host itself (the Locator, ``logging``, ``rpc``). The entry is refreshed
every TTL/3 and withdrawn on a clean stop; a host that dies drops out of every view within
the TTL (``txloom.cluster.membership``).

The Locator answers for a service it does not have with the endpoints of every host that
has it, in turn, so that clients spread over them; the HTTP front end proxies a request
for an app that is not local to a host that runs it. Without ``--cluster`` no part of this
is imported and nothing connects.
"""

from __future__ import annotations

import re
import socket
from typing import TYPE_CHECKING, Any

import msgpack
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from txloom.cluster.connection import NatsConnection
from txloom.cluster.membership import DEFAULT_TTL, Change, MemberEvent, Membership
from txloom.worker.http_route import Router

if TYPE_CHECKING:
    from txloom.worker.host import WorkerHost

__all__ = ["DEFAULT_BUCKET", "DEFAULT_TTL", "HOST_LOCAL_SERVICES", "HostCluster", "default_host_id"]

#: The KV bucket the worker hosts of one cluster share.
DEFAULT_BUCKET = "txloom-workerhosts"
#: Services every host has for itself: never published, never resolved elsewhere.
HOST_LOCAL_SERVICES = frozenset({"locator", "logging", "rpc"})
#: Entry format, so that a host can tell one it does not understand.
ENTRY_VERSION = 1

Resolved = tuple[list[list[Any]], int, dict]


def default_host_id(locator_port: int) -> str:
    """``<hostname>-<locator port>``: stable across restarts, so a restarted host takes
    its own entry back at once instead of waiting for the old one to expire."""
    name = re.sub(r"[^-_a-zA-Z0-9]", "-", socket.gethostname()) or "host"
    return f"{name}-{locator_port}"


class RemoteHost:
    """What one other host published: its addresses and services."""

    __slots__ = ("host_id", "http", "locator", "services")

    def __init__(self, host_id: str, raw: dict[str, Any]) -> None:
        if raw.get("v") != ENTRY_VERSION:
            raise ValueError(f"entry version {raw.get('v')!r}")
        self.host_id = host_id
        self.locator = _address(raw.get("locator"))
        self.http = _address(raw["http"]) if raw.get("http") else None
        services = raw.get("services") or {}
        if not isinstance(services, dict):
            raise ValueError("services is not a map")
        self.services: dict[str, Resolved] = {}
        for name, value in services.items():
            endpoints, version, graph = value
            self.services[str(name)] = (
                [[str(h), int(p)] for h, p in endpoints],
                int(version),
                dict(graph),
            )


def _address(value: Any) -> tuple[str, int]:
    host, port = value
    return str(host), int(port)


class HostCluster:
    """One host's part in the cluster: publish its own entry, keep everyone else's."""

    log = Logger()

    def __init__(
        self,
        servers: str | list[str],
        *,
        ttl: float = DEFAULT_TTL,
        bucket: str = DEFAULT_BUCKET,
        host_id: str | None = None,
        replicas: int = 1,
        token: str | None = None,
        reactor: Any = None,
    ) -> None:
        self.connection = NatsConnection(
            servers, name="txloom-workerhost", reactor=reactor, token=token
        )
        self.membership = Membership(
            self.connection, bucket, ttl=ttl, replicas=replicas, reactor=reactor
        )
        self.host_id = host_id
        self.bucket = bucket
        #: Other hosts by id (this host's own entry is not among them).
        self.hosts: dict[str, RemoteHost] = {}
        #: HTTP requests proxied to other hosts, and those that could not reach one.
        self.routed = 0
        self.route_failures = 0
        self._turn = 0
        self._host: WorkerHost | None = None
        #: Sends HTTP requests on to other hosts (made once the host listens).
        self.router: Router | None = None
        self.membership.on_change(self._changed)

    # -- lifetime -------------------------------------------------------------------------

    def start(self, host: WorkerHost) -> None:
        """Join once ``host`` listens (it does not wait for NATS: the host serves its own
        apps meanwhile, and connects in the background)."""
        self._host = host
        if self.host_id is None:
            self.host_id = default_host_id(host.locator_address[1])
        self.router = Router(host.reactor, self.host_id)
        host.locator.remote = self
        host.locator.on_change(self._publish)
        self.connection.start()
        self.membership.start().addCallback(self._joined)
        self._publish()

    def _joined(self, _: object) -> None:
        self.log.info(
            "worker host {id} joined the cluster ({bucket} on {server}): {count} other host(s)",
            id=self.host_id,
            bucket=self.bucket,
            server=self.connection.server,
            count=len(self.hosts),
        )

    def stop(self) -> Deferred[None]:
        """Withdraw this host's entry and disconnect."""
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        await self.membership.stop()
        await self.connection.stop()
        if self.router is not None:
            await self.router.close()

    # -- this host's entry ----------------------------------------------------------------

    def entry(self) -> dict[str, Any]:
        host = self._host
        assert host is not None
        services = {
            name: [endpoints, version, graph]
            for name, (endpoints, version, graph) in host.locator.services.items()
            if name not in HOST_LOCAL_SERVICES
        }
        http = None
        if host.http_address is not None:
            address, port = host.http_address
            if address in ("0.0.0.0", "::", ""):  # every interface: the one services advertise
                address = host.service_host
            http = [address, port]
        return {
            "v": ENTRY_VERSION,
            "locator": list(host.locator_address),
            "http": http,
            "services": services,
        }

    def _publish(self) -> None:
        assert self.host_id is not None
        self.membership.publish(self.host_id, msgpack.packb(self.entry(), use_bin_type=True))

    # -- everyone else's ------------------------------------------------------------------

    def _changed(self, event: MemberEvent) -> None:
        key = event.member.key
        if key == self.host_id:
            return
        if event.change is Change.LEFT:
            if self.hosts.pop(key, None) is not None:
                self.log.info("worker host {id} left the cluster", id=key)
            return
        try:
            raw = msgpack.unpackb(event.member.value, raw=False, strict_map_key=False)
            remote = RemoteHost(key, raw)
        except Exception as e:
            self.log.warn("ignoring the cluster entry of {id}: {error}", id=key, error=str(e))
            self.hosts.pop(key, None)
            return
        if key not in self.hosts:
            self.log.info(
                "worker host {id} joined: {names}", id=key, names=", ".join(remote.services) or "-"
            )
        self.hosts[key] = remote

    def _having(self, name: str) -> list[RemoteHost]:
        """The other hosts that publish ``name``, starting with a different one each time."""
        having = [h for _, h in sorted(self.hosts.items()) if name in h.services]
        if len(having) > 1:
            self._turn += 1
            start = self._turn % len(having)
            having = having[start:] + having[:start]
        return having

    def resolve(self, name: str) -> Resolved | None:
        """For the Locator: every other host's endpoints of ``name``, or None."""
        having = self._having(name)
        if not having:
            return None
        _, version, graph = having[0].services[name]
        endpoints = [e for h in having for e in h.services[name][0]]
        return endpoints, version, graph

    def names(self) -> set[str]:
        return {name for h in self.hosts.values() for name in h.services}

    def http_for(self, app: str) -> list[tuple[str, int]]:
        """HTTP front ends of the other hosts that run ``app``, the next in turn first."""
        return [h.http for h in self._having(app) if h.http is not None]

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.host_id,
            "connected": self.connection.connected,
            "server": self.connection.server,
            "hosts": sorted(self.hosts),
            "remote_services": sorted(self.names()),
            "routed": self.routed,
            "route_failures": self.route_failures,
        }
