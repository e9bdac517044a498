"""Bus benchmark: in-process delivery, the WebSocket mesh between two processes, NATS.

    .venv/bin/python bench/bus_bench.py            # full run
    .venv/bin/python bench/bus_bench.py --quick    # under a minute
    .venv/bin/python bench/bus_bench.py --no-nats  # skip the NATS rows

Prints one table. In-process rows count whole sends (a message is made, sent, delivered);
the mesh and NATS rows run a second node in a child process on loopback, with credit-based
pacing (the receiver acknowledges every ``ACK_EVERY`` messages) so that nothing is dropped,
and measure one-way latency with the shared monotonic clock plus request/reply round trips.

Grav's numbers cannot be measured here (no Go toolchain on this machine); they are printed
as a reference ratio only, labelled as such.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

from twisted.internet import asyncioreactor

asyncioreactor.install()

from twisted.internet import reactor, task  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402

from txloom.bus import Bus, Message  # noqa: E402
from txloom.bus.mesh import WebSocketMesh  # noqa: E402

#: Grav v0.5 (Go) on this kind of machine, measured elsewhere: reference, not this run.
GRAV_MSGS_1_POD = 354_000
GRAV_DELIVERIES_10_PODS = 1_000_000

TARGET_DELIVERIES_10_PODS = 300_000
TARGET_MESH = 20_000

ACK_EVERY = 2_000
WINDOW = 10_000
PAYLOAD = 100
_STAMP = struct.Struct(">Q")
BENCH_TYPES = ("bench.data", "bench.ack", "bench.done", "bench.ping", "bench.pong", "bench.reset")


def pct(samples: list[float], p: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def turn() -> Deferred:
    return task.deferLater(reactor, 0, lambda: None)


# =============================================================================================
# In-process
# =============================================================================================


async def in_process(pods: int, messages: int, chunk: int = 1_000) -> tuple[float, float]:
    """(messages/s, deliveries/s) for ``messages`` sends to ``pods`` receiving pods."""
    bus = Bus()
    delivered = [0]

    def count(_: Message) -> None:
        delivered[0] += 1

    for _ in range(pods):
        bus.connect().on(count)
    sender = bus.connect()
    send = sender.send
    new = Message.new
    expected = pods * messages
    started = time.perf_counter()
    sent = 0
    while sent < messages:
        for _ in range(min(chunk, messages - sent)):
            send(new("bench.data", b"x" * 16))
        sent += chunk
        await turn()
    while delivered[0] < expected:
        await turn()
    elapsed = time.perf_counter() - started
    await bus.stop()
    return messages / elapsed, expected / elapsed


async def in_process_rtt(rounds: int) -> list[float]:
    bus = Bus()
    responder = bus.connect()
    responder.on_type("q", lambda m: responder.reply_to(m, Message.new("a")))
    asker = bus.connect()
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        await asker.send(Message.new("q")).wait_until(5)
        samples.append((time.perf_counter() - t0) * 1e6)
    await bus.stop()
    return samples


# =============================================================================================
# The remote node (child process)
# =============================================================================================


def run_child(nats_url: str | None) -> None:
    """A node that counts ``bench.data``, acknowledges, answers pings, reports when done."""

    async def main() -> None:
        bus = Bus()
        mesh = WebSocketMesh(bus, listen="tcp:0:interface=127.0.0.1", keepalive=0)
        await mesh.start()
        if nats_url:
            from txloom.bus.bridge.nats import NatsBridge

            await NatsBridge(bus, nats_url, BENCH_TYPES).start()
        pod = bus.connect()
        state = {"expected": 0, "count": 0, "latencies": []}
        clock = time.monotonic_ns

        def handle(msg: Message) -> None:
            kind = msg.msg_type
            if kind == "bench.data":
                state["count"] += 1
                n = state["count"]
                if n % 10 == 0:
                    (sent,) = _STAMP.unpack_from(msg.data)
                    state["latencies"].append((clock() - sent) / 1000)
                if n % ACK_EVERY == 0:
                    pod.send(Message.new("bench.ack", str(n)))
                if n == state["expected"]:
                    lat = state["latencies"]
                    report = {"p50": pct(lat, 0.5), "p99": pct(lat, 0.99), "count": n}
                    pod.send(Message.new("bench.done", json.dumps(report)))
            elif kind == "bench.ping":
                pod.reply_to(msg, Message.new("bench.pong"))
            elif kind == "bench.reset":
                state.update(expected=int(msg.data), count=0, latencies=[])

        pod.on(handle)
        print(f"READY {mesh.listening_port}", flush=True)
        await Deferred()  # until killed

    task.react(lambda _: Deferred.fromCoroutine(main()))


class Child:
    def __init__(self, nats_url: str | None = None) -> None:
        args = [sys.executable, __file__, "--child"]
        if nats_url:
            args += ["--nats", nats_url]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("READY"):
                self.port = int(line.split()[1])
                break
        else:
            raise SystemExit("the child node did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def remote(
    bus: Bus, messages: int, rtt_rounds: int, paced: int | None = None
) -> dict[str, float]:
    """Throughput, one-way latency (from the child) and round trips over whatever links
    ``bus`` to the child (mesh or NATS). With ``paced`` (messages/s), send at that rate
    instead of as fast as the window allows: the latency of a busy but unsaturated link."""
    pod = bus.connect()
    acked = [0]
    done: Deferred = Deferred()

    def handle(msg: Message) -> None:
        if msg.msg_type == "bench.ack":
            acked[0] = int(msg.data)
        elif msg.msg_type == "bench.done" and not done.called:
            done.callback(json.loads(msg.data))

    pod.on_type(("bench.ack", "bench.done"), handle)
    # warm up the path, then reset the counter
    await pod.send(Message.new("bench.ping")).wait_until(10)
    pod.send(Message.new("bench.reset", str(messages)))
    await turn()
    pad = b"x" * (PAYLOAD - _STAMP.size)
    clock = time.monotonic_ns
    send = pod.send
    new = Message.new
    started = time.perf_counter()
    sent = 0
    tick = 0.005
    burst = max(1, round(paced * tick)) if paced else 500
    next_at = reactor.seconds()
    while sent < messages:
        if sent - acked[0] >= WINDOW:
            await task.deferLater(reactor, 0.0005, lambda: None)
            continue
        for _ in range(min(burst, messages - sent)):
            send(new("bench.data", _STAMP.pack(clock()) + pad))
            sent += 1
        if paced:
            next_at += tick
            await task.deferLater(reactor, max(0.0, next_at - reactor.seconds()), lambda: None)
        else:
            await turn()
    report = await done.addTimeout(120, reactor)
    elapsed = time.perf_counter() - started
    rtts = []
    for _ in range(rtt_rounds):
        t0 = time.perf_counter()
        await pod.send(Message.new("bench.ping")).wait_until(10)
        rtts.append((time.perf_counter() - t0) * 1e6)
    pod.disconnect()
    return {
        "rate": messages / elapsed,
        "p50": report["p50"],
        "p99": report["p99"],
        "rtt50": pct(rtts, 0.5),
        "rtt99": pct(rtts, 0.99),
        "paced50": float("nan"),
        "paced99": float("nan"),
    }


async def mesh_bench(messages: int, rtt_rounds: int, paced: int) -> dict[str, float]:
    child = Child()
    bus = Bus()
    mesh = WebSocketMesh(bus, listen=None, keepalive=0)
    try:
        await mesh.dial(f"ws://127.0.0.1:{child.port}/meta/message")
        result = await remote(bus, messages, rtt_rounds)
        calm = await remote(bus, paced, 0, paced=paced)
        result["paced50"], result["paced99"] = calm["p50"], calm["p99"]
        return result
    finally:
        await bus.stop()
        child.stop()


async def nats_bench(messages: int, rtt_rounds: int) -> dict[str, float] | None:
    from txloom.bus.bridge.nats import NatsBridge

    server_bin = Path(sys.executable).parent / "nats-server"
    if not server_bin.exists():
        return None
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [str(server_bin), "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stderr is not None
    for line in server.stderr:
        if "Server is ready" in line:
            break
    url = f"nats://127.0.0.1:{port}"
    child = Child(url)
    bus = Bus()
    try:
        await NatsBridge(bus, url, BENCH_TYPES).start()
        return await remote(bus, messages, rtt_rounds)
    finally:
        await bus.stop()
        child.stop()
        server.kill()
        server.wait()


# =============================================================================================
# Report
# =============================================================================================


async def run(args: argparse.Namespace) -> None:
    quick = args.quick
    rows: list[tuple[str, str, str, str]] = []

    def row(name: str, value: str, latency: str = "", note: str = "") -> None:
        rows.append((name, value, latency, note))
        print(f"  .. {name}: {value} {latency} {note}", file=sys.stderr, flush=True)

    n1 = 300_000 if quick else 1_000_000
    rate1, _ = await in_process(1, n1)
    row(
        "in-process, 1 pod",
        f"{rate1:,.0f} msgs/s",
        "",
        f"x{rate1 / GRAV_MSGS_1_POD:.2f} of Grav's ~354k (reference)",
    )
    n10 = 60_000 if quick else 200_000
    _, del10 = await in_process(10, n10)
    verdict = "meets" if del10 >= TARGET_DELIVERIES_10_PODS else "MISSES"
    row(
        "in-process, 10 pods",
        f"{del10:,.0f} deliveries/s",
        "",
        f"x{del10 / GRAV_DELIVERIES_10_PODS:.2f} of Grav's ~1.0M (reference); "
        f"{verdict} target 300k",
    )
    rtt = await in_process_rtt(2_000 if quick else 10_000)
    row(
        "in-process request/reply",
        f"{1e6 / statistics.mean(rtt):,.0f} round trips/s",
        f"rtt p50 {pct(rtt, 0.5):.0f} us, p99 {pct(rtt, 0.99):.0f} us",
    )
    m = await mesh_bench(100_000 if quick else 400_000, 1_000 if quick else 5_000, 10_000)
    verdict = "meets" if m["rate"] >= TARGET_MESH else "MISSES"
    row(
        "mesh, 2 nodes (loopback)",
        f"{m['rate']:,.0f} msgs/s",
        f"rtt p50 {m['rtt50']:.0f} us, p99 {m['rtt99']:.0f} us (idle)",
        f"{verdict} target 20k",
    )
    row(
        "mesh one-way latency",
        "at 10k msgs/s",
        f"p50 {m['paced50']:.0f} us, p99 {m['paced99']:.0f} us",
    )
    row(
        "mesh one-way latency",
        "saturated",
        f"p50 {m['p50'] / 1000:.0f} ms, p99 {m['p99'] / 1000:.0f} ms",
        f"queueing behind a {WINDOW:,}-message window",
    )
    if not args.no_nats:
        n = await nats_bench(50_000 if quick else 200_000, 1_000 if quick else 5_000)
        if n is None:
            row("NATS bridge", "skipped: no nats-server binary")
        else:
            row(
                "NATS bridge, 2 nodes",
                f"{n['rate']:,.0f} msgs/s",
                f"rtt p50 {n['rtt50']:.0f} us, p99 {n['rtt99']:.0f} us (idle); one-way "
                f"p50 {n['p50'] / 1000:.0f} ms, p99 {n['p99'] / 1000:.0f} ms saturated",
            )
    print()
    print(f"txloom bus benchmark ({'quick' if quick else 'full'}; Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cores, Twisted asyncio reactor)")  # fmt: skip
    widths = [max(len(r[i]) for r in [("what", "throughput", "latency", "note"), *rows])
              for i in range(4)]  # fmt: skip
    header = ("what", "throughput", "latency", "note")
    for r in [header, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    print(
        "\nReference ratios compare with Grav v0.5 (Go) figures measured elsewhere on this kind"
        " of machine, not in this run."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (under a minute)")
    parser.add_argument("--no-nats", action="store_true", help="skip the NATS bridge rows")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--nats", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.nats)
        return
    task.react(lambda _: Deferred.fromCoroutine(run(args)))


if __name__ == "__main__":
    main()
