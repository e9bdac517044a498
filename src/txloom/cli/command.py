"""``txloom``: the command line of a running txloom, one subcommand per capability.

    txloom store write --store tasks --key t1 --value '{"done": false}'
    txloom store tail --since 0 | jq .key
    txloom bus pub greeting hello
    txloom worker call echo ping hello
    txloom rpc call example-agent txloom.examples.Echo '{"text": "hi"}'
    txloom streams post facts orders

Each capability's module (``txloom.cli.store``, ``.bus``, ``.worker``, ``.rpc``,
``.streams``) adds its own subcommands to the parser; this module only builds the parser,
runs the chosen subcommand and turns its outcome into an exit status (see
``txloom.cli.output``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from txloom import __version__
from txloom.cli import bus, rpc, store, streams, worker
from txloom.cli.output import EXIT_FAILED, EXIT_OK, CommandFailed

__all__ = ["build_parser", "main"]

#: Modules that add a subcommand group: ``add_parser(subparsers)`` each.
GROUPS: tuple[Any, ...] = (store, bus, worker, rpc, streams)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="txloom",
        description=(
            "Operate a running txloom: the store, the message bus, the worker host, its "
            "reverse-RPC agents and nested-stream services."
        ),
        epilog=(
            "Exit status: 0 done, 1 the server refused or the operation failed, "
            "2 bad command line, 3 the server could not be reached."
        ),
    )
    parser.add_argument("--version", action="version", version=f"txloom {__version__}")
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.add_parser(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command line; returns the exit status (the console script exits with it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Callable[[argparse.Namespace], int | None] = args.run
    try:
        code = command(args)
    except CommandFailed as e:
        print(f"txloom {args.group} {args.command}: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return EXIT_OK if getattr(args, "interruptible", False) else EXIT_FAILED
    except BrokenPipeError:
        # the reader went away (`| head`): stop quietly, as any Unix filter does
        _quiet_stdout()
        return EXIT_OK
    return EXIT_OK if code is None else code


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's last flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def run() -> None:
    """The ``txloom`` console script."""
    sys.exit(main())
