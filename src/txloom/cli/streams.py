"""``txloom streams post``: post one nested-streams request and print what comes back.

The service is found through a worker host's Locator (the services it hosts with
``--streams``), or at ``--at ENDPOINT`` for a stream server of your own. Each source is
printed as its header on a line and its frames below it, indented; ``--json`` prints one
JSON object per source instead, with its frames as text.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from txloom.cli.output import EXIT_UNAVAILABLE, CommandFailed, write_json_line
from txloom.cli.reactor import run_on_reactor
from txloom.cli.worker import DEFAULT_LOCATOR

__all__ = ["add_parser"]


def add_parser(groups: Any) -> None:
    parser = groups.add_parser("streams", help="nested streams: post a request, print sources")
    parser.description = "Post requests to nested-stream services."
    commands = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    text = "Post BODY to SERVICE; print each source's header and frames."
    sub = commands.add_parser("post", help=text, description=text)
    sub.add_argument("service", help="the service's name (its virtual address), e.g. facts")
    sub.add_argument("body", nargs="?", default="", help="the request body; '-' reads stdin")
    sub.add_argument(
        "--locator",
        default=os.environ.get("TXLOOM_LOCATOR", DEFAULT_LOCATOR),
        help="HOST:PORT of the Locator that knows SERVICE (default: $TXLOOM_LOCATOR or "
        "%(default)s)",
    )
    sub.add_argument("--at", metavar="ENDPOINT", help="the server's endpoint, without a Locator")
    sub.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="repeatable")
    sub.add_argument("--token", help="the shared token the server wants")
    sub.add_argument("--json", action="store_true", help="one JSON object per source")
    sub.set_defaults(run=_post)


def _tags(words: list[str]) -> dict[str, str]:
    tags = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise CommandFailed(f"--tag must be KEY=VALUE, not {word!r}", 2)
        tags[key] = value
    return tags


async def _post_async(args: argparse.Namespace, reactor: Any) -> int:
    from twisted.internet.error import ConnectError  # noqa: PLC0415

    from txloom.streams import StaticResolver, StreamClient  # noqa: PLC0415 - on use
    from txloom.streams.errors import StreamError  # noqa: PLC0415
    from txloom.worker.appworker import parse_locator  # noqa: PLC0415
    from txloom.worker.errors import ServiceError, ServiceNotAvailable  # noqa: PLC0415
    from txloom.worker.stream_resolver import LocatorResolver  # noqa: PLC0415

    body = sys.stdin.buffer.read() if args.body == "-" else args.body.encode("utf-8")
    tags = _tags(args.tag)
    if args.at:
        resolver: Any = StaticResolver({args.service: [args.at]})
    else:
        try:
            parse_locator(args.locator)
        except ValueError as e:
            raise CommandFailed(f"--locator: {e}", 2) from None
        resolver = LocatorResolver(args.locator, reactor=reactor)
    options = {"token": args.token.encode()} if args.token else {}
    client = StreamClient(resolver, **options)
    sources = 0
    try:
        async for source in client.post(args.service, body, tags):
            sources += 1
            header = source.header.decode("utf-8", "replace")
            if args.json:
                frames = [f.decode("utf-8", "replace") async for f in source]
                write_json_line({"source": header, "frames": frames})
                continue
            print(header, flush=True)
            async for frame in source:
                sys.stdout.write(f"  {frame.decode('utf-8', 'replace')}\n")
                sys.stdout.flush()
    except ServiceNotAvailable as e:
        raise CommandFailed(e.reason, EXIT_UNAVAILABLE) from None
    except ConnectError as e:
        raise CommandFailed(f"cannot connect to {args.service}: {e}", EXIT_UNAVAILABLE) from None
    except (StreamError, ServiceError) as e:
        raise CommandFailed(str(e)) from None
    return sources


def _post(args: argparse.Namespace) -> None:
    run_on_reactor(lambda reactor: _post_async(args, reactor))
