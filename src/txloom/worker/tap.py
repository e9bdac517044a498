"""``twistd workerhost``: command line options and the service they build.

::

    twistd -n workerhost --apps DIR --runtime DIR --locator tcp:10053 --http tcp:8080

Other programs build the same service from a list of arguments::

    options = Options()
    options.parseOptions(["--apps", DIR, "--runtime", DIR])
    service = makeService(options)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from txloom import extensions, systemd
from txloom.cluster.connection import parse_servers
from txloom.cluster.membership import MIN_TTL, valid_bucket, valid_key
from txloom.config import PluginOptions
from txloom.interfaces import IStreamServiceFactory, IWorkerLauncherFactory
from txloom.shutdown import CleanExitOnSignal, StartFailed
from txloom.status.options import status_option, valid_status_endpoint
from txloom.status.site import StatusService
from txloom.wire.cocaine import DEFAULT_MAX_MESSAGE_SIZE
from txloom.worker.cluster import DEFAULT_BUCKET, DEFAULT_TTL, HostCluster
from txloom.worker.connection import default_reactor
from txloom.worker.host import (
    DEFAULT_LOCATOR_ENDPOINT,
    DEFAULT_SERVICE_HOST,
    HostError,
    WorkerHost,
)
from txloom.worker.http_front import DEFAULT_FD_RESERVE, DEFAULT_HTTP_HEAD_TIMEOUT
from txloom.worker.logging_service import DEBUG, ERROR, INFO, WARNING
from txloom.worker.reload import ReloadOnHangup
from txloom.worker.rpc_service import build_controller

#: The launcher chosen unless ``--launcher`` says otherwise.
DEFAULT_LAUNCHER = "process"

VERBOSITY = {"debug": DEBUG, "info": INFO, "warning": WARNING, "error": ERROR}


def default_runtime_dir() -> str:
    """``$XDG_RUNTIME_DIR/txloom`` if set, else ``/tmp/txloom-UID``: short, per user."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        return str(Path(base) / "txloom")
    return str(Path(tempfile.gettempdir()) / f"txloom-{os.getuid()}")


class Options(PluginOptions):
    config_section = "workerhost"

    synopsis = "--apps DIR [--runtime DIR] [--locator ENDPOINT] [--http ENDPOINT] [options]"
    longdesc = (
        "Run txloom's worker host: an app engine that speaks the Cocaine v12 protocols. "
        "Every manifest (*.toml or *.json) in --apps describes an app; its workers are "
        "spawned on demand, connect back on a Unix socket under --runtime, and serve "
        "sessions routed to them by the app's service (resolved through the Locator) or "
        "by the HTTP front end. SIGHUP re-reads --apps (added, changed and removed apps take "
        "effect; sessions of unchanged apps go on). SIGTERM terminates every worker and exits 0."
    )
    optParameters = [
        ["apps", "a", None, "Directory of app manifests (*.toml, *.json). Required."],
        [
            "runtime",
            "r",
            None,
            "Directory for the apps' Unix sockets, created if missing; keep it short "
            "(socket paths are limited to ~104 bytes). Default: $XDG_RUNTIME_DIR/txloom "
            "or /tmp/txloom-UID.",
        ],
        [
            "locator",
            "l",
            DEFAULT_LOCATOR_ENDPOINT,
            "Endpoint string the Locator listens on (clients start here).",
        ],
        [
            "http",
            None,
            None,
            "Endpoint string for the HTTP front end, e.g. tcp:8080 (off unless given).",
        ],
        [
            "service-host",
            None,
            DEFAULT_SERVICE_HOST,
            "Interface the app, logging and other services listen on (each on its own "
            "port); the Locator hands this address to clients.",
        ],
        [
            "verbosity",
            None,
            "info",
            "Lowest level of app log lines kept by the Logging service: "
            "debug, info, warning or error.",
        ],
        [
            "streams",
            None,
            None,
            "Endpoint string for nested-stream services hosted next to the apps, e.g. "
            "tcp:7410 (off unless given; each --stream-service is registered with the "
            "Locator at this address).",
        ],
        ["streams-token", None, None, "Shared token every nested-streams request must carry."],
        [
            "max-message-size",
            None,
            str(DEFAULT_MAX_MESSAGE_SIZE),
            "Largest protocol message accepted from a client, in bytes.",
        ],
        [
            "rpc",
            None,
            None,
            "Endpoint string for reverse-RPC agents over the stream transport, e.g. "
            "tcp:7300 (their functions are then callable through the Locator's rpc service).",
        ],
        [
            "rpc-grpc",
            None,
            None,
            "Endpoint for reverse-RPC agents over gRPC, e.g. tcp:7301:interface=127.0.0.1.",
        ],
        ["rpc-token-file", None, None, "File holding the token reverse-RPC agents must send."],
        [
            "http-max-connections",
            None,
            None,
            "HTTP connections served at once; more wait in the listen backlog. Default: "
            "the descriptor limit minus --fd-reserve and 3 per worker the pools may run.",
        ],
        [
            "http-head-timeout",
            None,
            f"{DEFAULT_HTTP_HEAD_TIMEOUT:g}",
            "Seconds an HTTP client has to send a whole request head (from connecting, or "
            "from the end of its previous response); then it is cut.",
        ],
        [
            "launcher",
            None,
            DEFAULT_LAUNCHER,
            "How workers are started: one of the installed launchers (listed here).",
        ],
        [
            "fd-reserve",
            None,
            str(DEFAULT_FD_RESERVE),
            "File descriptors HTTP connections never take, kept for the Locator, the "
            "services and logs (the workers' own are reserved on top).",
        ],
        [
            "cluster",
            None,
            None,
            "NATS servers of a cluster of worker hosts, e.g. nats://h1:4222,nats://h2:4222 "
            "(JetStream on, nats-server 2.11 or later): the host publishes its apps there, "
            "resolves and routes to the apps of the others (off unless given).",
        ],
        [
            "cluster-ttl",
            None,
            f"{DEFAULT_TTL:g}",
            "Seconds within which the cluster forgets a host that died (it refreshes its "
            "entry every third of that).",
        ],
        [
            "cluster-id",
            None,
            None,
            "This host's name in the cluster. Default: HOSTNAME-LOCATORPORT.",
        ],
        ["cluster-bucket", None, DEFAULT_BUCKET, "JetStream KV bucket the hosts share."],
        [
            "cluster-replicas",
            None,
            "1",
            "Copies JetStream keeps of the bucket when this host creates it (3 on a "
            "three-node NATS cluster).",
        ],
        status_option(),
    ]
    optFlags = [
        ["rpc-http", None, "Serve the heartbeat and long-poll RPC transports at /rpc/ on --http."]
    ]

    def __init__(self) -> None:
        super().__init__()
        self["launcher-option"] = []
        # listed when asked, so that a launcher installed since the import is there too
        self.docs["launcher"] = (
            f"How workers are started: one of the installed launchers, "
            f"{extensions.describe(IWorkerLauncherFactory)}."
        )
        self["stream-services"] = []

    def opt_launcher_option(self, word: str) -> None:
        """KEY=VALUE setting for the chosen launcher (may be repeated)."""
        self["launcher-option"].append(word)

    def opt_stream_service(self, value: str) -> None:
        """'NAME [key=value ...]': serve the stream service NAME with --streams (repeatable)."""
        self["stream-services"].append(value)

    def _stream_services(self) -> None:
        words = [v.split() for v in self["stream-services"]]
        if words and not self["streams"]:
            raise usage.UsageError("--stream-service needs --streams ENDPOINT")
        if self["streams"] and not words:
            raise usage.UsageError("--streams needs at least one --stream-service NAME")
        chosen = []
        for name, *settings in words:
            factory = extensions.choose(IStreamServiceFactory, name, "--stream-service")
            chosen.append(
                (factory, extensions.parse_options(factory, settings, "--stream-service"))
            )
        self["stream-services"] = chosen

    def postOptions(self) -> None:
        self["status"] = valid_status_endpoint(self["status"])
        self._stream_services()
        if not self["apps"]:
            raise usage.UsageError("--apps DIR is required (a directory of app manifests)")
        apps = Path(self["apps"])
        if not apps.is_dir():
            raise usage.UsageError(f"--apps: {apps} is not a directory")
        self["runtime"] = self["runtime"] or default_runtime_dir()
        if self["verbosity"] not in VERBOSITY:
            raise usage.UsageError(
                f"--verbosity must be one of {', '.join(VERBOSITY)}, not {self['verbosity']!r}"
            )
        try:
            self["max-message-size"] = int(self["max-message-size"])
            if self["max-message-size"] < 1024:
                raise ValueError
        except ValueError:
            raise usage.UsageError("--max-message-size must be an integer >= 1024") from None
        if self["rpc-http"] and not self["http"]:
            raise usage.UsageError("--rpc-http needs --http (the front end serves /rpc/)")
        self["rpc-token"] = None
        if self["rpc-token-file"]:
            try:
                text = Path(self["rpc-token-file"]).read_text(encoding="utf-8")
            except OSError as e:
                raise usage.UsageError(f"--rpc-token-file: {e.strerror}") from None
            self["rpc-token"] = text.strip()
        self["http-max-connections"] = _number(
            self["http-max-connections"], "--http-max-connections", int, 1
        )
        self["http-head-timeout"] = _number(
            self["http-head-timeout"], "--http-head-timeout", float, 0
        )
        self["fd-reserve"] = _number(self["fd-reserve"], "--fd-reserve", int, 0)
        self._cluster()
        factory = extensions.choose(IWorkerLauncherFactory, self["launcher"], "--launcher")
        self["launcher-factory"] = factory
        self["launcher-options"] = extensions.parse_options(
            factory, self["launcher-option"], "--launcher-option"
        )
        for name in ("locator", "http", "streams", "rpc"):
            if self[name] is None:
                continue
            try:
                serverFromString(default_reactor(), self[name])
            except (ValueError, TypeError, KeyError) as e:
                raise usage.UsageError(f"--{name}: bad endpoint {self[name]!r}: {e}") from None

    def _cluster(self) -> None:
        self["cluster-ttl"] = _number(self["cluster-ttl"], "--cluster-ttl", float, MIN_TTL)
        self["cluster-replicas"] = _number(self["cluster-replicas"], "--cluster-replicas", int, 1)
        if self["cluster-id"] is not None and not valid_key(self["cluster-id"]):
            raise usage.UsageError(
                f"--cluster-id {self['cluster-id']!r}: use letters, digits, '-', '_' and '='"
            )
        if not valid_bucket(self["cluster-bucket"]):
            raise usage.UsageError(
                f"--cluster-bucket {self['cluster-bucket']!r}: use letters, digits, '-' and '_'"
            )
        if self["cluster"] is None:
            return
        try:
            self["cluster"] = parse_servers(self["cluster"])
        except ValueError as e:
            raise usage.UsageError(f"--cluster: {e}") from None


def _number(value: str | None, option: str, kind: type, least: float) -> Any:
    """``value`` as an int or float of at least ``least`` (None stays None)."""
    if value is None:
        return None
    try:
        number = kind(value)
        if not number >= least:  # also refuses NaN
            raise ValueError
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise usage.UsageError(f"{option} must be {what} >= {least:g}, not {value!r}") from None
    return number


class CommandLineWorkerHost(WorkerHost):
    """A host that cannot start exits the program with one readable line."""

    def startService(self) -> None:
        try:
            super().startService()
        except HostError as e:
            raise StartFailed(f"workerhost: {e}") from None


def makeService(options: Options) -> WorkerHost:
    """The worker host; stops cleanly (exit 0) on SIGTERM once started by twistd."""
    reactor = default_reactor()
    launcher = options["launcher-factory"].launcher(reactor, options["launcher-options"])
    cluster = None
    if options["cluster"]:
        cluster = HostCluster(
            options["cluster"],
            ttl=options["cluster-ttl"],
            bucket=options["cluster-bucket"],
            host_id=options["cluster-id"],
            replicas=options["cluster-replicas"],
            reactor=reactor,
        )
    host = CommandLineWorkerHost(
        options["apps"],
        options["runtime"],
        locator=options["locator"],
        http=options["http"],
        service_host=options["service-host"],
        verbosity=VERBOSITY[options["verbosity"]],
        max_message_size=options["max-message-size"],
        rpc=build_controller(
            options["rpc"], options["rpc-grpc"], options["rpc-http"], options["rpc-token"]
        ),
        http_max_connections=options["http-max-connections"],
        http_head_timeout=options["http-head-timeout"],
        fd_reserve=options["fd-reserve"],
        reactor=reactor,
        launcher=launcher,
        cluster=cluster,
    )
    if options["streams"]:
        from txloom.worker.stream_mount import StreamMount  # noqa: PLC0415 - only if asked

        services = {f.name: f.source_function(o) for f, o in options["stream-services"]}
        token = options["streams-token"]
        StreamMount(
            host,
            options["streams"],
            services,
            token=token.encode() if token else None,
        ).setServiceParent(host)
    CleanExitOnSignal(host.reactor).setServiceParent(host)
    ReloadOnHangup(host.reactor, host.reload).setServiceParent(host)
    systemd.ready_when()
    if options["status"]:
        from txloom.status.worker import watch_worker  # noqa: PLC0415 - only when asked for

        StatusService(options["status"], [watch_worker(host)]).setServiceParent(host)
    return host
