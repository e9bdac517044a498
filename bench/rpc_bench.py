"""Reverse-RPC benchmark: echo calls from a controller to agents in other processes.

    .venv/bin/python bench/rpc_bench.py             # full run
    .venv/bin/python bench/rpc_bench.py --quick     # shorter rows, 100 agents at most

For each transport (stream over TCP, long-poll, heartbeat, gRPC) and for Twisted AMP in the
same shape (the agent process dials the controller, the controller calls the agent):
calls/s, p50/p99 latency and the controller's CPU per call, at concurrency 1 and 64. The
gRPC transport is also compared with the same echo over a plain grpcio bidirectional
stream (no Twisted, no txloom: ``bench/rpc_grpc_bench.py``'s grpcio-only controller and
agent, each in its own process).
Then ``call_all`` latency to 10, 100 and 1,000 agents (stream transport, the agents
multiplexed over four processes). The controller is this process; agents run in child
processes (``--agent``). Ratios against AMP are measured in the same run. The reactor is
epoll (``twistd``'s default) unless ``--asyncio`` is given.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if "--asyncio" in sys.argv:
    from twisted.internet import asyncioreactor

    asyncioreactor.install()
else:
    from twisted.internet import epollreactor

    epollreactor.install()

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.protocol import Factory
from twisted.protocols import amp

from txloom.extensions import available, parse_options
from txloom.interfaces import IRPCTransportFactory
from txloom.rpc import Clients, Dispatcher, HandlerRegistry, rpc_type

TARGET_STREAM_VS_AMP_64 = 2.0
TARGET_STREAM_VS_AMP_1 = 1.0
TARGET_CALL_ALL_1000_P99_MS = 100.0
TARGET_GRPC_VS_GRPCIO = 0.7


@rpc_type("bench.Echo")
@dataclass
class Echo:
    data: bytes


Echo.__rpc_response__ = Echo  # type: ignore[attr-defined]


class AmpEcho(amp.Command):
    arguments = [(b"data", amp.String())]
    response = [(b"data", amp.String())]


class AmpAgent(amp.AMP):
    @AmpEcho.responder
    def echo(self, data: bytes) -> dict[str, bytes]:
        return {"data": data}


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] if ordered else float("nan")


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def load(call: Any, concurrency: int, seconds: float) -> dict[str, float]:
    """Keep ``concurrency`` calls in flight for ``seconds``; calls/s, latencies, CPU."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    start_cpu, start = cpu(), time.perf_counter()

    async def worker() -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t0)

    await defer.gatherResults([defer.ensureDeferred(worker()) for _ in range(concurrency)])
    elapsed = time.perf_counter() - start
    n = len(latencies)
    return {
        "calls/s": n / elapsed,
        "p50 ms": pct(latencies, 0.5) * 1000,
        "p99 ms": pct(latencies, 0.99) * 1000,
        "cpu us/call": (cpu() - start_cpu) / max(n, 1) * 1e6,
    }


def spawn_agents(url: str, count: int, prefix: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, __file__, "--agent", url, "--count", str(count), "--prefix", prefix]
    if "--asyncio" in sys.argv:
        argv.append("--asyncio")
    return subprocess.Popen(argv)


async def wait_for(check: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError("agents did not join in time")
        await task.deferLater(reactor, 0.02, lambda: None)


async def rpc_rows(name: str, listen: list[str], url: str, seconds: float) -> list[tuple]:
    factory = available(IRPCTransportFactory)[name]
    clients = Clients()
    server = factory.server(clients, parse_options(factory, listen, "-"))
    await server.start()
    if getattr(server, "listen", "") is None:  # an HTTP transport without its own port
        raise RuntimeError("HTTP transports need listen=")
    address = server.address if hasattr(server, "address") else None
    port = server.port if isinstance(getattr(server, "port", None), int) else address.port
    child = spawn_agents(url.format(port=port), 1, name)
    rows = []
    try:
        await wait_for(lambda: len(clients) == 1)
        agent = clients.list()[0].name
        payload = Echo(b"x" * 32)
        for concurrency in (1, 64):
            result = await load(lambda: clients.call(agent, payload), concurrency, seconds)
            rows.append((name, concurrency, result))
    finally:
        child.terminate()
        child.wait()
        await server.stop()
    return rows


async def amp_rows(seconds: float) -> list[tuple]:
    connected: defer.Deferred[amp.AMP] = defer.Deferred()

    class Controller(amp.AMP):
        def connectionMade(self) -> None:
            super().connectionMade()
            if not connected.called:
                connected.callback(self)

    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
        Factory.forProtocol(Controller)
    )
    child = spawn_agents(f"amp://127.0.0.1:{port.getHost().port}", 1, "amp")
    rows = []
    try:
        proto = await connected
        for concurrency in (1, 64):
            result = await load(
                lambda: proto.callRemote(AmpEcho, data=b"x" * 32), concurrency, seconds
            )
            rows.append(("AMP", concurrency, result))
    finally:
        child.terminate()
        child.wait()
        await port.stopListening()
    return rows


def plain_grpcio_rows(seconds: float) -> list[tuple]:
    """The echo over a plain grpcio bidirectional stream, in two processes of its own."""
    script = Path(__file__).with_name("rpc_grpc_bench.py")
    argv = [sys.executable, str(script), "--plain-json", "--seconds", str(seconds)]
    argv += ["--warmup", str(min(1.0, seconds / 2))]
    run = subprocess.run(argv, capture_output=True, text=True, check=True)
    rows = []
    for r in json.loads(run.stdout.strip().splitlines()[-1]):
        result = {
            "calls/s": r["calls_per_s"],
            "p50 ms": r["p50_ms"],
            "p99 ms": r["p99_ms"],
            "cpu us/call": r["cpu_us_per_call"],
        }
        rows.append(("grpcio", r["concurrency"], result))
    return rows


async def call_all_rows(sizes: list[int], rounds: int) -> list[tuple]:
    factory = available(IRPCTransportFactory)["stream"]
    clients = Clients()
    server = factory.server(
        clients, parse_options(factory, ["listen=tcp:0:interface=127.0.0.1"], "-")
    )
    await server.start()
    url = f"tcp://127.0.0.1:{server.address.port}"
    rows = []
    children: list[subprocess.Popen[bytes]] = []
    try:
        for size in sizes:
            per = [size // 4 + (1 if i < size % 4 else 0) for i in range(4)]
            children += [spawn_agents(url, n, f"s{size}p{i}-") for i, n in enumerate(per) if n]
            await wait_for(lambda size=size: len(clients) == size)
            latencies = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                results = await clients.call_all(Echo(b"x"), timeout=30)
                latencies.append(time.perf_counter() - t0)
                assert all(isinstance(r, Echo) for r in results.values()), results
            rows.append((size, pct(latencies, 0.5) * 1000, pct(latencies, 0.99) * 1000))
            for child in children:
                child.terminate()
                child.wait()
            children = []
            await wait_for(lambda: len(clients) == 0)
    finally:
        for child in children:
            child.terminate()
        await server.stop()
    return rows


async def main(args: argparse.Namespace) -> None:
    seconds = 1.0 if args.quick else 3.0
    rows = []
    rows += await amp_rows(seconds)
    rows += await rpc_rows(
        "stream", ["listen=tcp:0:interface=127.0.0.1"], "tcp://127.0.0.1:{port}", seconds
    )
    for mode in ("longpoll", "heartbeat"):
        options = ["listen=tcp:0:interface=127.0.0.1", "interval=0.05"]
        rows += await rpc_rows(mode, options, f"{mode}+http://127.0.0.1:{{port}}/rpc", seconds)
    rows += await rpc_rows(
        "grpc", ["listen=tcp:0:interface=127.0.0.1"], "grpc://127.0.0.1:{port}", seconds
    )
    rows += plain_grpcio_rows(seconds)
    header = ("transport", "conc", "calls/s", "p50 ms", "p99 ms", "ctl cpu us/call")
    print("\n{:<10} {:>4} {:>9} {:>8} {:>8} {:>16}".format(*header))
    for name, concurrency, r in rows:
        print(
            f"{name:<10} {concurrency:>4} {r['calls/s']:>9.0f} {r['p50 ms']:>8.2f} "
            f"{r['p99 ms']:>8.2f} {r['cpu us/call']:>16.0f}"
        )
    by = {(n, c): r["calls/s"] for n, c, r in rows}
    print("\nratios against AMP (same run, same two-process shape):")
    for name in ("stream", "longpoll", "heartbeat", "grpc", "grpcio"):
        for concurrency in (1, 64):
            ratio = by[(name, concurrency)] / by[("AMP", concurrency)]
            print(f"  {name:<10} c{concurrency:<3} {ratio:5.2f}x AMP")
    mode = "the reactor's loop" if "--asyncio" in sys.argv else "a thread (epoll reactor)"
    print(f"gRPC transport against plain grpcio (same run; grpc.aio on {mode}):")
    for concurrency in (1, 64):
        ratio = by[("grpc", concurrency)] / by[("grpcio", concurrency)]
        met = "met" if ratio >= TARGET_GRPC_VS_GRPCIO else "MISSED"
        print(
            f"  c{concurrency:<3} {ratio:5.2f}x grpcio (target >= {TARGET_GRPC_VS_GRPCIO}: {met})"
        )
    r64 = by[("stream", 64)] / by[("AMP", 64)]
    r1 = by[("stream", 1)] / by[("AMP", 1)]
    met64 = "met" if r64 >= TARGET_STREAM_VS_AMP_64 else "MISSED"
    met1 = "met" if r1 >= TARGET_STREAM_VS_AMP_1 else "MISSED"
    print(f"  target: stream >= {TARGET_STREAM_VS_AMP_64}x AMP at c64: {met64}", end="")
    print(f"; >= {TARGET_STREAM_VS_AMP_1}x at c1: {met1}")
    sizes = [10, 100] if args.quick else [10, 100, 1000]
    header = ("call_all", "agents", "p50 ms", "p99 ms")
    print("\n{:<10} {:>6} {:>8} {:>8}   (stream, agents in 4 processes)".format(*header))
    for size, p50, p99 in await call_all_rows(sizes, 10 if args.quick else 30):
        note = ""
        if size == 1000:
            note = "  target p99 < 100 ms: " + (
                "met" if p99 < TARGET_CALL_ALL_1000_P99_MS else "MISSED"
            )
        print(f"{'':<10} {size:>6} {p50:>8.1f} {p99:>8.1f}{note}")


# -- agent processes ----------------------------------------------------------------------


async def agent_main(url: str, count: int, prefix: str) -> None:
    if url.startswith("amp://"):
        host, port = url[6:].split(":")
        await clientFromString(reactor, f"tcp:host={host}:port={port}").connect(
            Factory.forProtocol(AmpAgent)
        )
        await defer.Deferred()
    from txloom.rpc.transports.factories import factory_for_url

    handlers = HandlerRegistry()
    handlers.register(Echo, lambda request: request)
    factory = factory_for_url(url)
    options = None
    if factory.name in ("heartbeat", "longpoll"):
        options = parse_options(factory, ["interval=0.05"], "-")
    dispatcher = Dispatcher(handlers)
    for i in range(count):
        await factory.client(url, f"{prefix}{i}", dispatcher, None, options).start()
    await defer.Deferred()


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--asyncio", action="store_true", help="run on the asyncio reactor (default: epoll)"
    )
    parser.add_argument("--agent", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="agent-", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.agent:
        task.react(lambda _: defer.ensureDeferred(agent_main(args.agent, args.count, args.prefix)))
    else:
        task.react(lambda _: defer.ensureDeferred(main(args)))


if __name__ == "__main__":
    run()
