"""``twistd txloom``: every txloom server in one process, on embedded defaults.

This is what ``make run`` starts: a store server on 7400 with its write-ahead log under
``DATA/store``, the worker host serving its example apps (an echo worker through the
Locator on 10053, a WSGI hello app over HTTP on 8080, reverse-RPC agents on 7300 and at
/rpc/ on 8080 with one example agent joined) and the ``facts`` nested-stream service on
7410 (each store's facts, found through the Locator), and a bus node (WebSocket mesh on
8081), with one status site for all of them on 9400 (``/healthz``, ``/readyz``,
``/metrics``). Each part is built by its own plugin's ``Options``/``makeService``, exactly
as ``twistd storeserver ...`` would build it, so the all-in-one node never drifts from the
single-purpose plugins; only the arguments are chosen here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet import reactor
from twisted.logger import Logger
from twisted.python import usage

from txloom.config import PluginOptions, section_arguments
from txloom.shutdown import CleanExitOnSignal
from txloom.status.options import status_option, valid_status_endpoint
from txloom.status.site import StatusService
from txloom.worker.examples import APPS_DIR

log = Logger()

#: The all-in-one node's status site (/healthz, /readyz, /metrics); single plugins have none
#: unless asked, the node that ``make run`` starts has it on the loopback interface.
DEFAULT_STATUS = "tcp:9400:interface=127.0.0.1"


@dataclass(frozen=True)
class Component:
    """One server of the all-in-one node: which plugin builds it, and with what arguments."""

    name: str
    tap: str
    arguments: Callable[[Options], list[str]]
    #: ``(module, function)`` giving the part's status ``Watch`` (``txloom.status``).
    watch: tuple[str, str]


def _store_arguments(options: Options) -> list[str]:
    return ["--data", str(Path(options["data"]) / "store"), "--listen", options["store-listen"]]


def _worker_arguments(options: Options) -> list[str]:
    arguments = ["--apps", options["apps"] or str(APPS_DIR), "--locator", options["locator"]]
    arguments += ["--http", options["http"]]
    if options["rpc"] != "none":
        arguments += ["--rpc", options["rpc"], "--rpc-http"]
    store = _store_client_endpoint(options["store-listen"])
    if options["streams"] != "none" and "store" not in options["without"] and store:
        arguments += ["--streams", options["streams"], "--stream-service", f"facts store={store}"]
    elif options["streams"] != "none":
        log.info("all-in-one: no facts stream service (the store's port is not fixed)")
    if options["runtime"]:
        arguments += ["--runtime", options["runtime"]]
    return arguments


def _store_client_endpoint(listen: str) -> str | None:
    """``tcp:PORT:interface=HOST`` -> a client endpoint string for it (None for port 0)."""
    kind, _, rest = listen.partition(":")
    parts = rest.split(":")
    if kind != "tcp" or not parts or not parts[0].isdigit() or parts[0] == "0":
        return None
    host = "127.0.0.1"
    for part in parts[1:]:
        if part.startswith("interface=") and part[len("interface=") :] not in ("", "0.0.0.0"):
            host = part[len("interface=") :]
    return f"tcp:{host}:{parts[0]}"


def _bus_arguments(options: Options) -> list[str]:
    return ["--listen", options["bus-listen"], "--discovery", options["bus-discovery"]]


COMPONENTS: tuple[Component, ...] = (
    Component(
        "store", "txloom.store.tap", _store_arguments, ("txloom.status.store", "watch_store")
    ),
    Component(
        "workerhost",
        "txloom.worker.tap",
        _worker_arguments,
        ("txloom.status.worker", "watch_worker"),
    ),
    Component("busnode", "txloom.bus.tap", _bus_arguments, ("txloom.status.bus", "watch_bus")),
)


class Options(PluginOptions):
    synopsis = "[options]"
    longdesc = (
        "Run every txloom server in one process with embedded defaults: nothing to install "
        "or configure first. Each part can be run on its own with its own plugin "
        "(twistd storeserver, ...) for production use. Data is kept under --data."
    )
    config_section = "txloom"
    optParameters = [
        ["data", "d", "var", "Directory for all persistent state (store WAL and snapshots)."],
        [
            "store-listen",
            None,
            "tcp:7400:interface=127.0.0.1",
            "Endpoint string the store server listens on.",
        ],
        [
            "apps",
            None,
            None,
            "Worker host: directory of app manifests. Default: the bundled examples "
            "(an echo worker and a WSGI hello app).",
        ],
        [
            "runtime",
            None,
            None,
            "Worker host: directory for the apps' Unix sockets (default: the worker host's).",
        ],
        ["locator", None, "tcp:10053:interface=127.0.0.1", "Worker host: Locator endpoint."],
        ["http", None, "tcp:8080:interface=127.0.0.1", "Worker host: HTTP front end endpoint."],
        [
            "rpc",
            None,
            "tcp:7300:interface=127.0.0.1",
            "Worker host: reverse-RPC stream endpoint ('none': no RPC, no example agent).",
        ],
        [
            "streams",
            None,
            "tcp:7410:interface=127.0.0.1",
            "Worker host: nested-stream services endpoint, serving 'facts' from the store "
            "('none' to leave it out).",
        ],
        [
            "bus-listen",
            None,
            "tcp:8081:interface=127.0.0.1",
            "Bus node: WebSocket mesh endpoint (path /meta/message).",
        ],
        [
            "bus-discovery",
            None,
            "none",
            "Bus node: 'none' or 'local' (Grav-compatible UDP multicast on the LAN).",
        ],
        status_option(DEFAULT_STATUS),
    ]

    def __init__(self) -> None:
        super().__init__()
        self["without"] = []

    def opt_without(self, name: str) -> None:
        """Leave one part out (repeatable): one of the component names."""
        known = {c.name for c in COMPONENTS}
        if name not in known:
            raise usage.UsageError(f"--without {name}: known parts are {', '.join(sorted(known))}")
        self["without"].append(name)

    def postOptions(self) -> None:
        self["status"] = valid_status_endpoint(self["status"])
        # every part's options are checked now, so that a bad value is a usage error
        self.parts: list[tuple[Component, Any, usage.Options, list[str]]] = []
        for component in COMPONENTS:
            if component.name in self["without"]:
                continue
            tap = importlib.import_module(component.tap)
            sub = tap.Options()
            arguments = _part_arguments(self, component, sub)
            try:
                sub.parseOptions(arguments)
            except usage.UsageError as e:
                raise usage.UsageError(f"{component.name}: {e}") from e
            self.parts.append((component, tap, sub, arguments))


def _part_arguments(options: Options, component: Component, sub: usage.Options) -> list[str]:
    """The node's arguments for a part, with its config file section's keys replacing them."""
    arguments = component.arguments(options)
    table = options.config_file.get(component.name)
    if not table:
        return arguments
    where = f"--config {options.config_path}: [{component.name}]"
    from_file = section_arguments(table, sub, where)
    named = {a for a in from_file if a.startswith("--")}
    kept: list[str] = []
    i = 0
    while i < len(arguments):  # "--name value" pairs and lone "--flag"s
        takes_value = i + 1 < len(arguments) and not arguments[i + 1].startswith("--")
        group = arguments[i : i + 2] if takes_value else arguments[i : i + 1]
        if group[0] not in named:
            kept += group
        i += len(group)
    return kept + from_file


def makeService(options: Options) -> IService:
    root = MultiService()
    CleanExitOnSignal(reactor).setServiceParent(root)
    status = StatusService(options["status"], []) if options["status"] else None
    for component, tap, sub, arguments in options.parts:
        service = tap.makeService(sub)
        service.setName(component.name)
        service.setServiceParent(root)
        if status is not None:
            module, function = component.watch
            status.add(getattr(importlib.import_module(module), function)(service))
        log.info(
            "all-in-one: {name} configured with {arguments}",
            name=component.name,
            arguments=" ".join(arguments),
        )
    if "workerhost" not in options["without"] and options["rpc"] != "none":
        ExampleAgent(root.getServiceNamed("workerhost")).setServiceParent(root)
    if status is not None:
        status.setServiceParent(root)
    return root


class ExampleAgent(Service):
    """An agent serving ``txloom.rpc.examples.echo``, joined to the worker host's RPC
    controller as ``example-agent`` (so ``make run`` has something to call)."""

    name = "rpc-example-agent"

    def __init__(self, host: Any) -> None:
        self.host = host
        self.agent: Any = None

    def startService(self) -> None:
        super().startService()
        from txloom.rpc import Dispatcher  # noqa: PLC0415
        from txloom.rpc.agent import load_handlers  # noqa: PLC0415
        from txloom.rpc.transports.stream import StreamClientTransport  # noqa: PLC0415

        stream = self.host.rpc.transports[0]

        def connect() -> None:
            if stream.address is None:  # the controller listens once the host started
                reactor.callLater(0.05, connect)
                return
            url = f"tcp://{stream.address.host}:{stream.address.port}"
            handlers = load_handlers(["txloom.rpc.examples.echo"])
            self.agent = StreamClientTransport(url, "example-agent", Dispatcher(handlers))
            self.agent.start()

        connect()

    def stopService(self) -> Any:
        super().stopService()
        return self.agent.stop() if self.agent is not None else None
