"""Cluster benchmark: servers scaled out on NATS.

    python bench/cluster_bench.py            # about a minute
    python bench/cluster_bench.py --quick    # under half a minute

Worker hosts as a cluster: an app that only host B runs, reached through host A (HTTP
routed by A's front end; the Locator on A resolving it from the cluster), against
reaching B directly, in the same run: requests/s, p50/p99 and the ratios. Every process
(nats-server, both hosts, the load generator) shares the machine.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# -- worker hosts as a cluster: an app routed through another host ---------------------------


async def worker_routing_rows(seconds: float, connections: int = 16) -> list[str]:
    """Two ``twistd workerhost --cluster`` processes on one nats-server with JetStream: B
    runs the apps, A none. HTTP requests for B's app through A's front end (routed) against
    B's own front end (direct), and a Locator resolving B's app on A (from the cluster) and
    on B (its own), in the same run."""
    from twisted.internet import threads

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import worker_bench as wb

    root = Path(tempfile.mkdtemp(prefix="txlc-"))
    bin_dir = Path(sys.executable).parent
    port = _free_port()
    nats = [str(bin_dir / "nats-server"), "-a", "127.0.0.1", "-p", str(port), "-js"]
    children = [wb.Child([*nats, "-sd", str(root / "js")], root)]
    url = f"nats://127.0.0.1:{port}"

    def host(name: str, apps: Path) -> tuple[Any, int, int]:
        argv = [str(bin_dir / "twistd"), "-n", "--pidfile=", "workerhost", "--apps", str(apps)]
        argv += ["--runtime", str(root / f"run-{name}"), "--cluster", url]
        argv += ["--locator", "tcp:0:interface=127.0.0.1", "--http", "tcp:0:interface=127.0.0.1"]
        child = wb.Child([*argv, "--cluster-id", f"bench-{name}"], root)
        children.append(child)
        locator = int(child.wait_for(r"locator listening on tcp:127\.0\.0\.1:(\d+)")[1])
        http = int(child.wait_for(r"HTTP front end listening on tcp:127\.0\.0\.1:(\d+)")[1])
        return child, locator, http

    try:
        children[0].wait_for(r"Server is ready")
        wb.write_apps(root / "apps", 1)
        (root / "none").mkdir()
        _, b_locator, b_http = host("b", root / "apps")
        a, a_locator, a_http = host("a", root / "none")
        a.wait_for(r"worker host bench-b joined: .*hello")
        # (name, concurrency) -> result; routed and direct alternate, in the same run
        results: dict[tuple[str, int], dict[str, float]] = {}
        for http_port in (a_http, b_http):
            await threads.deferToThread(wb.http_load, http_port, "/hello/", 1, 4, 1.0)  # warm
        for conc in sorted({1, connections}):
            for name, http_port in (
                ("HTTP hello: A routes to B's front end", a_http),
                ("HTTP hello: B's front end direct", b_http),
            ):
                results[name, conc] = await threads.deferToThread(
                    wb.http_load, http_port, "/hello/", 1, conc, seconds
                )
        for name, locator_port in (
            ("Locator resolve: B's app on A (cluster)", a_locator),
            ("Locator resolve: B's app on B (local)", b_locator),
        ):
            results[name, 1] = await _resolving(locator_port, seconds)
    finally:
        for child in reversed(children):
            child.stop()
        shutil.rmtree(root, ignore_errors=True)
    lines = [f"{'cross-host, worker app':42} {'conc':>5} {'ops/s':>10} {'p50 ms':>8} {'p99 ms':>8}"]
    for (name, conc), r in results.items():
        lines.append(
            f"{name:42} {conc:>5} {r['rate']:>10,.0f} {r['p50'] * 1e3:>8.2f} {r['p99'] * 1e3:>8.2f}"
        )
    values = list(results.values())
    for i, conc in enumerate(sorted({1, connections})):
        routed, direct = values[2 * i], values[2 * i + 1]
        lines.append(
            f"routed/direct HTTP at {conc}: throughput {routed['rate'] / direct['rate']:.0%}, "
            f"p50 {routed['p50'] / direct['p50']:.2f}x, p99 {routed['p99'] / direct['p99']:.2f}x"
        )
    return lines


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _resolving(locator_port: int, seconds: float) -> dict[str, float]:
    """Resolve ``hello`` through one Locator connection, one call at a time."""
    from txloom.worker.client import LocatorClient

    locator = LocatorClient(("127.0.0.1", locator_port))
    await locator.connect()
    latencies: list[float] = []
    started = time.perf_counter()
    try:
        while time.perf_counter() - started < seconds:
            t = time.perf_counter()
            await locator.resolve("hello")
            latencies.append(time.perf_counter() - t)
    finally:
        locator.close()
    latencies.sort()
    return {
        "rate": len(latencies) / (time.perf_counter() - started),
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[int(len(latencies) * 0.99)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short runs")
    parser.add_argument("--seconds", type=float, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=16, help="HTTP connections")
    args = parser.parse_args()
    seconds = args.seconds or (2.0 if args.quick else 8.0)

    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    outcome: list[Any] = []
    d = Deferred.fromCoroutine(worker_routing_rows(seconds, args.connections))
    d.addBoth(outcome.append)
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
    result = outcome[0] if outcome else None
    if not isinstance(result, list):
        if result is not None:
            result.printTraceback()
        raise SystemExit(1)
    print(f"cluster benchmark: {seconds:g}s per row, Python {sys.version.split()[0]}")
    print("\n".join(result))


if __name__ == "__main__":
    main()
