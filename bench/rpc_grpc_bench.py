"""gRPC reverse-RPC benchmark: txloom's gRPC transport against plain grpcio, same run.

    .venv/bin/python bench/rpc_grpc_bench.py               # full run
    .venv/bin/python bench/rpc_grpc_bench.py --quick       # about a minute
    .venv/bin/python bench/rpc_grpc_bench.py --plain-json  # plain grpcio rows only, as JSON

``bench/rpc_bench.py`` (every transport against AMP) takes its plain grpcio rows from
``--plain-json``; this script adds what is particular to gRPC.

The controller and the agent are separate processes on loopback. The controller keeps
``concurrency`` small echo calls in flight to one agent for a fixed time and reports
calls/s, p50/p99 latency and its own CPU time per call (user + system, from ``os.times``).

Rows:

* **txloom grpc**: ``Clients`` + ``GrpcServerTransport`` in the controller,
  ``Dispatcher`` + ``GrpcClientTransport`` in the agent, grpc.aio on the asyncio
  reactor's loop (``same``) or, under the epoll reactor, in a thread (``thread``).
* **plain grpcio**: the same ``Coordinator/Connect`` stream and the same messages written
  with grpc.aio alone (a dict of futures keyed by request id, one writer task), no Twisted:
  the peer the ratio is taken against (target: txloom >= 70% of its calls/s).
* **aperture-style agent**: the txloom controller with the plain grpcio agent, i.e. what a
  seed agent joining a txloom controller gets.

Then ``call_all`` latency to 10, 100 and 1,000 agents (``AGENTS_PER_PROCESS`` agents per
process, each with its own connection; target: p99 < 100 ms at 1,000).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PAYLOAD = b"x" * 32
TYPE_NAME = "bench.Echo"
TARGET_RATIO = 0.70
TARGET_CALL_ALL_P99_MS = 100


def pct(samples: list[float], p: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def summary(calls: int, elapsed: float, latencies: list[float], cpu_used: float) -> dict:
    return {
        "calls_per_s": calls / elapsed,
        "p50_ms": pct(latencies, 0.50) * 1000,
        "p99_ms": pct(latencies, 0.99) * 1000,
        "cpu_us_per_call": cpu_used / max(calls, 1) * 1e6,
    }


# =============================================================================================
# txloom roles
# =============================================================================================


def install_reactor(kind: str) -> None:
    if kind == "asyncio":
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
    else:
        from twisted.internet import epollreactor

        epollreactor.install()


def txloom_controller(args: argparse.Namespace) -> None:
    install_reactor(args.reactor)
    from twisted.internet import reactor
    from twisted.internet.defer import DeferredList, ensureDeferred

    from txloom.rpc import Clients, Raw
    from txloom.rpc.grpc import GrpcServerTransport

    clients = Clients(timeout=30)
    transport = GrpcServerTransport(clients, "tcp:0:interface=127.0.0.1")
    request = Raw(TYPE_NAME, PAYLOAD)
    results: list[dict] = []

    async def drive(concurrency: int, seconds: float) -> dict:
        latencies: list[float] = []
        calls = 0
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal calls
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                await clients.call("agent", request)
                latencies.append(time.perf_counter() - t0)
                calls += 1

        started, cpu0 = time.perf_counter(), cpu()
        await DeferredList(
            [ensureDeferred(worker()) for _ in range(concurrency)], fireOnOneErrback=True
        )
        return summary(calls, time.perf_counter() - started, latencies, cpu() - cpu0)

    async def main() -> None:
        await transport.start()
        print(f"READY {transport.port}", flush=True)
        await clients.when_joined("agent")
        for concurrency in args.concurrency:
            await drive(concurrency, args.warmup)
            row = await drive(concurrency, args.seconds)
            row["concurrency"] = concurrency
            results.append(row)
        print("RESULT " + json.dumps(results), flush=True)
        await transport.stop()

    def done(_: Any) -> None:
        reactor.stop()

    def failed(f: Any) -> None:
        print(f"ERROR {f.getTraceback()}", flush=True)
        reactor.stop()

    reactor.callWhenRunning(lambda: ensureDeferred(main()).addCallbacks(done, failed))
    reactor.run()


def txloom_agent(args: argparse.Namespace) -> None:
    install_reactor(args.reactor)
    from twisted.internet import reactor

    from txloom.rpc import Dispatcher, HandlerRegistry
    from txloom.rpc.grpc import GrpcClientTransport

    handlers = HandlerRegistry()
    handlers.register(TYPE_NAME, lambda payload: payload)
    agent = GrpcClientTransport(f"127.0.0.1:{args.port}", "agent", Dispatcher(handlers))
    reactor.callWhenRunning(agent.start)
    reactor.run()


def txloom_fanout(args: argparse.Namespace) -> None:
    """Controller: ``call_all`` latency as the agents grow to each of ``args.fanout``."""
    install_reactor(args.reactor)
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, ensureDeferred

    from txloom.rpc import Clients, Raw
    from txloom.rpc.grpc import GrpcServerTransport

    clients = Clients(timeout=30)
    transport = GrpcServerTransport(clients, "tcp:0:interface=127.0.0.1")
    request = Raw(TYPE_NAME, PAYLOAD)

    async def pause() -> None:
        d: Deferred = Deferred()
        reactor.callLater(0.02, d.callback, None)
        await d

    async def main() -> None:
        await transport.start()
        print(f"READY {transport.port}", flush=True)
        results = []
        for size in args.fanout:
            print(f"WANT {size}", flush=True)
            while len(clients.list()) < size:
                await pause()
            rounds = max(5, min(args.rounds, 20_000 // size))
            latencies = []
            cpu0 = cpu()
            for _ in range(rounds):
                t0 = time.perf_counter()
                answers = await clients.call_all(request)
                latencies.append(time.perf_counter() - t0)
                failed = [n for n, a in answers.items() if not isinstance(a, bytes)]
                if failed:
                    raise RuntimeError(f"call_all: {len(failed)} agents failed: {failed[:3]}")
            results.append(
                {
                    "agents": size,
                    "p50_ms": pct(latencies, 0.5) * 1000,
                    "p99_ms": pct(latencies, 0.99) * 1000,
                    "cpu_us_per_call": (cpu() - cpu0) / (rounds * size) * 1e6,
                }
            )
        print("RESULT " + json.dumps(results), flush=True)
        await transport.stop()

    def failed(f: Any) -> None:
        print(f"ERROR {f.getTraceback()}", flush=True)

    reactor.callWhenRunning(
        lambda: ensureDeferred(main()).addErrback(failed).addBoth(lambda _: reactor.stop())
    )
    reactor.run()


def txloom_agents(args: argparse.Namespace) -> None:
    """``args.count`` echo agents in this one process, sharing the reactor's loop."""
    install_reactor(args.reactor)
    from twisted.internet import reactor

    from txloom.rpc import Dispatcher, HandlerRegistry
    from txloom.rpc.grpc import GrpcClientTransport

    handlers = HandlerRegistry()
    handlers.register(TYPE_NAME, lambda payload: payload)
    dispatcher = Dispatcher(handlers)
    agents = [
        GrpcClientTransport(f"127.0.0.1:{args.port}", f"agent-{args.first + i}", dispatcher)
        for i in range(args.count)
    ]
    for agent in agents:
        reactor.callWhenRunning(agent.start)
    reactor.run()


# =============================================================================================
# plain grpcio roles (no Twisted, no txloom beyond the generated messages)
# =============================================================================================


def grpc_controller(args: argparse.Namespace) -> None:
    from google.protobuf import any_pb2, duration_pb2
    from grpc import aio

    from txloom.rpc.grpc.proto.aperture.rpc.v1 import rpc_pb2, rpc_pb2_grpc

    results: list[dict] = []

    class Coordinator(rpc_pb2_grpc.CoordinatorServicer):
        def __init__(self) -> None:
            self.finished = asyncio.Event()

        async def Connect(self, request_iterator: Any, context: Any) -> None:
            hello = await context.read()
            next_id = hello.hello.next_id
            pending: dict[int, asyncio.Future] = {}
            outgoing: asyncio.Queue = asyncio.Queue()

            async def reader() -> None:
                while True:
                    msg = await context.read()
                    if msg is aio.EOF:
                        return
                    fut = pending.pop(msg.response.id, None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg.response.payload)

            async def writer() -> None:
                while True:
                    await context.write(await outgoing.get())

            async def call() -> bytes:
                nonlocal next_id
                rid, next_id = next_id, next_id + 1
                fut = asyncio.get_running_loop().create_future()
                pending[rid] = fut
                outgoing.put_nowait(
                    rpc_pb2.ServerToClient(
                        request=rpc_pb2.Request(
                            id=rid,
                            timeout=duration_pb2.Duration(seconds=30),
                            payload=any_pb2.Any(
                                type_url="type.googleapis.com/" + TYPE_NAME, value=PAYLOAD
                            ),
                        )
                    )
                )
                return await fut

            async def drive(concurrency: int, seconds: float) -> dict:
                latencies: list[float] = []
                calls = 0
                stop_at = time.perf_counter() + seconds

                async def worker() -> None:
                    nonlocal calls
                    while time.perf_counter() < stop_at:
                        t0 = time.perf_counter()
                        await call()
                        latencies.append(time.perf_counter() - t0)
                        calls += 1

                started, cpu0 = time.perf_counter(), cpu()
                await asyncio.gather(*(worker() for _ in range(concurrency)))
                return summary(calls, time.perf_counter() - started, latencies, cpu() - cpu0)

            tasks = [asyncio.ensure_future(reader()), asyncio.ensure_future(writer())]
            try:
                for concurrency in args.concurrency:
                    await drive(concurrency, args.warmup)
                    row = await drive(concurrency, args.seconds)
                    row["concurrency"] = concurrency
                    results.append(row)
            finally:
                for task in tasks:
                    task.cancel()
                self.finished.set()

    async def main() -> None:
        server = aio.server(options=[("grpc.so_reuseport", 0)])
        coordinator = Coordinator()
        rpc_pb2_grpc.add_CoordinatorServicer_to_server(coordinator, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"READY {port}", flush=True)
        await coordinator.finished.wait()
        print("RESULT " + json.dumps(results), flush=True)
        await server.stop(0)

    asyncio.run(main())


def grpc_agent(args: argparse.Namespace) -> None:
    from grpc import aio

    from txloom.rpc.grpc.proto.aperture.rpc.v1 import rpc_pb2, rpc_pb2_grpc

    async def main() -> None:
        async with aio.insecure_channel(f"127.0.0.1:{args.port}") as channel:
            call = rpc_pb2_grpc.CoordinatorStub(channel).Connect()
            hello = rpc_pb2.ClientToServer.Hello(name="agent", next_id=0)
            await call.write(rpc_pb2.ClientToServer(hello=hello))
            while True:
                msg = await call.read()
                if msg is aio.EOF:
                    return
                if msg.WhichOneof("command") == "request":
                    req = msg.request
                    response = rpc_pb2.Response(id=req.id, payload=req.payload.value)
                    await call.write(rpc_pb2.ClientToServer(response=response))

    with contextlib.suppress(Exception):
        asyncio.run(main())


ROLES = {
    "txloom-controller": txloom_controller,
    "txloom-agent": txloom_agent,
    "grpc-controller": grpc_controller,
    "grpc-agent": grpc_agent,
    "txloom-fanout": txloom_fanout,
    "txloom-agents": txloom_agents,
}

#: Agents per process in the call_all rows.
AGENTS_PER_PROCESS = 250


# =============================================================================================
# Orchestration
# =============================================================================================


def spawn(role: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--role", role, *extra],
        stdout=subprocess.PIPE,
        text=True,
    )


def pair(controller: str, agent: str, reactor: str, args: argparse.Namespace) -> list[dict]:
    common = [
        "--reactor", reactor,
        "--seconds", str(args.seconds),
        "--warmup", str(args.warmup),
        "--concurrency", *map(str, args.concurrency),
    ]  # fmt: skip
    ctl = spawn(controller, *common)
    agent_proc = None
    try:
        assert ctl.stdout is not None
        line = ctl.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"{controller} did not start: {line!r}")
        port = line.split()[1]
        agent_proc = spawn(agent, *common, "--port", port)
        for line in ctl.stdout:
            if line.startswith("RESULT "):
                return json.loads(line[7:])
            if line.startswith("ERROR "):
                raise RuntimeError(line + ctl.stdout.read())
        raise RuntimeError(f"{controller} ended without a result")
    finally:
        for proc in (agent_proc, ctl):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def fanout(args: argparse.Namespace) -> list[dict]:
    ctl = spawn(
        "txloom-fanout",
        "--fanout", *map(str, args.fanout),
        "--rounds", str(args.rounds),
    )  # fmt: skip
    agents: list[subprocess.Popen] = []
    try:
        assert ctl.stdout is not None
        port, running = None, 0
        for line in ctl.stdout:
            if line.startswith("READY "):
                port = line.split()[1]
            elif line.startswith("WANT "):
                wanted = int(line.split()[1])
                while running < wanted:
                    count = min(AGENTS_PER_PROCESS, wanted - running)
                    where = ["--port", str(port), "--first", str(running)]
                    agents.append(spawn("txloom-agents", *where, "--count", str(count)))
                    running += count
            elif line.startswith("RESULT "):
                return json.loads(line[7:])
            elif line.startswith("ERROR "):
                raise RuntimeError(line + ctl.stdout.read())
        raise RuntimeError("the call_all controller ended without a result")
    finally:
        for proc in [*agents, ctl]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def table(rows: list[tuple[str, dict]], baseline: dict[int, float]) -> str:
    header = ("transport", "conc", "calls/s", "p50 ms", "p99 ms", "ctl CPU us/call", "vs grpcio")
    lines = [header]
    for name, r in rows:
        base = baseline.get(r["concurrency"])
        ratio = f"{r['calls_per_s'] / base:.2f}x" if base else ""
        lines.append(
            (
                name,
                str(r["concurrency"]),
                f"{r['calls_per_s']:,.0f}",
                f"{r['p50_ms']:.3f}",
                f"{r['p99_ms']:.3f}",
                f"{r['cpu_us_per_call']:.0f}",
                ratio,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = [
        " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    ]
    out.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=sorted(ROLES))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reactor", default="asyncio", choices=["asyncio", "epoll"])
    parser.add_argument("--port")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--fanout", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=200, help="call_all rounds per size")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument(
        "--repeat", type=int, default=2, help="runs per row, interleaved; the best is kept"
    )
    parser.add_argument(
        "--plain-json",
        action="store_true",
        help="only the plain grpcio rows, as one JSON line (bench/rpc_bench.py uses it)",
    )
    args = parser.parse_args()
    if args.role:
        ROLES[args.role](args)
        return
    if args.plain_json:
        print(json.dumps(pair("grpc-controller", "grpc-agent", "asyncio", args)))
        return
    if args.quick:
        args.seconds, args.warmup, args.repeat, args.rounds = 2.0, 0.5, 1, 50
    runs = [
        ("plain grpcio", "grpc-controller", "grpc-agent", "asyncio"),
        ("txloom grpc (same loop)", "txloom-controller", "txloom-agent", "asyncio"),
        ("txloom grpc (thread, epoll)", "txloom-controller", "txloom-agent", "epoll"),
        ("txloom ctl + grpcio agent", "txloom-controller", "grpc-agent", "asyncio"),
    ]
    best: dict[tuple[str, int], dict] = {}
    for attempt in range(args.repeat):
        for name, controller, agent, reactor in runs:
            print(f"  .. {name} (run {attempt + 1})", file=sys.stderr, flush=True)
            for r in pair(controller, agent, reactor, args):
                key = (name, r["concurrency"])
                if key not in best or r["calls_per_s"] > best[key]["calls_per_s"]:
                    best[key] = r
    rows = [(name, best[(name, c)]) for name, *_ in runs for c in args.concurrency]
    print("  .. call_all", file=sys.stderr, flush=True)
    fan = fanout(args)
    baseline = {r["concurrency"]: r["calls_per_s"] for name, r in rows if name == "plain grpcio"}
    print()
    print(
        f"txloom reverse RPC over gRPC ({'quick' if args.quick else 'full'}; "
        f"best of {args.repeat} runs of {args.seconds:g} s per row; echo of {len(PAYLOAD)} "
        f"bytes; Python "
        f"{sys.version.split()[0]}; grpcio {__import__('grpc').__version__})"
    )
    print(table(rows, baseline))
    for concurrency, base in sorted(baseline.items()):
        ours = [
            r["calls_per_s"]
            for n, r in rows
            if n.startswith("txloom grpc (same") and r["concurrency"] == concurrency
        ]
        if ours:
            verdict = "meets" if ours[0] >= TARGET_RATIO * base else "MISSES"
            print(
                f"concurrency {concurrency}: txloom grpc at {ours[0] / base:.0%} of plain grpcio "
                f"({verdict} the {TARGET_RATIO:.0%} target)"
            )
    print()
    print(f"call_all over gRPC (agents in processes of {AGENTS_PER_PROCESS}, one controller)")
    lines = [("agents", "p50 ms", "p99 ms", "ctl CPU us/agent-call")]
    for r in fan:
        lines.append(
            (
                f"{r['agents']:,}",
                f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['cpu_us_per_call']:.0f}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    for line in lines:
        print(" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    biggest = max(fan, key=lambda r: r["agents"])
    verdict = "meets" if biggest["p99_ms"] < TARGET_CALL_ALL_P99_MS else "MISSES"
    print(
        f"call_all to {biggest['agents']:,} agents: p99 {biggest['p99_ms']:.1f} ms ({verdict} the "
        f"{TARGET_CALL_ALL_P99_MS} ms target)"
    )


if __name__ == "__main__":
    main()
