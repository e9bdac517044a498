"""``txloom worker ...``: list the apps of a worker host, show one, call one, from a shell.

Everything goes through the host's Locator, as any client's calls do: ``apps`` asks it
for the published services and keeps those with an ``enqueue`` method, ``status`` is an
app service's ``info``, ``call`` opens one ``enqueue`` session. The client is imported
when a subcommand runs, so that building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from txloom.cli.output import EXIT_UNAVAILABLE, CommandFailed, print_fields, write_json_line
from txloom.cli.reactor import run_on_reactor

if TYPE_CHECKING:
    from txloom.worker.client import LocatorClient, Service
    from txloom.worker.errors import ServiceError

__all__ = ["DEFAULT_LOCATOR", "add_parser"]

#: The worker host's Locator unless ``--locator`` or ``$TXLOOM_LOCATOR`` says otherwise.
DEFAULT_LOCATOR = "127.0.0.1:10053"


def add_parser(groups: Any) -> None:
    parser = groups.add_parser("worker", help="the worker host: apps, status, call, reload")
    parser.description = "Talk to a running worker host (twistd workerhost or txloom)."
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

    sub = command("apps", _apps, "List the apps with their state, workers and queue.")
    sub.add_argument("--json", action="store_true", help="one JSON object per app")

    sub = command("status", _status, "Print one app's pool, queue and counters.")
    sub.add_argument("app", help="app name")
    sub.add_argument("--json", action="store_true", help="one JSON object")

    sub = command("call", _call, "Send DATA (or stdin with '-') to APP's EVENT; print the reply.")
    sub.add_argument("app", help="app name")
    sub.add_argument("event", help="event (method) of the app")
    sub.add_argument("data", nargs="?", default="", help="request body (text; '-' reads stdin)")

    sub = command(
        "reload",
        _reload,
        "Have the host re-read its apps directory, as SIGHUP does; print what changed.",
    )
    sub.add_argument("--json", action="store_true", help="one JSON object")


def _failed(error: ServiceError) -> CommandFailed:
    from txloom.worker import errors  # noqa: PLC0415 - see the module doc

    code = EXIT_UNAVAILABLE if isinstance(error, errors.ServiceNotAvailable) else 1
    return CommandFailed(error.reason, code)


async def _locator(args: argparse.Namespace, reactor: Any) -> LocatorClient:
    from txloom.worker.appworker import parse_locator  # noqa: PLC0415 - see the module doc
    from txloom.worker.client import LocatorClient  # noqa: PLC0415
    from txloom.worker.errors import ServiceError  # noqa: PLC0415

    try:
        address = parse_locator(args.locator)[0]
    except ValueError as e:
        raise CommandFailed(f"--locator: {e}") from None
    locator = LocatorClient(address, reactor)
    try:
        await locator.connect()
    except ServiceError:
        raise CommandFailed(f"no Locator at {args.locator}", EXIT_UNAVAILABLE) from None
    return locator


async def _app(args: argparse.Namespace, reactor: Any, name: str) -> Service:
    from txloom.worker import errors  # noqa: PLC0415
    from txloom.worker.client import Service  # noqa: PLC0415
    from txloom.worker.errors import ServiceError  # noqa: PLC0415

    locator = await _locator(args, reactor)
    try:
        endpoints, version, graph = await locator.resolve(name)
    except errors.ServiceNotAvailable:
        raise CommandFailed(f"no app {name!r} at {args.locator}") from None
    finally:
        locator.close()
    try:
        return await Service(name, endpoints, graph, version, reactor).connect()
    except ServiceError as e:
        raise _failed(e) from None


async def _apps_async(args: argparse.Namespace, reactor: Any) -> list[dict[str, Any]]:
    locator = await _locator(args, reactor)
    rows = []
    try:
        for name in await locator.services():
            _endpoints, _version, graph = await locator.resolve(name)
            if not any(method == "enqueue" for method, *_ in graph.values()):
                continue
            app = await _app(args, reactor, name)
            try:
                info = _text(await app.call("info"))
            finally:
                app.close()
            rows.append(
                {
                    "app": name,
                    "state": info.get("state"),
                    "workers": info.get("pool", {}).get("active"),
                    "sessions": info.get("sessions"),
                    "queue": info.get("queue", {}).get("depth"),
                }
            )
    finally:
        locator.close()
    return rows


def _apps(args: argparse.Namespace) -> None:
    rows = run_on_reactor(lambda reactor: _apps_async(args, reactor))
    if args.json:
        for row in rows:
            write_json_line(row)
        return
    print(f"{'APP':<20} {'STATE':<10} {'WORKERS':>7} {'SESSIONS':>8} {'QUEUE':>5}")
    for r in rows:
        print(
            f"{r['app']:<20} {r['state']!s:<10} {r['workers']!s:>7} "
            f"{r['sessions']!s:>8} {r['queue']!s:>5}"
        )


async def _status_async(args: argparse.Namespace, reactor: Any) -> dict[str, Any]:
    from txloom.worker.errors import ServiceError  # noqa: PLC0415

    app = await _app(args, reactor, args.app)
    try:
        return _text(await app.call("info"))
    except ServiceError as e:
        raise _failed(e) from None
    finally:
        app.close()


def _status(args: argparse.Namespace) -> None:
    print_fields(run_on_reactor(lambda reactor: _status_async(args, reactor)), args.json)


async def _call_async(args: argparse.Namespace, reactor: Any) -> None:
    from txloom.worker.errors import ServiceError  # noqa: PLC0415

    body: bytes = sys.stdin.buffer.read() if args.data == "-" else args.data.encode("utf-8")
    app = await _app(args, reactor, args.app)
    try:
        channel = app.enqueue(args.event)
        if body:
            channel.tx.write(body)
        channel.tx.close()
        async for chunk in channel.rx:
            sys.stdout.buffer.write(chunk if isinstance(chunk, bytes) else str(chunk).encode())
            sys.stdout.buffer.flush()
    except ServiceError as e:
        raise _failed(e) from None
    finally:
        app.close()


def _call(args: argparse.Namespace) -> None:
    run_on_reactor(lambda reactor: _call_async(args, reactor))


async def _reload_async(args: argparse.Namespace, reactor: Any) -> dict[str, Any]:
    from txloom.worker.errors import ServiceError  # noqa: PLC0415

    locator = await _locator(args, reactor)
    try:
        return await locator.reload()
    except ServiceError as e:
        raise _failed(e) from None
    finally:
        locator.close()


def _reload(args: argparse.Namespace) -> None:
    changes = run_on_reactor(lambda reactor: _reload_async(args, reactor))
    if args.json:
        write_json_line(changes)
        return
    for kind in ("added", "changed", "removed", "failed", "unchanged"):
        if changes.get(kind):
            print(f"{kind}: {' '.join(changes[kind])}")


def _text(value: Any) -> Any:
    from txloom.worker.client import as_text  # noqa: PLC0415

    return as_text(value)
