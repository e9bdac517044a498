"""Worker host benchmark: invoke round trips, streaming, HTTP through the front end.

    python bench/worker_bench.py            # about 2 minutes
    python bench/worker_bench.py --quick    # under a minute

Starts ``twistd workerhost`` as a child process with two apps (this file as a worker, and
the example WSGI hello app through ``python -m txloom.worker.http``), and a plain
``twisted.web.wsgi`` server for the same WSGI app as the peer to compare with. Measures:

* invoke round trips/s and p50/p99 latency for a 100-byte echo at concurrency 1, 16, 128
  (client library in this process, over the Locator-resolved app service);
* streaming throughput of 64 KiB chunks, worker -> client and client -> worker;
* HTTP requests/s of keep-alive HTTP/1.1 clients (separate load processes) through the
  host's front end, and against the direct ``twisted.web.wsgi`` server in the same run.

Every process shares the machine, so the numbers include the load generators' cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
CHUNK = 64 * 1024
ECHO_PAYLOAD = b"x" * 100


# -- worker mode: the app under test ---------------------------------------------------------


def run_worker() -> None:
    from txloom.worker import Request, Response, Worker

    worker = Worker([a for a in sys.argv[1:] if a != "--as-worker"])

    @worker.on("echo")
    async def echo(request: Request, response: Response) -> None:
        async for chunk in request:
            response.write(chunk)

    @worker.on("source")
    async def source(request: Request, response: Response) -> None:
        count = int(await request.read_all())
        block = b"s" * CHUNK
        for _ in range(count):
            response.write(block)

    @worker.on("sink")
    async def sink(request: Request, response: Response) -> None:
        size = 0
        async for chunk in request:
            size += len(chunk)
        response.write(str(size))

    worker.run()


# -- direct mode: the same WSGI app on plain twisted.web --------------------------------------


def run_direct() -> None:
    from twisted.internet import reactor
    from twisted.python.threadpool import ThreadPool
    from twisted.web.server import Site
    from twisted.web.wsgi import WSGIResource

    from txloom.worker.examples.hello_wsgi import app

    pool = ThreadPool(minthreads=1, maxthreads=10, name="wsgi")
    reactor.callWhenRunning(pool.start)
    reactor.addSystemEventTrigger("during", "shutdown", pool.stop)

    class QuietSite(Site):
        def log(self, request: Any) -> None:
            pass

    port = reactor.listenTCP(0, QuietSite(WSGIResource(reactor, pool, app)), interface="127.0.0.1")
    print(f"direct listening on {port.getHost().port}", flush=True)
    reactor.run()


# -- HTTP load mode: keep-alive HTTP/1.1 clients on raw asyncio streams -----------------------


async def _http_client(
    host: str, port: int, path: str, deadline: float, latencies: list[float]
) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    done = 0
    loop = asyncio.get_running_loop()
    try:
        while loop.time() < deadline:
            started = loop.time()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected response {head[:60]!r}")
            match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            if match:
                await reader.readexactly(int(match[1]))
            else:  # chunked
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            latencies.append(loop.time() - started)
            done += 1
    finally:
        writer.close()
    return done


def run_http_load(host: str, port: int, path: str, connections: int, seconds: float) -> None:
    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        latencies: list[float] = []
        started = loop.time()
        counts = await asyncio.gather(
            *(
                _http_client(host, port, path, started + seconds, latencies)
                for _ in range(connections)
            )
        )
        return {"requests": sum(counts), "seconds": loop.time() - started, "latencies": latencies}

    print(json.dumps(asyncio.run(main())))


def http_load(port: int, path: str, processes: int, connections: int, seconds: float) -> dict:
    """Run ``processes`` load processes of ``connections`` each; merge their results."""
    argv = [
        sys.executable,
        str(HERE),
        "--http-load",
        str(port),
        path,
        str(connections),
        str(seconds),
    ]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    results = [json.loads(p.communicate(timeout=seconds + 60)[0]) for p in procs]
    latencies = sorted(x for r in results for x in r["latencies"])
    requests = sum(r["requests"] for r in results)
    elapsed = max(r["seconds"] for r in results)
    return {
        "rate": requests / elapsed,
        "p50": percentile(latencies, 0.50),
        "p99": percentile(latencies, 0.99),
    }


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


# -- the driver ---------------------------------------------------------------------------------


class Child:
    """A child process whose output lines are kept (read on a thread) and searched.

    Reading on a thread also keeps draining the pipe: a chatty child (a host logging at
    debug level, say) would otherwise block on a full pipe and stall the benchmark.
    """

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip())
                self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        index = 0
        with self._changed:
            while True:
                while index < len(self.lines):
                    if match := regex.search(self.lines[index]):
                        return match
                    index += 1
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    break
                self._changed.wait(0.5)
        raise RuntimeError(
            f"no {pattern!r} from {self.proc.args[:3]}:\n" + "\n".join(self.lines[-20:])
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def write_apps(apps: Path, http_pool: int) -> None:
    apps.mkdir()
    profile = {"pool-limit": 1, "concurrency": 256, "queue-limit": 1000}
    (apps / "bench.json").write_text(
        json.dumps(
            {
                "name": "bench",
                "command": [sys.executable, str(HERE), "--as-worker"],
                "profile": profile,
            }
        )
    )
    (apps / "hello.json").write_text(
        json.dumps(
            {
                "name": "hello",
                "command": [
                    sys.executable,
                    "-m",
                    "txloom.worker.http",
                    "--wsgi",
                    "txloom.worker.examples.hello_wsgi:app",
                ],
                "profile": {**profile, "pool-limit": http_pool},
            }
        )
    )


async def invoke_bench(service: Any, concurrency: int, seconds: float) -> dict[str, float]:
    from twisted.internet import reactor

    latencies: list[float] = []
    deadline = reactor.seconds() + seconds

    async def loop() -> None:
        while reactor.seconds() < deadline:
            started = time.perf_counter()
            channel = service.enqueue("echo")
            channel.tx.write(ECHO_PAYLOAD)
            channel.tx.close()
            reply = await channel.rx.read()
            if reply != ECHO_PAYLOAD or await channel.rx.read() is not None:
                raise RuntimeError(f"bad echo {reply!r}")
            latencies.append(time.perf_counter() - started)

    from twisted.internet.defer import Deferred, gatherResults

    started = time.perf_counter()
    await gatherResults([Deferred.fromCoroutine(loop()) for _ in range(concurrency)])
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rate": len(latencies) / elapsed,
        "p50": percentile(latencies, 0.5),
        "p99": percentile(latencies, 0.99),
    }


async def stream_bench(service: Any, chunks: int) -> dict[str, float]:
    started = time.perf_counter()
    channel = service.enqueue("source")
    channel.tx.write(str(chunks))
    channel.tx.close()
    received = 0
    async for chunk in channel.rx:
        received += len(chunk)
    down = time.perf_counter() - started
    assert received == chunks * CHUNK, received

    block = b"u" * CHUNK
    started = time.perf_counter()
    channel = service.enqueue("sink")
    for _ in range(chunks):
        channel.tx.write(block)
    channel.tx.close()
    size = int(await channel.rx.read())
    up = time.perf_counter() - started
    assert size == chunks * CHUNK, size
    mb = chunks * CHUNK / 1e6
    return {
        "down": mb / down,
        "up": mb / up,
        "down_chunks": chunks / down,
        "up_chunks": chunks / up,
    }


def row(name: str, conc: str, rate: str, *cells: str) -> str:
    p50, p99, extra = (*cells, "", "", "")[:3]
    return f"| {name:<38} | {conc:>5} | {rate:>12} | {p50:>8} | {p99:>8} | {extra:<14} |"


async def drive(
    args: argparse.Namespace, locator: tuple[str, int], http_port: int, direct_port: int
) -> list[str]:
    from txloom.worker.client import connect

    lines = [
        row("test", "conc", "ops/s", "p50 ms", "p99 ms", "throughput"),
        "|" + "|".join("-" * w for w in (40, 7, 14, 10, 10, 16)) + "|",
    ]
    service = await connect("bench", locator)
    try:
        await invoke_bench(service, 4, 0.5)  # warm-up: the worker is spawned on demand
        for concurrency in (1, 16, 128):
            r = await invoke_bench(service, concurrency, args.seconds)
            lines.append(
                row(
                    "invoke echo 100 B (client library)",
                    str(concurrency),
                    f"{r['rate']:,.0f}",
                    f"{r['p50'] * 1e3:.2f}",
                    f"{r['p99'] * 1e3:.2f}",
                )
            )
            print(lines[-1], flush=True)
        s = await stream_bench(service, args.chunks)
        lines.append(
            row(
                "stream 64 KiB chunks worker -> client",
                "1",
                f"{s['down_chunks']:,.0f}",
                "",
                "",
                f"{s['down']:,.0f} MB/s",
            )
        )
        lines.append(
            row(
                "stream 64 KiB chunks client -> worker",
                "1",
                f"{s['up_chunks']:,.0f}",
                "",
                "",
                f"{s['up']:,.0f} MB/s",
            )
        )
        print(lines[-2], lines[-1], sep="\n", flush=True)
    finally:
        service.close()

    from twisted.internet import threads

    results = {}
    for name, port, path in (
        ("HTTP hello: host front end -> worker", http_port, "/hello/"),
        ("HTTP hello: twisted.web.wsgi direct", direct_port, "/"),
    ):
        await threads.deferToThread(http_load, port, path, 1, 4, 1.0)  # warm-up
        r = await threads.deferToThread(
            http_load, port, path, args.load_processes, args.connections, args.seconds
        )
        results[name] = r
        conns = str(args.load_processes * args.connections)
        lines.append(
            row(name, conns, f"{r['rate']:,.0f}", f"{r['p50'] * 1e3:.2f}", f"{r['p99'] * 1e3:.2f}")
        )
        print(lines[-1], flush=True)
    host_rate, direct_rate = (r["rate"] for r in results.values())
    lines.append("")
    lines.append(f"HTTP ratio host/direct: {host_rate / direct_rate:.0%} (target >= 50%)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short runs (under a minute)")
    parser.add_argument("--seconds", type=float, help="seconds per measurement")
    parser.add_argument("--chunks", type=int, help="64 KiB chunks per streaming run")
    parser.add_argument(
        "--connections", type=int, default=16, help="HTTP connections per load process"
    )
    parser.add_argument("--load-processes", type=int, default=2, help="HTTP load processes")
    parser.add_argument("--http-pool", type=int, default=1, help="pool-limit of the WSGI app")
    args = parser.parse_args()
    args.seconds = args.seconds or (3.0 if args.quick else 10.0)
    args.chunks = args.chunks or (500 if args.quick else 2000)

    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    root = Path(tempfile.mkdtemp(prefix="txlb-"))
    write_apps(root / "apps", args.http_pool)
    twistd = str(Path(sys.executable).parent / "twistd")
    host = Child(
        [
            twistd,
            "-n",
            "--pidfile=",
            "workerhost",
            "--apps",
            str(root / "apps"),
            "--runtime",
            str(root / "run"),
            "--locator",
            "tcp:0:interface=127.0.0.1",
            "--http",
            "tcp:0:interface=127.0.0.1",
        ],
        root,
    )
    direct = Child([sys.executable, str(HERE), "--serve-direct"], root)
    outcome: list[Any] = []
    try:
        locator = int(host.wait_for(r"locator listening on tcp:127\.0\.0\.1:(\d+)")[1])
        http_port = int(host.wait_for(r"HTTP front end listening on tcp:127\.0\.0\.1:(\d+)")[1])
        direct_port = int(direct.wait_for(r"direct listening on (\d+)")[1])
        print(
            f"worker host benchmark: {args.seconds:g}s per row, {os.cpu_count()} CPUs, "
            f"Python {sys.version.split()[0]}",
            flush=True,
        )
        d = Deferred.fromCoroutine(drive(args, ("127.0.0.1", locator), http_port, direct_port))
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())
        reactor.run()
    finally:
        host.stop()
        direct.stop()
        shutil.rmtree(root, ignore_errors=True)
    result = outcome[0] if outcome else None
    if not isinstance(result, list):
        if result is not None:
            result.printTraceback()
        raise SystemExit(1)
    print()
    print("\n".join(result))


if __name__ == "__main__":
    if "--as-worker" in sys.argv:
        run_worker()
    elif "--serve-direct" in sys.argv:
        run_direct()
    elif sys.argv[1:2] == ["--http-load"]:
        _, _, port, path, conns, secs = sys.argv
        run_http_load("127.0.0.1", int(port), path, int(conns), float(secs))
    else:
        main()
