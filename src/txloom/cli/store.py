"""``txloom store ...``: write, replay, tail, stats, snapshot and compact from a shell.

Built on the blocking client (``txloom.store.NetworkBackend``): one request at a time is
what a shell command needs, and ``tail`` gets the client's reconnecting subscription, so a
server restart in the middle of a tail is caught up from the last sequence number printed.

Facts go in and come out as JSON lines in the wire form (``Fact.to_dict``); ``tail`` adds
the server's sequence number as ``seq`` so that ``--since`` can resume where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

from txloom.cli.output import (
    EXIT_UNAVAILABLE,
    CommandFailed,
    Progress,
    print_fields,
    write_json_line,
)
from txloom.store.blocking import DEFAULT_TIMEOUT, DEFAULT_WRITE_WINDOW, NetworkBackend
from txloom.store.errors import StoreConnectionError, StoreError
from txloom.store.fact import Fact

__all__ = ["DEFAULT_PAGE_SIZE", "DEFAULT_SERVER", "add_parser"]

#: Where the store server is unless ``--server`` or ``$TXLOOM_STORE`` says otherwise
#: (the all-in-one node's and ``twistd storeserver``'s default listener).
DEFAULT_SERVER = "127.0.0.1:7400"

#: Facts asked for per replay request: small enough that a page is never near the
#: server's frame limit, large enough that a big store is read in few round trips.
DEFAULT_PAGE_SIZE = 1000


def add_parser(groups: Any) -> None:
    parser = groups.add_parser("store", help="the fact store: write, replay, tail, ...")
    parser.description = "Talk to a running store server (twistd storeserver or txloom)."
    commands = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)

    def command(name: str, run: Any, text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument(
            "--server",
            metavar="ADDRESS",
            default=os.environ.get("TXLOOM_STORE", DEFAULT_SERVER),
            help="HOST:PORT or unix:PATH of the store server "
            "(default: $TXLOOM_STORE or %(default)s)",
        )
        sub.add_argument(
            "--token-file",
            metavar="FILE",
            help="file holding the server's auth token (--auth-token-file)",
        )
        sub.add_argument(
            "--timeout",
            type=float,
            metavar="SECONDS",
            default=DEFAULT_TIMEOUT,
            help="seconds to wait for the server (default: %(default)s)",
        )
        sub.set_defaults(run=run)
        return sub

    def progress_flags(sub: argparse.ArgumentParser) -> None:
        flags = sub.add_mutually_exclusive_group()
        flags.add_argument(
            "--progress",
            dest="progress",
            action="store_const",
            const=True,
            default=None,
            help="show a progress bar on stderr (default: when stderr is a terminal)",
        )
        flags.add_argument(
            "--no-progress", dest="progress", action="store_const", const=False, help="do not"
        )

    sub = command("write", _write, "Write facts: one from the options, or JSON lines from stdin.")
    sub.add_argument(
        "--store", metavar="NAME", help="store of the one fact to write (else read stdin)"
    )
    sub.add_argument("--key", metavar="KEY", help="key of the fact (a string)")
    sub.add_argument("--value", default="null", metavar="JSON", help="value of the fact, as JSON")
    sub.add_argument(
        "--window",
        type=_positive,
        default=DEFAULT_WRITE_WINDOW,
        metavar="N",
        help="writes sent before their answers (default: %(default)s)",
    )
    sub.add_argument("--json", action="store_true", help="print the summary as JSON")
    progress_flags(sub)

    sub = command("replay", _replay, "Print stored facts, one JSON object per line.")
    sub.add_argument(
        "--store",
        action="append",
        dest="stores",
        metavar="NAME",
        help="only this store (repeatable)",
    )
    sub.add_argument(
        "--since", type=_count, default=0, metavar="N", help="facts numbered above N only"
    )
    sub.add_argument(
        "--page-size",
        type=_positive,
        default=DEFAULT_PAGE_SIZE,
        metavar="N",
        help="facts per request",
    )
    progress_flags(sub)

    sub = command("tail", _tail, "Print facts as they are written (after a catch-up with --since).")
    sub.add_argument(
        "--store",
        action="append",
        dest="stores",
        metavar="NAME",
        help="only this store (repeatable)",
    )
    sub.add_argument(
        "--since", type=_count, metavar="N", help="first print the stored facts numbered above N"
    )
    sub.add_argument("--count", type=_positive, metavar="N", help="stop after N facts")
    sub.set_defaults(interruptible=True)

    sub = command("stats", _stats, "Print the server's counters.")
    sub.add_argument("--json", action="store_true", help="one JSON object")

    sub = command(
        "snapshot", _snapshot, "Replace the snapshot with the facts of FILE (JSON lines)."
    )
    sub.add_argument("file", nargs="?", default="-", help="JSON lines of facts (default: stdin)")
    sub.add_argument("--json", action="store_true", help="print the summary as JSON")

    sub = command("compact", _compact, "Fold the write-ahead log into one compacted file.")
    sub.add_argument("--json", action="store_true", help="one JSON object")


def _positive(text: str) -> int:
    value = _count(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {text}")
    return value


@contextlib.contextmanager
def _client(args: argparse.Namespace) -> Iterator[NetworkBackend]:
    """A connected client; connection problems and refusals become one-line failures."""
    server: str = args.server
    transport = "tcp"
    if server.startswith("unix:"):
        transport, server = "unix", server[len("unix:") :]
    try:
        with NetworkBackend(server, transport, token=_token(args), timeout=args.timeout) as client:
            yield client
    except StoreConnectionError as e:
        raise CommandFailed(str(e), EXIT_UNAVAILABLE) from None
    except StoreError as e:
        raise CommandFailed(str(e)) from None
    except BrokenPipeError:  # our reader went away, not the server
        raise
    except OSError as e:  # a socket timeout
        raise CommandFailed(f"{args.server}: {e}", EXIT_UNAVAILABLE) from None


def _read_facts(stream: TextIO) -> Iterator[Fact]:
    """Facts from JSON lines; a fact without an id is made new (``Fact.build``'s rules)."""
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            fact = Fact.from_dict(json.loads(line))
            if fact.id is None:
                fact = Fact.build(
                    store=fact.store,
                    key=fact.key,
                    value=fact.value,
                    causation=fact.causation,
                    valid_time=fact.valid_time,
                    producer=fact.producer,
                    derivation=fact.derivation,
                )
        except (ValueError, RecursionError) as e:  # InvalidFact is a ValueError
            raise CommandFailed(f"line {number}: not a fact: {e}") from None
        yield fact


def _write(args: argparse.Namespace) -> None:
    if args.store is not None:
        try:
            facts: Any = [Fact.build(store=args.store, key=args.key, value=json.loads(args.value))]
        except ValueError:
            raise CommandFailed(
                f"--value must be JSON (quote a string: '\"text\"'), not {args.value!r}"
            ) from None
    elif sys.stdin.isatty():
        raise CommandFailed("give --store (one fact) or facts as JSON lines on stdin")
    else:
        facts = _read_facts(sys.stdin)
    with _client(args) as client, Progress("write", None, args.progress) as progress:
        written = client.write_facts(facts, args.window, lambda n: progress.update())
    print_fields({"written": written}, args.json)


def _token(args: argparse.Namespace) -> str | None:
    if not args.token_file:
        return None
    try:
        with open(args.token_file, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as e:
        raise CommandFailed(f"--token-file: {e.strerror}: {e.filename}") from None


def _replay(args: argparse.Namespace) -> None:
    with _client(args) as client:
        total = None
        if args.progress or (args.progress is None and sys.stderr.isatty()):
            total = client.stats().get("facts")
        with Progress("replay", total, args.progress) as progress:
            for fact in client.replay_pages(args.stores, args.since, args.page_size):
                write_json_line(fact.to_dict())
                progress.update()


def _tail(args: argparse.Namespace) -> None:
    done = threading.Event()
    printed = 0

    def show(fact: Fact) -> None:
        nonlocal printed
        if done.is_set():
            return
        try:
            write_json_line({**fact.to_dict(), "seq": fact.seq})
        except BrokenPipeError:  # the reader went away: end the tail
            done.set()
            return
        printed += 1
        if args.count is not None and printed >= args.count:
            done.set()

    def stop(number: int, frame: Any) -> None:
        done.set()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with (
            _client(args) as client,
            client.subscribe(args.stores or [], show, since=args.since),
        ):
            done.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stats(args: argparse.Namespace) -> None:
    with _client(args) as client:
        print_fields(client.stats(), args.json)


def _snapshot(args: argparse.Namespace) -> None:
    if args.file == "-":
        facts = list(_read_facts(sys.stdin))
    else:
        try:
            with open(args.file, encoding="utf-8") as f:
                facts = list(_read_facts(f))
        except OSError as e:
            raise CommandFailed(f"{e.filename}: {e.strerror}") from None
    with _client(args) as client:
        client.write_snapshot(facts)
    print_fields({"snapshot_facts": len(facts)}, args.json)


def _compact(args: argparse.Namespace) -> None:
    with _client(args) as client:
        print_fields(client.compact(), args.json)
