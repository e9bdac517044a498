"""Nested streams benchmark: the model's three loads, against plain TCP in the same run.

    python bench/streams_bench.py            # the model's sizes (several minutes)
    python bench/streams_bench.py --quick    # a tenth of the frames (under a minute)

The server runs in a child process (this file with ``--serve``): a ``StreamServer`` with
three services and, beside it, a plain Twisted TCP sender that writes the same frames
(``u64 length | payload``) on one connection per source, with no protocol on top: the floor
this design stands on. This process is the client. Loads:

* connect: requests of 1 source with 1 empty frame, 16 in flight: requests/s, p50/p99;
* heavy: 10 sources x 500 frames x 1 MiB: MB/s (plain TCP: 10 connections, same bytes);
* flood: 1,000 sources x 5,000 frames x 64 B: frames/s (plain TCP: 1,000 connections).

CPU per frame (or request) is each process's user+system time over the load divided by
frames, for the server (the child) and the client (this process), and for the plain TCP
pair beside it: on a shared machine, wall-clock rates move with the neighbours' load, CPU
per frame much less.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
MIB = 1024 * 1024
FLOOD_PAYLOAD = b"f" * 64


# -- server process --------------------------------------------------------------------------


def serve() -> None:
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol

    from txloom.streams import Source, StreamServer
    from txloom.wire.framing import U64_LE

    heavy_frame = os.urandom(MIB)

    def frames(count: int, payload: bytes):
        return (payload for _ in range(count))

    def connect(body: bytes, tags: dict[str, str]) -> list[Source]:
        return [Source(b"c", [b""])]

    def load(body: bytes, tags: dict[str, str]):
        sources, count, size = (int(x) for x in body.split(b","))
        payload = heavy_frame[:size] if size > 64 else FLOOD_PAYLOAD[:size]
        return (Source(b"%d" % i, frames(count, payload)) for i in range(sources))

    class PlainSender(Protocol):
        """Reads ``count,size\\n`` and writes that many frames, as fast as TCP takes them."""

        def connectionMade(self) -> None:
            self.transport.setTcpNoDelay(True)
            self.buffer = b""

        def dataReceived(self, data: bytes) -> None:
            self.buffer += data
            if b"\n" not in self.buffer:
                return
            count, size = (int(x) for x in self.buffer.split(b"\n")[0].split(b","))
            payload = heavy_frame[:size] if size > 64 else FLOOD_PAYLOAD[:size]
            frame = U64_LE.pack(size) + payload
            self.remaining = count
            self.frame = frame
            self.per_write = max(1, 65536 // len(frame))
            self.transport.registerProducer(self, True)
            self.paused = False
            self.resumeProducing()

        def resumeProducing(self) -> None:
            self.paused = False
            while self.remaining and not self.paused:
                n = min(self.per_write, self.remaining)
                self.remaining -= n
                self.transport.write(self.frame * n)
            if not self.remaining:
                self.transport.unregisterProducer()
                self.transport.loseConnection()

        def pauseProducing(self) -> None:
            self.paused = True

        def stopProducing(self) -> None:
            self.remaining = 0

    server = StreamServer(
        {"connect": connect, "load": load}, endpoint="tcp:0:interface=127.0.0.1:backlog=2048"
    )
    plain = reactor.listenTCP(0, Factory.forProtocol(PlainSender), 2048, "127.0.0.1")

    def started(_: Any) -> None:
        print(f"ports {server.address[1]} {plain.getHost().port}", flush=True)

    server.listen().addCallback(started)
    reactor.run()


# -- client process ----------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


async def bench(args: argparse.Namespace, child: subprocess.Popen, ports: tuple[int, int]) -> None:
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, DeferredList
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Protocol

    from txloom.streams import StaticResolver, StreamClient

    stream_port, plain_port = ports
    endpoint = f"tcp:127.0.0.1:{stream_port}"
    client = StreamClient(
        StaticResolver({"connect": [endpoint], "load": [endpoint]}), source_buffer=128
    )
    rows: list[tuple[str, str, str, str]] = []
    scale = 10 if args.quick else 1

    # connect
    latencies: list[float] = []
    loads = set(args.only or ("connect", "heavy", "flood"))
    requests = 2000 // scale * 2

    async def one() -> None:
        start = time.perf_counter()
        answer = await client.post("connect", b"").collect()
        assert answer == [(b"c", [b""])]
        latencies.append(time.perf_counter() - start)

    async def worker(n: int) -> None:
        for _ in range(n):
            await one()

    def meter() -> Any:
        """Wall time and both processes' CPU since the call: ``stop()`` -> the three."""
        t0, server0, client0 = time.perf_counter(), cpu_seconds(child.pid), own_cpu_seconds()

        def stop() -> tuple[float, float, float]:
            return (
                time.perf_counter() - t0,
                cpu_seconds(child.pid) - server0,
                own_cpu_seconds() - client0,
            )

        return stop

    if "connect" in loads:
        stop = meter()
        await DeferredList([Deferred.fromCoroutine(worker(requests // 16)) for _ in range(16)])
        elapsed, server_cpu, client_cpu = stop()
        n = len(latencies)
        rows.append(
            (
                "connect (1 source, 1 empty frame)",
                f"{n / elapsed:,.0f} req/s",
                f"p50 {percentile(latencies, 0.5) * 1e3:.1f} ms, "
                f"p99 {percentile(latencies, 0.99) * 1e3:.1f} ms",
                f"{server_cpu / n * 1e6:.0f} / {client_cpu / n * 1e6:.0f} us/request",
            )
        )

    async def streams(sources: int, count: int, size: int) -> tuple[float, float, float]:
        stop = meter()
        request = client.post("load", b"%d,%d,%d" % (sources, count, size))
        received = 0

        async def drain(source: Any) -> int:
            n = 0
            while batch := await source.read_batch():
                n += len(batch)
            return n

        waits = []
        async for source in request:
            waits.append(Deferred.fromCoroutine(drain(source)))
        for result in await DeferredList(waits, fireOnOneErrback=True):
            received += result[1]
        assert received == sources * count, (received, sources * count)
        return stop()

    class PlainReceiver(Protocol):
        def __init__(self) -> None:
            self.bytes = 0
            self.done: Deferred[int] = Deferred()

        def dataReceived(self, data: bytes) -> None:
            self.bytes += len(data)

        def connectionLost(self, reason: Any = None) -> None:
            self.done.callback(self.bytes)

    async def plain(sources: int, count: int, size: int) -> tuple[float, float, float]:
        stop = meter()
        receivers = []
        for _ in range(sources):
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", plain_port)
            receiver = await connectProtocol(endpoint, PlainReceiver())
            receiver.transport.write(b"%d,%d\n" % (count, size))
            receivers.append(receiver.done)
        total = sum(r for _, r in await DeferredList(receivers))
        assert total == sources * count * (size + 8)
        return stop()

    def cpu_text(server_cpu: float, client_cpu: float, frames: int, digits: int) -> str:
        return f"{server_cpu / frames * 1e6:.{digits}f} / {client_cpu / frames * 1e6:.{digits}f}"

    heavy = (10, 500 // scale, MIB)
    if "heavy" in loads:
        elapsed, server_cpu, client_cpu = await streams(*heavy)
        plain_elapsed, plain_server, plain_client = await plain(*heavy)
        mb = heavy[0] * heavy[1] * heavy[2] / 1e6
        frames = heavy[0] * heavy[1]
        rows.append(
            (
                f"heavy (10 x {heavy[1]} x 1 MiB)",
                f"{mb / elapsed:,.0f} MB/s",
                f"plain TCP {mb / plain_elapsed:,.0f} MB/s: ratio {plain_elapsed / elapsed:.2f} "
                f"(plain CPU {cpu_text(plain_server, plain_client, frames, 0)})",
                f"{cpu_text(server_cpu, client_cpu, frames, 0)} us/frame",
            )
        )
    flood = (1000, 5000 // scale, 64)
    if "flood" in loads:
        elapsed, server_cpu, client_cpu = await streams(*flood)
        plain_elapsed, plain_server, plain_client = await plain(*flood)
        frames = flood[0] * flood[1]
        rows.append(
            (
                f"flood (1000 x {flood[1]} x 64 B)",
                f"{frames / elapsed:,.0f} frames/s",
                f"plain TCP {frames / plain_elapsed:,.0f} frames/s: "
                f"ratio {plain_elapsed / elapsed:.2f} "
                f"(plain CPU {cpu_text(plain_server, plain_client, frames, 2)})",
                f"{cpu_text(server_cpu, client_cpu, frames, 2)} us/frame",
            )
        )
    print()
    print(f"{'load':34} {'result':>18}  {'compared':72} CPU server / client")
    for name, result, compared, cpu in rows:
        print(f"{name:34} {result:>18}  {compared:72} {cpu}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the frames")
    parser.add_argument(
        "--only", action="append", choices=("connect", "heavy", "flood"), help="run this load"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    child = subprocess.Popen(
        [sys.executable, str(HERE), "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        line = child.stdout.readline().split()  # type: ignore[union-attr]
        ports = (int(line[1]), int(line[2]))
        from twisted.internet import reactor
        from twisted.internet.defer import Deferred

        failures: list[Any] = []

        def run() -> None:
            d = Deferred.fromCoroutine(bench(args, child, ports))
            d.addErrback(failures.append).addBoth(lambda _: reactor.stop())

        reactor.callWhenRunning(run)
        reactor.run()
        if failures:
            failures[0].printTraceback()
            sys.exit(1)
    finally:
        child.terminate()
        child.wait(10)


if __name__ == "__main__":
    main()
