"""What the status site reports about a store server (``twistd storeserver --status``).

Counters the server keeps anyway (writes acknowledged, connections, subscribers, the
WAL's fsyncs) are read at scrape time; the write latency histogram is the one number
observed per write, through the factory's ``on_write_acked`` hook. Recovery is timed from
the moment the server is watched (its start) to its ``ready`` Deferred.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from prometheus_client import Histogram
from prometheus_client.core import Metric

from txloom.status.metrics import ServerCollector, counter, gauge
from txloom.status.site import Watch

if TYPE_CHECKING:
    from txloom.store.service import StoreService

__all__ = ["WRITE_LATENCY_BUCKETS", "watch_store"]

#: Seconds from request to acknowledgement; an fsync is ~0.1 to 10 ms on the disks txloom
#: runs on, and group commit stretches it under load.
WRITE_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class _Recovery:
    """How long the server took to become ready, and with how many facts."""

    def __init__(self, service: StoreService) -> None:
        self.started = time.monotonic()
        self.seconds: float | None = None
        self.facts = 0
        self.failed = False
        service.ready.addCallbacks(self._ready, self._failed, callbackArgs=(service,))

    def _ready(self, addresses: Any, service: StoreService) -> Any:
        self.seconds = time.monotonic() - self.started
        self.facts = service.backend.fact_count
        return addresses

    def _failed(self, failure: Any) -> Any:
        self.failed = True
        return failure


def watch_store(service: StoreService) -> Watch:
    """The store server's metrics and readiness checks."""
    factory = service.factory
    recovery = _Recovery(service)
    latency = Histogram(
        "txloom_store_write_latency_seconds",
        "Seconds from a write_fact request to its acknowledgement.",
        buckets=WRITE_LATENCY_BUCKETS,
        registry=None,
    )
    factory.on_write_acked = latency.observe

    def gather() -> list[Metric]:
        backend = service.backend
        hub = factory.hub
        wal = getattr(backend, "wal", None)
        return [
            counter("txloom_store_writes", "write_fact requests taken.", factory.write_requests),
            counter("txloom_store_acks", "Writes acknowledged to clients.", factory.facts_written),
            counter(
                "txloom_store_fsyncs", "fsyncs of the write-ahead log.", getattr(wal, "syncs", 0)
            ),
            counter(
                "txloom_store_fsync_seconds",
                "Seconds spent in fsyncs of the write-ahead log.",
                getattr(wal, "sync_seconds", 0.0),
            ),
            gauge("txloom_store_connections", "Open client connections.", len(factory.connections)),
            gauge("txloom_store_subscribers", "Push subscriptions open.", len(hub)),
            counter(
                "txloom_store_subscriber_overflows",
                "Times a subscriber fell behind its queue bound.",
                hub.overflows,
            ),
            counter("txloom_store_events_pushed", "Push events sent.", hub.events_pushed),
            gauge("txloom_store_facts", "Facts stored.", backend.fact_count),
            gauge("txloom_store_last_seq", "Sequence number of the last fact.", backend.last_seq),
            gauge("txloom_store_ready", "1 once recovered and answering.", int(factory.ready)),
            gauge(
                "txloom_store_recovery_seconds",
                "Seconds the last start took to recover the store.",
                recovery.seconds or 0.0,
            ),
            gauge(
                "txloom_store_recovered_facts",
                "Facts the last start recovered.",
                recovery.facts,
            ),
        ]

    def listening() -> str | None:
        return None if service.ports else "not listening"

    def recovered() -> str | None:
        if recovery.failed:
            return "recovery failed"
        return None if factory.ready else "recovering"

    def accepting() -> str | None:
        return "draining" if factory.draining else None

    return Watch(
        "store",
        [ServerCollector(gather, service.reactor), latency],
        {"listening": listening, "recovered": recovered, "accepting": accepting},
    )
