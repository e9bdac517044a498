"""What the status site reports about a worker host (``twistd workerhost --status``).

Everything is read at scrape time from what the pools already count (sessions accepted
and rejected, spawns, crashes, heartbeat misses, queue depth) and from the HTTP front's
responses by status code; an app is a label, so a new app needs no new metric.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from txloom.status.metrics import ServerCollector, counter, gauge
from txloom.status.site import Watch
from txloom.worker.pool import RUNNING

if TYPE_CHECKING:
    from txloom.worker.host import WorkerHost
    from txloom.worker.pool import WorkerPool

__all__ = ["watch_worker"]

_APP = ("app",)


def watch_worker(host: WorkerHost) -> Watch:
    """The worker host's metrics and readiness checks."""

    def per_app(value: Callable[[WorkerPool], float]) -> dict[tuple[str, ...], float]:
        return {(name,): value(pool) for name, pool in sorted(host.pools.items())}

    def gather() -> list[Metric]:
        families = [
            gauge("txloom_worker_apps", "Apps served.", len(host.pools)),
            gauge(
                "txloom_worker_sessions",
                "Sessions open on workers.",
                labels=_APP,
                samples=per_app(lambda p: sum(w.load for w in p.workers.values())),
            ),
            gauge(
                "txloom_worker_queue_depth",
                "Sessions waiting for a worker.",
                labels=_APP,
                samples=per_app(lambda p: len(p.queue)),
            ),
            gauge(
                "txloom_worker_workers",
                "Worker processes (any state).",
                labels=_APP,
                samples=per_app(lambda p: len(p.workers)),
            ),
        ]
        for key, name, text in (
            ("accepted", "txloom_worker_sessions_accepted", "Sessions taken."),
            ("rejected", "txloom_worker_sessions_rejected", "Sessions refused (queue full...)."),
            ("spawned", "txloom_worker_spawns", "Worker processes started."),
            ("crashed", "txloom_worker_crashes", "Workers that died unasked."),
        ):
            families.append(
                counter(name, text, labels=_APP, samples=per_app(lambda p, k=key: p.counters[k]))
            )
        families.append(
            counter(
                "txloom_worker_heartbeat_misses",
                "Workers discarded for missing their heartbeats.",
                labels=_APP,
                samples=per_app(lambda p: p.heartbeat_misses),
            )
        )
        front = host.http_front
        if front is not None:
            families.append(
                counter(
                    "txloom_worker_http_responses",
                    "HTTP front end responses, by status code.",
                    labels=("code",),
                    samples={(str(code),): n for code, n in sorted(front.site.responses.items())},
                )
            )
        cluster = host.cluster
        if cluster is not None:
            families += [
                gauge(
                    "txloom_worker_cluster_connected",
                    "1 while NATS is reachable.",
                    int(cluster.connection.connected),
                ),
                gauge(
                    "txloom_worker_cluster_hosts", "Other hosts in the cluster.", len(cluster.hosts)
                ),
                counter(
                    "txloom_worker_cluster_routed",
                    "HTTP requests routed to other hosts.",
                    cluster.routed,
                ),
                counter(
                    "txloom_worker_cluster_route_failures",
                    "Routed HTTP requests no host could take (answered 503).",
                    cluster.route_failures,
                ),
            ]
        return families

    def listening() -> str | None:
        return None if host.locator_address[1] else "the Locator is not listening"

    def spawnable() -> str | None:
        broken = sorted(name for name, pool in host.pools.items() if pool.state != RUNNING)
        return f"apps not running: {', '.join(broken)}" if broken else None

    return Watch(
        "worker",
        [ServerCollector(gather, host.reactor)],
        {"listening": listening, "workers_spawnable": spawnable},
    )
