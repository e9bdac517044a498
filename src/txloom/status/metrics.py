"""Collectors that read a server's own counters when Prometheus scrapes.

Servers keep plain integer counters (cheap on their hot paths); a ``ServerCollector``
turns them into metric families at scrape time. prometheus_client's Twisted resource
renders in a thread-pool thread, while the counters belong to the reactor thread, so a
collector gathers on the reactor thread (``blockingCallFromThread``) and only formats
elsewhere: no dict changes size under it, no half-updated pair of numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.python.threadable import isInIOThread

__all__ = ["ServerCollector", "counter", "gauge"]


def counter(
    name: str, documentation: str, value: float | None = None, **labelled: Any
) -> CounterMetricFamily:
    """A counter family: one value, or ``labels=[...]`` with ``samples={(l1,..): v}``."""
    return _family(CounterMetricFamily, name, documentation, value, **labelled)


def gauge(
    name: str, documentation: str, value: float | None = None, **labelled: Any
) -> GaugeMetricFamily:
    return _family(GaugeMetricFamily, name, documentation, value, **labelled)


def _family(
    kind: Any,
    name: str,
    documentation: str,
    value: float | None,
    *,
    labels: Iterable[str] = (),
    samples: Mapping[tuple[str, ...], float] | None = None,
    unit: str = "",
) -> Any:
    labels = list(labels)
    if not labels:
        return kind(name, documentation, value=value or 0, unit=unit)
    family = kind(name, documentation, labels=labels, unit=unit)
    for key, sample in (samples or {}).items():
        family.add_metric(list(key), sample)
    return family


class ServerCollector(Collector):
    """Metric families from ``gather()``, run on the reactor thread."""

    def __init__(self, gather: Callable[[], list[Metric]], reactor: Any) -> None:
        self.gather = gather
        self.reactor = reactor

    def collect(self) -> Iterator[Metric]:
        if isInIOThread() or not self.reactor.running:
            families = self.gather()
        else:
            from twisted.internet.threads import blockingCallFromThread  # noqa: PLC0415

            families = blockingCallFromThread(self.reactor, self.gather)
        yield from families

    def describe(self) -> Iterator[Metric]:
        # the families this collector yields are known only when it runs; an empty
        # description lets one registry hold collectors of several servers
        return iter(())
