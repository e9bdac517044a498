"""``txloom rpc ...``: the reverse-RPC agents of a worker host, listed and called from a shell.

The host's controller is reached through its Locator's ``rpc`` service (the host runs with
``--rpc``, ``--rpc-grpc`` or ``--rpc-http``), as any Cocaine client reaches it. A request is
given as JSON and sent as the CBOR map a ``@rpc_type`` dataclass is encoded as; a reply
that is such a map is printed as JSON. ``--raw`` sends the bytes as given (a serialized
protobuf from stdin, say) and writes the reply's bytes as they came.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from txloom.cli.output import EXIT_UNAVAILABLE, CommandFailed, write_json_line
from txloom.cli.reactor import run_on_reactor
from txloom.cli.worker import DEFAULT_LOCATOR

if TYPE_CHECKING:
    from txloom.worker.client import Service

__all__ = ["add_parser"]


def add_parser(groups: Any) -> None:
    parser = groups.add_parser("rpc", help="reverse RPC: list and call a host's agents")
    parser.description = (
        "Call the reverse-RPC agents joined to a worker host's controller, through its Locator."
    )
    commands = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)

    def command(name: str, run: Any, text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument(
            "--locator",
            default=os.environ.get("TXLOOM_LOCATOR", DEFAULT_LOCATOR),
            help="HOST:PORT of the Locator (default: $TXLOOM_LOCATOR or %(default)s)",
        )
        sub.set_defaults(run=run)
        return sub

    sub = command("list", _list, "List the agents: name, transport, address, calls in flight.")
    sub.add_argument("--json", action="store_true", help="one JSON object per agent")

    for name, run, text in (
        ("call", _call, "Call TYPE on AGENT with REQUEST; print the reply."),
        ("call-all", _call_all, "Call TYPE on every agent; print one JSON line per agent."),
    ):
        sub = command(name, run, text)
        if name == "call":
            sub.add_argument("agent", help="the agent's name")
        sub.add_argument("type", help="the request's type name, e.g. txloom.examples.Echo")
        sub.add_argument(
            "request",
            nargs="?",
            default="{}",
            help="the request as JSON (default {}); '-' reads it from stdin",
        )
        sub.add_argument("--raw", action="store_true", help="send REQUEST's bytes as they are")
        sub.add_argument("--timeout", type=float, default=None, help="seconds (default: none)")


async def _rpc(args: argparse.Namespace, reactor: Any) -> Service:
    from txloom.cli.worker import _app  # noqa: PLC0415 - imported on use, see cli/worker.py

    try:
        return await _app(args, reactor, "rpc")
    except CommandFailed as e:
        if "no app 'rpc'" in str(e):
            raise CommandFailed(
                f"the host at {args.locator} runs no RPC controller (--rpc)", EXIT_UNAVAILABLE
            ) from None
        raise


def _payload(args: argparse.Namespace) -> bytes:
    raw = sys.stdin.buffer.read() if args.request == "-" else args.request.encode("utf-8")
    if args.raw:
        return raw
    import cbor2  # noqa: PLC0415

    try:
        return cbor2.dumps(json.loads(raw))
    except ValueError as e:
        raise CommandFailed(f"REQUEST is not JSON ({e}); use --raw for bytes") from None


def _reply(value: bytes, raw: bool) -> Any:
    """A CBOR reply as plain data; the bytes themselves when ``raw`` or not CBOR."""
    if raw:
        return value
    import cbor2  # noqa: PLC0415

    try:
        return cbor2.loads(value)
    except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError):
        return value


async def _call_async(args: argparse.Namespace, reactor: Any) -> Any:
    from txloom.worker.errors import ServiceError  # noqa: PLC0415

    payload = _payload(args)
    service = await _rpc(args, reactor)
    extra = [args.timeout] if args.timeout else []
    try:
        if args.command == "call":
            return await service.call("call", args.agent, args.type, payload, *extra)
        return await service.call("call_all", args.type, payload, *extra)
    except ServiceError as e:
        raise CommandFailed(e.reason) from None
    finally:
        service.close()


def _call(args: argparse.Namespace) -> None:
    value = _reply(run_on_reactor(lambda reactor: _call_async(args, reactor)), args.raw)
    if isinstance(value, bytes):
        sys.stdout.buffer.write(value)
        sys.stdout.buffer.flush()
    else:
        write_json_line(_plain(value))


def _call_all(args: argparse.Namespace) -> None:
    results = run_on_reactor(lambda reactor: _call_async(args, reactor))
    failed = 0
    for key, outcome in sorted(results.items(), key=lambda item: _plain(item[0])):
        if outcome[0]:
            reply = _plain(_reply(outcome[1], args.raw))
            write_json_line({"agent": _plain(key), "ok": True, "reply": reply})
        else:
            failed += 1
            code, message = _plain(outcome[1]), _plain(outcome[2])
            write_json_line({"agent": _plain(key), "ok": False, "code": code, "message": message})
    if failed:
        raise CommandFailed(f"{failed} of {len(results)} agents failed")


def _plain(value: Any) -> Any:
    """``value`` fit for JSON: bytes as text (undecodable ones with replacement marks)."""
    from txloom.worker.client import as_text  # noqa: PLC0415

    value = as_text(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(_plain(k)): _plain(v) for k, v in value.items()}
    return value


async def _list_async(args: argparse.Namespace, reactor: Any) -> list[Any]:
    from txloom.worker.client import as_text  # noqa: PLC0415

    service = await _rpc(args, reactor)
    try:
        return as_text(await service.call("list"))
    finally:
        service.close()


def _list(args: argparse.Namespace) -> None:
    agents = run_on_reactor(lambda reactor: _list_async(args, reactor))
    if args.json:
        for name, transport, address, in_flight in agents:
            write_json_line(
                {"agent": name, "transport": transport, "address": address, "in_flight": in_flight}
            )
        return
    print(f"{'AGENT':<24} {'TRANSPORT':<10} {'ADDRESS':<24} {'IN-FLIGHT':>9}")
    for name, transport, address, in_flight in agents:
        print(f"{name:<24} {transport!s:<10} {address!s:<24} {in_flight!s:>9}")
