"""``--status`` on each plugin, against real twistd processes: health, readiness, metrics."""

from __future__ import annotations

import json
import urllib.request
import uuid
from pathlib import Path

import pytest
from twisted.python import usage

from support.bus_peer import RawGravPeer, message_json
from support.processes import twistd
from support.status import STATUS_LISTENING, get, ready, scrape
from support.store import short_tempdir
from txloom.store import Fact, NetworkBackend
from txloom.store.tap import Options as StoreOptions
from txloom.worker.examples import APPS_DIR

STATUS = ("--status", "tcp:0:interface=127.0.0.1")


def test_store_metrics_count_writes_acks_fsyncs_and_recovery(tmp_path: Path) -> None:
    server = twistd(
        "storeserver", "--listen", "tcp:0:interface=127.0.0.1", "--data", str(tmp_path), *STATUS
    )
    with server.start():
        status = server.wait_for(STATUS_LISTENING).group(1)
        port = server.wait_for(r"storeserver listening on tcp:127\.0\.0\.1:(\d+)").group(1)
        assert get(status, "/healthz") == (200, "ok\n")
        code, body = ready(status)
        assert code == 200 and body["ready"] is True
        assert body["checks"]["store.recovered"] == "ok"
        with NetworkBackend(f"127.0.0.1:{port}") as client:
            for n in range(5):
                client.write_fact(Fact.build(store="s", key=n, value=n))
            subscription = client.subscribe(["s"], lambda fact: None)
            metrics = scrape(status)
            subscription.close()
        assert metrics["txloom_store_writes_total"] == 5
        assert metrics["txloom_store_acks_total"] == 5
        assert metrics["txloom_store_write_latency_seconds_count"] == 5
        assert metrics['txloom_store_write_latency_seconds_bucket{le="+Inf"}'] == 5
        assert metrics["txloom_store_fsyncs_total"] >= 1
        assert metrics["txloom_store_fsync_seconds_total"] > 0
        assert metrics["txloom_store_subscribers"] == 1
        assert metrics["txloom_store_subscriber_overflows_total"] == 0
        assert metrics["txloom_store_facts"] == 5 and metrics["txloom_store_last_seq"] == 5
        assert metrics["txloom_store_ready"] == 1
        assert metrics["txloom_store_recovery_seconds"] > 0
        assert server.terminate() == 0


def test_worker_metrics_count_sessions_spawns_and_http_codes() -> None:
    with short_tempdir() as runtime:
        host = twistd(
            "workerhost", "--apps", str(APPS_DIR), "--runtime", runtime,
            "--locator", "tcp:0:interface=127.0.0.1", "--http", "tcp:0:interface=127.0.0.1",
            *STATUS,
        )  # fmt: skip
        with host.start():
            status = host.wait_for(STATUS_LISTENING).group(1)
            http = host.wait_for(r"HTTP front end listening on tcp:127\.0\.0\.1:(\d+)").group(1)
            host.wait_for("worker host ready")
            code, body = ready(status)
            assert code == 200 and body["checks"]["worker.workers_spawnable"] == "ok"
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/hello/", timeout=20) as r:
                assert r.status == 200
            assert get(http, "/nonesuch/")[0] == 404
            metrics = scrape(status)
            assert metrics['txloom_worker_http_responses_total{code="200"}'] == 1
            assert metrics['txloom_worker_http_responses_total{code="404"}'] == 1
            assert metrics['txloom_worker_sessions_accepted_total{app="hello"}'] == 1
            assert metrics['txloom_worker_spawns_total{app="hello"}'] >= 1
            assert metrics['txloom_worker_crashes_total{app="echo"}'] == 0
            assert metrics['txloom_worker_heartbeat_misses_total{app="echo"}'] == 0
            assert metrics['txloom_worker_queue_depth{app="echo"}'] == 0
            assert metrics["txloom_worker_apps"] == 2
            assert host.terminate() == 0


def test_bus_metrics_count_messages_per_peer() -> None:
    node = twistd("busnode", "--listen", "tcp:0:interface=127.0.0.1", *STATUS)
    with node.start():
        status = node.wait_for(STATUS_LISTENING).group(1)
        port = int(node.wait_for(r"listening on tcp:127\.0\.0\.1:(\d+) \(ws").group(1))
        assert ready(status)[0] == 200
        peer_uuid = str(uuid.uuid4())
        with RawGravPeer(port) as peer:
            assert json.loads(peer.handshake(peer_uuid))["accept"] is True
            request = message_json(
                str(uuid.uuid4()), "txloom.node.status", b"", "2024-01-01T00:00:00Z"
            )
            peer.send_frame(request)
            peer.recv_json()  # the node's status reply: one message out to this peer
            metrics = scrape(status)
        assert metrics[f'txloom_bus_peer_messages_in_total{{peer="{peer_uuid}"}}'] == 1
        assert metrics[f'txloom_bus_peer_messages_out_total{{peer="{peer_uuid}"}}'] == 1
        assert metrics[f'txloom_bus_peer_messages_dropped_total{{peer="{peer_uuid}"}}'] == 0
        assert metrics["txloom_bus_peers"] == 1
        assert metrics["txloom_bus_messages_total"] >= 2
        assert any(name.startswith("txloom_bus_pod_queue_depth{") for name in metrics)
        assert node.terminate() == 0


def test_a_bad_status_endpoint_names_the_option() -> None:
    with pytest.raises(usage.UsageError, match="--status 'carrier-pigeon:1'"):
        StoreOptions().parseOptions(["--status", "carrier-pigeon:1"])
