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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s per row")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per row")
    parser.add_argument("--workdir", default=None, help="parent directory for data")
    args = parser.parse_args()
    store_on_jetstream(args)


if __name__ == "__main__":
    main()
