"""``WorkerHost``: the whole app engine as one Twisted service.

On start it loads the manifests in the apps directory, listens for the Locator, the
Logging service and one app service per app (each on its own TCP port, as the Locator
protocol wants), opens a Unix socket per app under the runtime directory for the app's
workers, and, if asked, the HTTP front end. Workers are spawned on demand. On stop it
terminates every worker (politely, then SIGKILL after terminate-timeout) and removes the
sockets. ``reload`` applies what changed in the apps directory since (``worker/reload.py``);
SIGHUP and the Locator's ``reload`` method ask for it.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService
from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from txloom.interfaces import IService, IWorkerLauncher
from txloom.wire.cocaine import DEFAULT_MAX_MESSAGE_SIZE
from txloom.worker.app_service import AppService
from txloom.worker.connection import default_reactor
from txloom.worker.control import WorkerConnection
from txloom.worker.dispatch import ServiceFactory
from txloom.worker.http_front import (
    DEFAULT_FD_RESERVE,
    DEFAULT_HTTP_HEAD_TIMEOUT,
    FDS_PER_WORKER,
    HttpFront,
    connection_limit,
)
from txloom.worker.locator import DEFAULT_LOCATOR_PORT, Locator
from txloom.worker.logging_service import DEFAULT_VERBOSITY, LoggingService
from txloom.worker.manifest import AppManifest, load_apps
from txloom.worker.pool import WorkerPool
from txloom.worker.process import ProcessLauncher
from txloom.worker.reload import ReloadError, plan_reload

if TYPE_CHECKING:
    from txloom.worker.cluster import HostCluster

DEFAULT_LOCATOR_ENDPOINT = f"tcp:{DEFAULT_LOCATOR_PORT}:interface=127.0.0.1"
#: Interface the per-service listeners bind to and the Locator advertises.
DEFAULT_SERVICE_HOST = "127.0.0.1"
#: Longest Unix socket path that fits ``sockaddr_un`` everywhere we run.
MAX_SOCKET_PATH = 104


class HostError(Exception):
    """The host cannot start as configured (one readable line)."""


def listen_now(deferred: Deferred[Any], what: str) -> Any:
    """The result of a listen that completes synchronously (TCP, UNIX); HostError if not."""
    result: list[Any] = []
    deferred.addBoth(result.append)
    if not result:
        raise HostError(f"cannot listen on {what}: listening did not complete at once")
    if isinstance(result[0], Failure):
        raise HostError(f"cannot listen on {what}: {result[0].getErrorMessage()}")
    return result[0]


def address_text(port: Any) -> tuple[str, int]:
    addr = port.getHost()
    return addr.host, addr.port


class WorkerSocketFactory(Factory):
    """Accepts an app's workers on its Unix socket."""

    noisy = False

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    def buildProtocol(self, addr: Any) -> WorkerConnection:
        return WorkerConnection(self.pool)


class WorkerHost(MultiService):
    """Apps, their pools and the services that reach them."""

    log = Logger()

    def __init__(
        self,
        apps_dir: str | os.PathLike[str],
        runtime_dir: str | os.PathLike[str],
        *,
        locator: str = DEFAULT_LOCATOR_ENDPOINT,
        http: str | None = None,
        service_host: str = DEFAULT_SERVICE_HOST,
        verbosity: int = DEFAULT_VERBOSITY,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        reactor: Any = None,
        launcher: IWorkerLauncher | None = None,
        rpc: Any = None,
        http_max_connections: int | None = None,
        http_head_timeout: float = DEFAULT_HTTP_HEAD_TIMEOUT,
        fd_reserve: int = DEFAULT_FD_RESERVE,
        cluster: HostCluster | None = None,
    ) -> None:
        super().__init__()
        self.reactor = reactor if reactor is not None else default_reactor()
        self.apps_dir = Path(apps_dir).absolute()
        # absolute: workers run in their app's directory, not in ours
        self.runtime_dir = Path(runtime_dir).absolute()
        self.locator_description = locator
        self.http_description = http
        self.service_host = service_host
        #: Largest message accepted from a client of any service.
        self.max_message_size = max_message_size
        self.launcher = launcher or ProcessLauncher(self.reactor)
        #: HTTP connections at once (None: what the descriptor limit leaves).
        self.http_max_connections = http_max_connections
        self.http_head_timeout = http_head_timeout
        #: Descriptors kept from HTTP for the Locator and services, beyond the workers'.
        self.fd_reserve = fd_reserve
        self.locator = Locator(reload=self.reload)
        self.logging = LoggingService(verbosity)
        self.pools: dict[str, WorkerPool] = {}
        #: Apps removed by a reload whose sessions are still running.
        self.draining: dict[str, WorkerPool] = {}
        #: Per app: its worker socket's and its app service's listening ports.
        self._app_ports: dict[str, tuple[Any, Any]] = {}
        self.published: dict[str, IService] = {}
        self.locator_address: tuple[str, int] = ("", 0)
        self.http_address: tuple[str, int] | None = None
        self.http_front: Any = None
        self._ports: list[Any] = []
        #: The reverse-RPC controller (``txloom.rpc.service.RpcControllerService``), if any:
        #: run as a child service, its agents callable through the Locator's ``rpc``
        #: service, its HTTP transports served at ``/rpc/`` on the HTTP front end.
        self.rpc = rpc
        if rpc is not None:
            rpc.setServiceParent(self)
        #: This host's part in a cluster of hosts (``txloom.worker.cluster``), if any:
        #: joined once the host listens, left first when it stops.
        self.cluster = cluster

    # -- start ----------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        try:
            self._start()
        except Exception:
            self._close_listeners()
            raise

    def _start(self) -> None:
        try:
            self.runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise HostError(
                f"cannot create runtime directory {self.runtime_dir}: {e.strerror}"
            ) from None
        apps, problems = load_apps(self.apps_dir)
        for problem in problems:
            self.log.error("skipping app: {problem}", problem=str(problem))
        port = listen_now(
            serverFromString(self.reactor, self.locator_description).listen(
                ServiceFactory(self.locator, self.max_message_size)
            ),
            f"{self.locator_description} (locator)",
        )
        self._ports.append(port)
        host, number = address_text(port)
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        self.locator_address = (host, number)
        self.log.info("locator listening on tcp:{host}:{port}", host=host, port=number)
        self.locator.register(self.locator, [(host, number)])
        self._ports.append(self._serve(self.logging))
        if self.rpc is not None:
            from txloom.worker.rpc_service import RpcService  # noqa: PLC0415

            self._ports.append(self._serve(RpcService(self.rpc.clients)))
        for manifest in apps:
            self.add_app(manifest)
        if self.http_description:
            workers = sum(pool.profile.pool_limit for pool in self.pools.values())
            try:
                limit = connection_limit(
                    self.http_max_connections, self.fd_reserve + FDS_PER_WORKER * workers
                )
            except ValueError as e:
                raise HostError(str(e)) from None
            self.http_front = HttpFront(self, limit, self.http_head_timeout)
            port = listen_now(
                serverFromString(self.reactor, self.http_description).listen(self.http_front.site),
                f"{self.http_description} (HTTP front end)",
            )
            self._ports.append(port)
            self.http_front.site.listening(port)
            self.http_address = address_text(port)
            self.log.info(
                "HTTP front end listening on tcp:{host}:{port} "
                "(at most {limit} connections, head timeout {timeout:g}s)",
                host=self.http_address[0],
                port=self.http_address[1],
                limit=limit,
                timeout=self.http_head_timeout,
            )
        self.log.info(
            "worker host ready: {count} app(s) from {apps}: {names}",
            count=len(self.pools),
            apps=str(self.apps_dir),
            names=", ".join(sorted(self.pools)) or "-",
        )
        if self.cluster is not None:
            self.cluster.start(self)

    def _serve(self, service: IService) -> Any:
        """Listen for ``service`` and publish it; the port is the caller's to close."""
        factory = ServiceFactory(service, self.max_message_size)
        port = listen_now(
            maybeDeferred(self.reactor.listenTCP, 0, factory, interface=self.service_host),
            f"{self.service_host} ({service.name} service)",
        )
        self.published[service.name] = service
        self.locator.register(service, [address_text(port)])
        return port

    @property
    def locator_spawn_address(self) -> str:
        host, port = self.locator_address
        return f"[{host}]:{port}" if isIPv6Address(host) else f"{host}:{port}"

    def add_app(self, manifest: AppManifest) -> WorkerPool:
        """Start serving one app (its socket, pool and app service)."""
        if manifest.name in self.pools:
            raise HostError(f"app {manifest.name!r} is already running")
        path = self.runtime_dir / f"{manifest.name}.sock"
        if len(str(path)) > MAX_SOCKET_PATH:
            raise HostError(
                f"socket path {path} is longer than {MAX_SOCKET_PATH} bytes; "
                "use a shorter --runtime directory"
            )
        _remove_stale_socket(path)
        pool = WorkerPool(
            manifest, str(path), self.locator_spawn_address, self.launcher, self.reactor
        )
        socket_port = listen_now(
            maybeDeferred(
                self.reactor.listenUNIX, str(path), WorkerSocketFactory(pool), mode=0o600
            ),
            str(path),
        )
        pool.start()
        self.pools[manifest.name] = pool
        self._app_ports[manifest.name] = (socket_port, self._serve(AppService(pool)))
        return pool

    # -- reload ---------------------------------------------------------------------------

    def reload(self) -> dict[str, list[str]]:
        """Apply the apps directory as it is now; the names added, changed, removed, kept.

        Raises ``ReloadError`` (logged) if a manifest cannot be used: nothing changes then.
        """
        try:
            found, problems = load_apps(self.apps_dir)
            plan = plan_reload(
                {name: pool.manifest for name, pool in self.pools.items()}, found, problems
            )
        except OSError as e:
            error = ReloadError(f"reload refused, running apps kept: {self.apps_dir}: {e}")
            self.log.error("{error}", error=str(error))
            raise error from None
        except ReloadError as e:
            self.log.error("{error}", error=str(e))
            raise
        for name in plan.removed:
            self._remove_app(name)
        for manifest in plan.changed:
            self.pools[manifest.name].roll(manifest)
        failed = []
        for manifest in plan.added:
            try:
                self._add_or_resume(manifest)
            except HostError as e:
                self.log.error("reload: cannot add {app}: {error}", app=manifest.name, error=str(e))
                failed.append(manifest.name)
        summary = plan.summary()
        summary["added"] = [name for name in summary["added"] if name not in failed]
        summary["failed"] = failed
        self.log.info(
            "apps reloaded: added {added}, changed {changed}, removed {removed}, "
            "{unchanged} unchanged",
            added=", ".join(summary["added"]) or "-",
            changed=", ".join(summary["changed"]) or "-",
            removed=", ".join(summary["removed"]) or "-",
            unchanged=len(summary["unchanged"]),
        )
        return summary

    def _add_or_resume(self, manifest: AppManifest) -> None:
        pool = self.draining.get(manifest.name)
        if pool is None:
            self.add_app(manifest)
            return
        if not pool.resume():
            raise HostError("its removal is still under way; reload again once it is done")
        # back before its drain ended: the same pool (and socket) serves the new manifest
        del self.draining[manifest.name]
        pool.roll(manifest)
        self.pools[manifest.name] = pool
        socket_port, _gone = self._app_ports[manifest.name]
        self._app_ports[manifest.name] = (socket_port, self._serve(AppService(pool)))

    def _remove_app(self, name: str) -> None:
        """No new sessions for ``name``; its socket closes once its sessions have ended."""
        pool = self.pools.pop(name)
        self.locator.unregister(name)
        self.published.pop(name, None)
        socket_port, service_port = self._app_ports[name]
        service_port.stopListening()  # connected callers keep their connections
        self._app_ports[name] = (socket_port, None)
        self.draining[name] = pool

        def drained(_: object) -> None:
            if self.draining.get(name) is pool:
                del self.draining[name]
                del self._app_ports[name]
                socket_port.stopListening()
                self.log.info("{app}: removed", app=name)

        pool.drain().addCallback(drained)

    # -- stop -----------------------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.log.info("worker host stopping: terminating {n} app(s)", n=len(self.pools))
        if self.cluster is not None:
            await self.cluster.stop()  # the others stop sending us work first
        for name in list(self.pools):
            self.locator.unregister(name)
        pools = [*self.pools.values(), *self.draining.values()]
        await DeferredList([pool.stop() for pool in pools])
        await self._close_listeners()
        await MultiService.stopService(self)
        self.log.info("worker host stopped")

    def _close_listeners(self) -> Deferred[Any]:
        ports, self._ports = self._ports, []
        ports += [port for pair in self._app_ports.values() for port in pair if port is not None]
        self._app_ports = {}
        # Twisted unlinks a Unix socket when its port has stopped listening.
        return DeferredList([d for d in (port.stopListening() for port in ports) if d is not None])


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket left by a host that died; refuse to steal one a live host uses."""
    try:
        if not stat.S_ISSOCK(path.lstat().st_mode):
            return
    except FileNotFoundError:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink(missing_ok=True)  # nobody listens: stale
            return
    raise HostError(f"{path} is in use by another running host; choose another --runtime")
