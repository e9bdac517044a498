"""Finding and choosing extensions that packages ship as Twisted plugins.

An extension kind is a factory interface in ``txloom.interfaces`` (``IStorageBackendFactory``,
``IRPCTransportFactory``, ``IAddressResolverFactory``, ...), each extending
``IExtensionFactory``: a ``name``, a one-line ``description`` and the factory's own
``options`` (a ``usage.Options`` subclass, or None). txloom's own factories and any
third-party package's are found the same way, by ``twisted.plugin.getPlugins`` over the
``twisted.plugins`` namespace, so installing a package that ships a dropin is all it takes.
Twisted collects only dropin objects that also provide ``twisted.plugin.IPlugin``, so a
factory class declares both: ``@implementer(IPlugin, IStorageBackendFactory)``. Editable
installs copy dropins into site-packages and Twisted caches them in ``dropin.cache``:
after editing a dropin, reinstall the package.

On the command line a factory is chosen by name and configured with ``key=value`` words
(``--backend sqlite --backend-option path=facts.db``); ``parse_options`` turns those words
into the factory's own Options, so each factory validates and documents its settings.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import twisted.plugins
from twisted.logger import Logger
from twisted.plugin import getPlugins
from twisted.python import usage
from zope.interface.interface import InterfaceClass

__all__ = ["available", "choose", "describe", "parse_options", "positive"]

log = Logger()


def available(interface: InterfaceClass) -> dict[str, Any]:
    """Every installed factory providing ``interface``, by name (sorted by name).

    Two factories with one name: the first found wins and the other is logged, so that a
    stray package cannot silently replace a built-in one in a different run order.
    """
    found: dict[str, Any] = {}
    for factory in getPlugins(interface, twisted.plugins):
        name = getattr(factory, "name", None)
        if not isinstance(name, str) or not name:
            log.warn("ignoring {factory!r}: a factory needs a non-empty name", factory=factory)
            continue
        if name in found:
            log.warn(
                "two {kind} factories are named {name!r}: keeping {kept!r}, ignoring {other!r}",
                kind=interface.__name__,
                name=name,
                kept=found[name],
                other=factory,
            )
            continue
        found[name] = factory
    return dict(sorted(found.items()))


def describe(interface: InterfaceClass) -> str:
    """``name (description); ...`` of everything installed, for an option's help text."""
    parts = [f"{name} ({factory.description})" for name, factory in available(interface).items()]
    return "; ".join(parts) if parts else "none installed"


def choose(interface: InterfaceClass, name: str, option: str) -> Any:
    """The factory called ``name``; a ``UsageError`` naming ``option`` and the choices if none."""
    factories = available(interface)
    try:
        return factories[name]
    except KeyError:
        choices = ", ".join(factories) or "none installed"
        message = f"{option} {name}: not installed; choose one of: {choices}"
        raise usage.UsageError(message) from None


def parse_options(factory: Any, words: Iterable[str], option: str) -> usage.Options | None:
    """The factory's Options parsed from ``key=value`` words (``option`` names the flag).

    ``["path=facts.db", "sync"]`` is parsed as ``--path facts.db --sync``. Errors are one
    ``UsageError`` line naming the flag and the factory.
    """
    words = list(words)
    options_class = getattr(factory, "options", None)
    if options_class is None:
        if words:
            raise usage.UsageError(f"{option}: {factory.name} takes no options")
        return None
    argv: list[str] = []
    for word in words:
        key, eq, value = word.partition("=")
        if not key:
            raise usage.UsageError(f"{option} {word!r}: expected key=value")
        argv.append(f"--{key}")
        if eq:
            argv.append(value)
    options = options_class()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        raise usage.UsageError(f"{option} ({factory.name}): {e}") from None
    return options


def positive(kind: type) -> Any:
    """A ``usage.Options`` coercer for a factory option that must be a positive number."""

    def check(value: str) -> Any:
        number = kind(value)
        if number <= 0:
            raise ValueError(f"{value} is not positive")
        return number

    check.coerceDoc = "Must be positive."  # type: ignore[attr-defined]
    return check
