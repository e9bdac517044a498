"""Cluster benchmark: the store on JetStream against its own floor, in one run.

Acknowledged writes per second and ack latency (p50/p99) with 64 closed-loop clients
(one write in flight each), every row measured now, on this machine:

- ``twistd storeserver --backend file --fsync always`` (one machine's durability);
- ``--backend jetstream`` on a three-node NATS cluster on loopback (JetStream syncing
  every write), with streams of 1 and of 3 replicas;
- the floor: nats-py publishing the same fact bodies straight to a JetStream stream of
  the same replicas, 64 publishers each waiting for its acknowledgement.

The ratio jetstream/floor is printed per replica count (target >= 0.70), with the store
server's CPU per acknowledged write.

Worker hosts as a cluster, on the same NATS cluster: an app that only host B runs,
reached through host A (HTTP routed by A's front end; A's Locator resolving it from the
cluster) against reaching B directly, in the same run: requests/s, p50/p99, the ratios.

    python bench/cluster_bench.py            # 5 s per row
    python bench/cluster_bench.py --quick    # 2 s per row
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))

from store_bench import (  # noqa: E402
    Result,
    closed_loop_writes,
    fact_body,
    percentile,
    start_server,
)

from support.nats import NatsCluster  # noqa: E402

CLIENTS = 64


def cpu_seconds(pid: int) -> float:
    """User plus system CPU of a process so far (from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def store_row(  # noqa: PLR0917 - one row's settings
    data: Path,
    name: str,
    args: list[str],
    seconds: float,
    warmup: float,
    reactor: str | None = None,
) -> Result:
    server, _ = start_server(data, *args, reactor=reactor)
    try:
        before = cpu_seconds(server.process.pid)
        started = time.perf_counter()
        rate, lat = closed_loop_writes(server.address, CLIENTS, seconds, warmup)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(server.process.pid) - before
        writes = rate * seconds + 1e-9
        # the CPU spent over warm-up and run, per write acknowledged over the same time
        per_write = cpu / (writes * elapsed / seconds) * 1e6
        return Result(
            name,
            rate,
            "acked writes/s",
            percentile(lat, 0.5) * 1e3,
            percentile(lat, 0.99) * 1e3,
            f"server CPU {per_write:.0f} us/write",
        )
    finally:
        server.stop()


async def _floor(url: list[str], stream: str, replicas: int, seconds: float, warmup: float):
    nc = await nats.connect(url)
    js = nc.jetstream(timeout=10)
    await js.add_stream(name=stream, subjects=[f"{stream}.>"], num_replicas=replicas)
    latencies: list[float] = []
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + warmup
    stop_at = measure_from + seconds

    async def publisher(i: int) -> None:
        n = 0
        while (sent := loop.time()) < stop_at:
            await js.publish(f"{stream}.bench{i % 4}", fact_body(i, n))
            done = loop.time()
            if done >= measure_from:
                latencies.append(done - sent)
            n += 1

    await asyncio.gather(*(publisher(i) for i in range(CLIENTS)))
    await nc.close()
    latencies.sort()
    return len(latencies) / seconds, latencies


def floor_row(urls: list[str], replicas: int, seconds: float, warmup: float) -> Result:
    rate, lat = asyncio.run(_floor(urls, f"floor_r{replicas}", replicas, seconds, warmup))
    return Result(
        f"nats-py straight to JetStream R{replicas}",
        rate,
        "acked writes/s",
        percentile(lat, 0.5) * 1e3,
        percentile(lat, 0.99) * 1e3,
        "the floor",
    )


def store_on_jetstream(args: argparse.Namespace) -> None:
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    warmup = 0.5 if args.quick else 1.0
    workdir = Path(tempfile.mkdtemp(prefix="cluster-bench-", dir=args.workdir))
    results: list[Result] = []

    def show(r: Result) -> Result:
        results.append(r)
        print(
            f"  {r.name:<44} {r.rate:>9,.0f} {r.unit}  p50 {r.p50_ms:.2f} ms  "
            f"p99 {r.p99_ms:.2f} ms  {r.note}",
            flush=True,
        )
        return r

    print(f"cluster bench: {CLIENTS} clients, {seconds}s per row, {os.cpu_count()} CPUs")
    cluster = NatsCluster(workdir).start()
    ratios = []
    try:
        show(store_row(workdir / "file", "storeserver --backend file", [], seconds, warmup))
        for replicas in (1, 3):
            floor = show(floor_row(cluster.urls, replicas, seconds, warmup))
            for reactor in (None, "asyncio"):
                loop = "own thread" if reactor is None else "same loop"
                backend = show(
                    store_row(
                        workdir / f"js{replicas}{reactor}",
                        f"storeserver jetstream R{replicas} ({loop})",
                        [
                            "--backend",
                            "jetstream",
                            "--nats",
                            cluster.url,
                            "--replicas",
                            str(replicas),
                            "--backend-option",
                            f"prefix=bench_r{replicas}_{reactor or 'epoll'}",
                        ],
                        seconds,
                        warmup,
                        reactor,
                    )
                )
                ratios.append((f"R{replicas} ({loop})", backend.rate / floor.rate, backend, floor))
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    for label, ratio, backend, floor in ratios:
        print(
            f"jetstream backend {label}: {ratio:.2f}x the nats-py floor "
            f"({backend.rate:,.0f} vs {floor.rate:,.0f} acked writes/s; p99 "
            f"{backend.p99_ms:.1f} vs {floor.p99_ms:.1f} ms) -> "
            f"{'MET' if ratio >= 0.7 else 'NOT MET'} (target >= 0.70)"
        )
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs at the end")


# -- worker hosts as a cluster: an app routed through another host ---------------------------


async def worker_routing_rows(seconds: float, connections: int = 16) -> list[str]:
    """Two ``twistd workerhost --cluster`` processes on the three-node NATS cluster: B
    runs the apps, A none. HTTP requests for B's app through A's front end (routed) against
    B's own front end (direct), and a Locator resolving B's app on A (from the cluster) and
    on B (its own), in the same run."""
    from twisted.internet import threads

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import worker_bench as wb

    root = Path(tempfile.mkdtemp(prefix="txlc-"))
    bin_dir = Path(sys.executable).parent
    cluster = NatsCluster(root).start()
    children: list[Any] = []
    url = cluster.url

    def host(name: str, apps: Path) -> tuple[Any, int, int]:
        argv = [str(bin_dir / "twistd"), "-n", "--pidfile=", "workerhost", "--apps", str(apps)]
        argv += [
            "--runtime",
            str(root / f"run-{name}"),
            "--cluster",
            url,
            "--cluster-replicas",
            "3",
        ]
        argv += ["--locator", "tcp:0:interface=127.0.0.1", "--http", "tcp:0:interface=127.0.0.1"]
        child = wb.Child([*argv, "--cluster-id", f"bench-{name}"], root)
        children.append(child)
        locator = int(child.wait_for(r"locator listening on tcp:127\.0\.0\.1:(\d+)")[1])
        http = int(child.wait_for(r"HTTP front end listening on tcp:127\.0\.0\.1:(\d+)")[1])
        return child, locator, http

    try:
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
        cluster.stop()
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


def worker_hosts_routed(args: argparse.Namespace) -> None:
    """The worker rows, on the Twisted asyncio reactor (after the store rows)."""
    from twisted.internet import asyncioreactor

    asyncioreactor.install(asyncio.new_event_loop())
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    seconds = args.seconds or (2.0 if args.quick else 5.0)
    outcome: list[Any] = []
    d = Deferred.fromCoroutine(worker_routing_rows(seconds))
    d.addBoth(outcome.append)
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
    result = outcome[0] if outcome else None
    if not isinstance(result, list):
        if result is not None:
            result.printTraceback()
        raise SystemExit(1)
    print()
    print("\n".join(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s per row")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per row")
    parser.add_argument("--workdir", default=None, help="parent directory for data")
    args = parser.parse_args()
    store_on_jetstream(args)
    worker_hosts_routed(args)


if __name__ == "__main__":
    main()
