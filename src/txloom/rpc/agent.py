"""``python -m txloom.rpc.agent``: an agent process that joins a controller and answers its
calls with the handlers of the modules given.

    python -m txloom.rpc.agent --connect tcp://ctl:7300 --name web-7 \\
        --handlers mypkg.agent_handlers [--token-file /etc/rpc.token]

The URL's scheme chooses the transport (``tcp``, ``unix``, ``tls``: stream;
``heartbeat+http(s)``, ``longpoll+http(s)``/``http(s)``: HTTP; ``grpc``/``grpcs``: gRPC),
among every ``IRPCTransportFactory`` installed. The agent reconnects with backoff until it
is stopped (SIGINT or SIGTERM).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage

from txloom.extensions import parse_options
from txloom.rpc.dispatcher import Dispatcher
from txloom.rpc.handlers import HandlerRegistry
from txloom.rpc.transports.factories import factory_for_url

__all__ = ["AgentOptions", "load_handlers", "main"]

log = Logger()


class AgentOptions(usage.Options):
    synopsis = "--connect URL --name NAME --handlers MODULE [--handlers MODULE ...]"
    longdesc = (
        "Join the reverse-RPC controller at URL as NAME and answer its calls with the "
        "handlers that each MODULE registers (a register(registry) function or a "
        "module-level registry). URL schemes: tcp://, unix://, tls:// (stream); "
        "heartbeat+http(s)://, longpoll+http(s)://, http(s):// (HTTP); grpc://, grpcs://."
    )
    optParameters = [
        ["connect", "c", None, "Controller URL; its scheme chooses the transport."],
        ["name", "n", None, "The agent's name (unique among the controller's agents)."],
        ["token", None, None, "Token the controller expects (prefer --token-file)."],
        ["token-file", None, None, "File holding the token (first line)."],
    ]
    optFlags = [["verbose", "v", "Log at debug level."]]

    def __init__(self) -> None:
        super().__init__()
        self["handlers"] = []
        self["transport-options"] = []

    def opt_handlers(self, module: str) -> None:
        """Module whose handlers to serve (repeatable)."""
        self["handlers"].append(module)

    def opt_transport_option(self, word: str) -> None:
        """key=value for the chosen transport (repeatable; see its options)."""
        self["transport-options"].append(word)

    def postOptions(self) -> None:
        for required in ("connect", "name"):
            if not self[required]:
                raise usage.UsageError(f"--{required} is required")
        if not self["handlers"]:
            raise usage.UsageError("give at least one --handlers MODULE")
        if self["token-file"]:
            try:
                with open(self["token-file"], encoding="utf-8") as f:
                    self["token"] = f.readline().strip()
            except OSError as e:
                raise usage.UsageError(f"--token-file: {e.strerror}") from None
        self.factory = factory_for_url(self["connect"])
        self.transport_options = parse_options(
            self.factory, self["transport-options"], "--transport-option"
        )


def load_handlers(modules: Sequence[str], registry: HandlerRegistry | None = None) -> Any:
    """A ``HandlerRegistry`` holding the handlers of every module named."""
    registry = HandlerRegistry() if registry is None else registry
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            raise usage.UsageError(f"--handlers {name}: {e}") from None
        register = getattr(module, "register", None)
        own = getattr(module, "registry", None)
        if callable(register):
            register(registry)
        elif isinstance(own, HandlerRegistry):
            for type_name in own:
                registration = own.lookup(type_name)
                registry.register(registration.codec.kind or type_name, registration.handler)
        else:
            raise usage.UsageError(
                f"--handlers {name}: defines neither register(registry) nor registry"
            )
    return registry


async def run(reactor: Any, options: AgentOptions) -> None:
    registry = load_handlers(options["handlers"])
    transport = options.factory.client(
        options["connect"],
        options["name"],
        Dispatcher(registry),
        options["token"],
        options.transport_options,
    )
    stopped: Deferred[None] = Deferred()
    reactor.addSystemEventTrigger("before", "shutdown", transport.stop)
    reactor.addSystemEventTrigger("before", "shutdown", stopped.callback, None)
    log.info(
        "agent {name} serving {types} for {url}",
        name=options["name"],
        types=", ".join(registry) or "-",
        url=options["connect"],
    )
    await transport.start()
    await stopped


def main(argv: Sequence[str] | None = None) -> None:
    options = AgentOptions()
    try:
        options.parseOptions(list(sys.argv[1:] if argv is None else argv))
    except usage.UsageError as e:
        print(f"{os.path.basename(sys.argv[0])}: {e}", file=sys.stderr)
        print(options, file=sys.stderr)
        raise SystemExit(2) from None
    from twisted.internet import reactor  # noqa: PLC0415 - installed by now
    from twisted.logger import (  # noqa: PLC0415
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    level = LogLevel.debug if options["verbose"] else LogLevel.info
    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(defaultLogLevel=level)]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    d = Deferred.fromCoroutine(run(reactor, options))
    d.addErrback(lambda f: log.failure("agent failed", f))
    d.addBoth(lambda _: reactor.stop() if reactor.running else None)
    reactor.run()


if __name__ == "__main__":
    main()
