"""``twistd txloom`` (what ``make run`` starts): every server up in one real process."""

from __future__ import annotations

import json
import urllib.request
import uuid

import pytest

from support.bus_peer import RawGravPeer
from support.processes import twistd
from support.status import STATUS_LISTENING, ready, scrape
from support.store import short_tempdir
from txloom.store.blocking import NetworkBackend


@pytest.mark.slow
def test_all_in_one_node_serves_every_part_and_exits_cleanly(tmp_path) -> None:
    with short_tempdir() as runtime:
        node = twistd(
            "txloom",
            "--data", str(tmp_path),
            "--store-listen", "tcp:0:interface=127.0.0.1",
            "--locator", "tcp:0:interface=127.0.0.1",
            "--http", "tcp:0:interface=127.0.0.1",
            "--runtime", runtime,
            "--bus-listen", "tcp:0:interface=127.0.0.1",
            "--rpc", "tcp:0:interface=127.0.0.1",
            "--status", "tcp:0:interface=127.0.0.1",
        )  # fmt: skip
        with node.start():
            store = node.wait_for(r"storeserver listening on tcp:127\.0\.0\.1:(\d+)")
            http = node.wait_for(r"HTTP front end listening on tcp:127\.0\.0\.1:(\d+)")
            node.wait_for(r"worker host ready")
            node.wait_for(r"agent example-agent joined over stream")
            bus = node.wait_for(r"bus node \S+ \(group \S+\) listening on tcp:127\.0\.0\.1:(\d+)")

            backend = NetworkBackend(address=f"127.0.0.1:{store.group(1)}", transport="tcp")
            assert backend.ping()
            backend.close()

            with urllib.request.urlopen(
                f"http://127.0.0.1:{http.group(1)}/hello/", timeout=20
            ) as r:
                assert r.status == 200
                assert b"Hello" in r.read()

            with RawGravPeer(int(bus.group(1))) as peer:
                ack = json.loads(peer.handshake(str(uuid.uuid4())))
                assert ack["accept"] is True

            status = node.wait_for(STATUS_LISTENING).group(1)
            code, body = ready(status)
            assert code == 200, body
            assert {"store.recovered", "worker.listening", "bus.listening"} <= set(body["checks"])
            metrics = scrape(status)
            assert metrics["txloom_store_ready"] == 1
            assert metrics['txloom_worker_http_responses_total{code="200"}'] == 1
            assert metrics["txloom_bus_peers"] == 0

            assert node.terminate() == 0, node.tail()
        assert (tmp_path / "store").is_dir()


def test_unknown_part_is_one_readable_line() -> None:
    node = twistd("txloom", "--without", "nonesuch")
    with node.start():
        assert node.wait() != 0
    assert "known parts are" in node.output
