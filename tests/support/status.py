"""Reading a status site as Prometheus and a load balancer do."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

STATUS_LISTENING = r"status listening on tcp:127\.0\.0\.1:(\d+)"


def get(port: int | str, path: str) -> tuple[int, str]:
    """``(status, body)`` of ``GET http://127.0.0.1:PORT/PATH`` (error statuses included)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=20) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(port: int | str) -> dict[str, float]:
    """Every sample of ``/metrics``, parsed by prometheus_client: ``{'name{l="v"}': value}``."""
    status, text = get(port, "/metrics")
    assert status == 200, text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def ready(port: int | str) -> tuple[int, dict]:
    status, body = get(port, "/readyz")
    return status, json.loads(body)
