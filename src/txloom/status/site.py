"""The status site: liveness, readiness and Prometheus metrics on one HTTP listener.

``/healthz`` answers 200 while the process runs its reactor. ``/readyz`` answers 200 when
every readiness check of every watched server passes (listening, recovered, workers
spawnable...) and 503 with the failing checks otherwise, so a load balancer or systemd
unit can wait on it. ``/metrics`` is prometheus_client's Twisted resource over a registry
of this site's own.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector
from twisted.application.service import Service
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from txloom.shutdown import StartFailed

__all__ = ["ReadinessCheck", "StatusService", "Watch", "status_site"]

#: A readiness check: ``None`` when ready, else why not (one short line).
ReadinessCheck = Callable[[], "str | None"]


@dataclass
class Watch:
    """What a status site reports for one server: its collectors and readiness checks."""

    name: str
    collectors: list[Collector] = field(default_factory=list)
    checks: dict[str, ReadinessCheck] = field(default_factory=dict)


def _text(request: Request, code: int, body: str, content_type: bytes) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"cache-control", b"no-store")
    return body.encode("utf-8")


class HealthResource(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return _text(request, 200, "ok\n", b"text/plain; charset=utf-8")


class ReadinessResource(Resource):
    isLeaf = True

    def __init__(self, watches: Sequence[Watch]) -> None:
        super().__init__()
        self.watches = watches

    def render_GET(self, request: Request) -> bytes:
        checks: dict[str, str] = {}
        ready = True
        for watch in self.watches:
            for name, check in watch.checks.items():
                try:
                    problem = check()
                except Exception as e:  # a broken check reports, it does not crash the site
                    problem = f"check failed: {e}"
                checks[f"{watch.name}.{name}"] = problem or "ok"
                ready = ready and problem is None
        body = json.dumps({"ready": ready, "checks": checks}, sort_keys=True) + "\n"
        return _text(request, 200 if ready else 503, body, b"application/json")


def status_site(watches: Sequence[Watch], registry: CollectorRegistry) -> Site:
    from prometheus_client.twisted import MetricsResource  # noqa: PLC0415 - imports the reactor

    root = Resource()
    root.putChild(b"healthz", HealthResource())
    root.putChild(b"readyz", ReadinessResource(watches))
    root.putChild(b"metrics", MetricsResource(registry=registry))
    site = Site(root)
    site.noisy = False
    site.log = lambda request: None  # scrapes every few seconds would flood the log
    return site


class StatusService(Service):
    """Listens on ``endpoint`` with the status site of ``watches``.

    The port is bound in ``privilegedStartService``: a status port that is taken stops the
    start with one line (as any other listener of the server), before anything else runs.
    """

    log = Logger()

    def __init__(self, endpoint: str, watches: Iterable[Watch], reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor  # noqa: PLC0415 - the installed one
        self.reactor = reactor
        self.endpoint = endpoint
        self.watches = list(watches)
        self.registry = CollectorRegistry(auto_describe=True)
        for watch in self.watches:
            for collector in watch.collectors:
                self.registry.register(collector)
        self.port: Any = None
        self.setName("status")

    def add(self, watch: Watch) -> None:
        self.watches.append(watch)
        for collector in watch.collectors:
            self.registry.register(collector)

    @property
    def address(self) -> tuple[str, int] | None:
        if self.port is None:
            return None
        host = self.port.getHost()
        return host.host, host.port

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        self._listen()
        super().startService()

    def _listen(self) -> None:
        if self.port is not None:
            return
        result: list[Any] = []
        endpoint = serverFromString(self.reactor, self.endpoint)
        endpoint.listen(status_site(self.watches, self.registry)).addBoth(result.append)
        if not result or not hasattr(result[0], "getHost"):
            reason = result[0].getErrorMessage() if result else "did not bind at once"
            raise StartFailed(f"status: cannot listen on {self.endpoint}: {reason}")
        self.port = result[0]
        host, port = self.address or ("?", 0)
        self.log.info(
            "status listening on tcp:{host}:{port} (/healthz, /readyz, /metrics)",
            host=host,
            port=port,
        )

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None
