"""``txloom bus ...``: publish, subscribe and ask a bus node how it is, from a shell.

The bus and the mesh are imported when a subcommand runs, not when the parser is built:
``txloom --help`` and the store's subcommands do not pay for WebSocket and TLS imports.

The command attaches to one node as a bus client (``txloom.bus.client``: the node's mesh
endpoint, no listener, never taken for a mesh peer): what it publishes reaches that node's
pods, its other clients (other ``txloom bus`` commands) and its mesh peers; what it prints
is every message the node carries. ``stats`` is the node's ``txloom.node.status`` reply.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from txloom.cli.output import EXIT_UNAVAILABLE, CommandFailed, print_fields, write_json_line
from txloom.cli.reactor import run_on_reactor

if TYPE_CHECKING:
    from txloom.bus.message import Message

__all__ = ["DEFAULT_NODE", "add_parser", "message_line"]

#: The all-in-one node's mesh endpoint, unless ``--node`` or ``$TXLOOM_BUS`` says otherwise.
DEFAULT_NODE = "ws://127.0.0.1:8081/meta/message"

#: Seconds to connect to the node (and for ``stats`` to wait for its answer).
DEFAULT_TIMEOUT = 10.0

#: Seconds the command waits for the node to acknowledge that it leaves.
LEAVE_TIMEOUT = 1.0


def add_parser(groups: Any) -> None:
    parser = groups.add_parser("bus", help="the message bus: pub, sub, stats")
    parser.description = "Talk to a running bus node (twistd busnode or txloom) over its mesh."
    commands = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)

    def command(name: str, run: Any, text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument(
            "--node",
            default=os.environ.get("TXLOOM_BUS", DEFAULT_NODE),
            help="mesh URL of the node (default: $TXLOOM_BUS or %(default)s)",
        )
        sub.add_argument("--token-file", help="file holding the mesh token (--token-file)")
        sub.add_argument(
            "--timeout",
            type=float,
            default=DEFAULT_TIMEOUT,
            help="seconds to wait for the node (default: %(default)s)",
        )
        sub.set_defaults(run=run)
        return sub

    sub = command("pub", _pub, "Publish one message (DATA, or stdin with '-').")
    sub.add_argument("type", help="message type")
    sub.add_argument("data", nargs="?", default="", help="message data (text; '-' reads stdin)")
    sub.add_argument(
        "--reply", action="store_true", help="wait for one reply and print it as a JSON line"
    )

    sub = command("sub", _sub, "Print the node's messages, one JSON object per line.")
    sub.add_argument("types", nargs="*", metavar="TYPE", help="only these types (default: all)")
    sub.add_argument("--count", type=int, help="stop after N messages")
    sub.set_defaults(interruptible=True)

    sub = command("stats", _stats, "Print the node's status (peers, pods, counters).")
    sub.add_argument("--json", action="store_true", help="one JSON object")


def message_line(msg: Message) -> dict[str, Any]:
    """A message as one JSON line: text data as ``data``, other bytes as ``data_base64``."""
    line: dict[str, Any] = {
        "type": msg.msg_type,
        "uuid": msg.uuid,
        "parent_id": msg.parent_id,
        "response_to": msg.response_to,
        "timestamp": msg.timestamp_text,
    }
    try:
        line["data"] = msg.data.decode("utf-8")
    except UnicodeDecodeError:
        line["data_base64"] = base64.b64encode(msg.data).decode("ascii")
    return line


class _Attachment:
    """This command's bus and mesh, dialled to one node."""

    def __init__(self, args: argparse.Namespace, reactor: Any) -> None:
        from txloom.bus.bus import Bus  # noqa: PLC0415 - see the module doc
        from txloom.bus.mesh.mesh import WebSocketMesh  # noqa: PLC0415
        from txloom.bus.mesh.urls import BadPeerURL, PeerURL  # noqa: PLC0415

        try:
            self.url = PeerURL.parse(args.node).url
        except BadPeerURL as e:
            raise CommandFailed(f"--node: {e}") from None
        token = None
        if args.token_file:
            try:
                with open(args.token_file, encoding="utf-8") as f:
                    token = f.read().strip()
            except OSError as e:
                raise CommandFailed(f"--token-file: {e.strerror}: {e.filename}") from None
        self.timeout = args.timeout
        self.reactor = reactor
        self.bus = Bus(reactor=reactor)
        self.mesh = WebSocketMesh(
            self.bus,
            listen=None,
            token=token,
            withdraw_timeout=LEAVE_TIMEOUT,
            as_client=True,
            reactor=reactor,
        )

    async def join(self) -> None:
        from twisted.internet.defer import TimeoutError  # noqa: PLC0415

        d = self.mesh.dial(self.url)
        d.addTimeout(self.timeout, self.reactor)
        try:
            await d
        except TimeoutError:
            await self.leave()
            raise CommandFailed(
                f"no connection to {self.url} within {self.timeout} s", EXIT_UNAVAILABLE
            ) from None

    async def leave(self) -> None:
        self.bus.flush()  # what was sent goes out before the withdraw
        await self.bus.stop()


async def _pub_async(args: argparse.Namespace, reactor: Any) -> None:
    from txloom.bus.errors import WaitTimeout  # noqa: PLC0415
    from txloom.bus.message import Message  # noqa: PLC0415

    data: bytes = sys.stdin.buffer.read() if args.data == "-" else args.data.encode("utf-8")
    node = _Attachment(args, reactor)
    await node.join()
    try:
        pod = node.bus.connect()
        receipt = pod.send(Message.new(args.type, data))
        node.bus.flush()
        if args.reply:
            try:
                reply = await receipt.wait_until(args.timeout)
            except WaitTimeout:
                raise CommandFailed(f"no reply within {args.timeout} s") from None
            write_json_line(message_line(reply))
    finally:
        await node.leave()


def _pub(args: argparse.Namespace) -> None:
    run_on_reactor(lambda reactor: _pub_async(args, reactor))


async def _sub_async(args: argparse.Namespace, reactor: Any) -> None:
    from twisted.internet.defer import Deferred  # noqa: PLC0415

    node = _Attachment(args, reactor)
    finished: Deferred[None] = Deferred()
    seen = 0

    def show(msg: Message) -> None:
        nonlocal seen
        if finished.called:
            return
        write_json_line(message_line(msg))
        seen += 1
        if args.count is not None and seen >= args.count:
            finished.callback(None)

    pod = node.bus.connect()
    if args.types:
        pod.on_type(args.types, show)
    else:
        pod.on(show)
    await node.join()
    try:
        await finished
    finally:
        await node.leave()


def _sub(args: argparse.Namespace) -> None:
    run_on_reactor(lambda reactor: _sub_async(args, reactor))


async def _stats_async(args: argparse.Namespace, reactor: Any) -> dict[str, Any]:
    from txloom.bus.errors import WaitTimeout  # noqa: PLC0415
    from txloom.bus.message import Message  # noqa: PLC0415
    from txloom.bus.status import STATUS_REQUEST_TYPE  # noqa: PLC0415

    node = _Attachment(args, reactor)
    await node.join()
    try:
        receipt = node.bus.connect().send(Message.new(STATUS_REQUEST_TYPE))
        node.bus.flush()
        try:
            reply = await receipt.wait_until(args.timeout)
        except WaitTimeout:
            raise CommandFailed(
                f"no status reply within {args.timeout} s (is the node run with --no-status?)"
            ) from None
    finally:
        await node.leave()
    try:
        status = json.loads(reply.data)
    except ValueError:
        raise CommandFailed("the status reply is not JSON") from None
    return status if isinstance(status, dict) else {"status": status}


def _stats(args: argparse.Namespace) -> None:
    print_fields(run_on_reactor(lambda reactor: _stats_async(args, reactor)), args.json)
