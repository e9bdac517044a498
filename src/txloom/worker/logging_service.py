"""The Logging service: apps' log lines into the host's structured log.

``emit(priority, source, message, attributes)`` logs through ``twisted.logger`` with the
event tagged ``app`` (from a source ``app/NAME``), ``uuid`` (from the attributes, if the
worker sent one) and ``attributes``; lines below the current verbosity are dropped.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger, LogLevel
from zope.interface import implementer

from txloom.interfaces import IReplyChannel, IService
from txloom.wire.cocaine import HeaderEntry
from txloom.worker import errors
from txloom.worker.dispatch import PRIMITIVE, TERMINAL

LOGGING_VERSION = 2

DEBUG, INFO, WARNING, ERROR = 0, 1, 2, 3
#: Lines below this priority are dropped unless ``set_verbosity`` says otherwise.
DEFAULT_VERBOSITY = INFO

EMIT = 0
VERBOSITY = 1
SET_VERBOSITY = 2

#: Apps' lines are logged under this namespace (a module-level logger: as a class
#: attribute a Logger takes the class's name instead).
APP_LOG_NAMESPACE = "txloom.worker.apps"
_app_log = Logger(namespace=APP_LOG_NAMESPACE)

LEVELS = {DEBUG: LogLevel.debug, INFO: LogLevel.info, WARNING: LogLevel.warn, ERROR: LogLevel.error}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@implementer(IService)
class LoggingService:
    log = Logger()
    name = "logging"
    version = LOGGING_VERSION
    graph = {
        EMIT: ("emit", TERMINAL, TERMINAL),
        VERBOSITY: ("verbosity", TERMINAL, PRIMITIVE),
        SET_VERBOSITY: ("set_verbosity", TERMINAL, PRIMITIVE),
    }

    def __init__(self, verbosity: int = DEFAULT_VERBOSITY) -> None:
        self.verbosity = verbosity

    def emit(self, priority: int, source: str, message: str, attributes: dict[str, Any]) -> None:
        if priority < self.verbosity:
            return
        app = source[4:] if source.startswith("app/") else source
        _app_log.emit(
            LEVELS.get(priority, LogLevel.error if priority > ERROR else LogLevel.debug),
            "[{app} {uuid}] {source}: {message}",
            app=app,
            uuid=attributes.get("uuid", "-"),
            source=source,
            message=message,
            attributes=attributes,
        )

    def invoke(
        self,
        method: int,
        args: list[Any],
        headers: tuple[HeaderEntry, ...],
        reply: IReplyChannel,
    ) -> None:
        if method == EMIT:
            try:
                priority, source, message, *rest = args
                attributes = {_text(k): _text(v) for k, v in (rest[0] if rest else [])}
                priority = int(priority)
            except (TypeError, ValueError):
                self.log.warn("logging: malformed emit {args!r:.120}", args=args)
                return
            self.emit(priority, _text(source), _text(message), attributes)
        elif method == VERBOSITY:
            reply.value(self.verbosity)
        else:
            if len(args) != 1 or type(args[0]) is not int:
                reply.error(errors.DISPATCH, errors.BAD_ARGUMENTS, "set_verbosity takes [level]")
                return
            self.verbosity = args[0]
            reply.value()
