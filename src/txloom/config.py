"""Config files for the twistd plugins, and one-line command-line errors.

    twistd -n txloom --config txloom.toml
    twistd -n storeserver --config txloom.toml      # reads the [store] section

A config file is TOML with a section per part: ``[txloom]`` for the all-in-one node's own
options, ``[store]``, ``[workerhost]`` and ``[busnode]`` for the servers (the names of
``twistd txloom --without``). Every key is a long command-line option of that part,
spelled as on the command line (``max-connections``) or with underscores; a flag takes
``true``/``false``, a repeatable option a list. A key the part does not know is an error
naming it. The file's options come first, so the command line wins over them (and adds to
repeatable options such as ``--listen``).

``PluginOptions`` is the base of the plugins' ``Options``: it reads ``--config``, and
under twistd it reports a bad option as one line naming it (twistd itself would print
the whole usage text first), then exits with status 1.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from twisted.python import usage

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["PART_SECTIONS", "PluginOptions", "load_config", "section_arguments"]

#: Sections a config file may have: the all-in-one node's own, then one per part.
PART_SECTIONS = ("txloom", "store", "workerhost", "busnode")


def load_config(path: str | Path) -> dict[str, dict[str, Any]]:
    """The sections of a config file; ``UsageError`` naming the file and what is wrong."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise usage.UsageError(f"--config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise usage.UsageError(f"--config {path}: not TOML: {e}") from None
    for name, table in data.items():
        if name not in PART_SECTIONS:
            raise usage.UsageError(
                f"--config {path}: unknown section [{name}]; sections are "
                + ", ".join(f"[{s}]" for s in PART_SECTIONS)
            )
        if not isinstance(table, dict):
            raise usage.UsageError(f"--config {path}: {name} must be a section ([{name}])")
    return data


def _option_names(options: usage.Options) -> tuple[set[str], set[str]]:
    """The long options of ``options``: (those taking a value, flags)."""
    values = {name[:-1] for name in options.longOpt if name.endswith("=")}
    flags = {name for name in options.longOpt if not name.endswith("=")}
    flags -= {"help", "version", "config"}
    values.discard("config")
    return values, flags


def section_arguments(table: Mapping[str, Any], options: usage.Options, where: str) -> list[str]:
    """Command-line arguments for one section's keys (``where`` names it in errors)."""
    values, flags = _option_names(options)
    arguments: list[str] = []
    for key, value in table.items():
        name = key.replace("_", "-")
        if name in flags:
            if not isinstance(value, bool):
                raise usage.UsageError(f"{where}: {key} is a flag: true or false, not {value!r}")
            if value:
                arguments.append(f"--{name}")
        elif name in values:
            items = value if isinstance(value, list) else [value]
            for item in items:
                if isinstance(item, dict | list):
                    raise usage.UsageError(f"{where}: {key} takes a value, not {item!r}")
                text = str(item).lower() if isinstance(item, bool) else str(item)
                arguments += [f"--{name}", text]
        else:
            known = ", ".join(sorted(values | flags))
            raise usage.UsageError(f"{where}: unknown key {key!r}; known keys: {known}")
    return arguments


def _split_config(arguments: Sequence[str]) -> tuple[str | None, list[str]]:
    """``--config FILE`` (or ``--config=FILE``) taken out of ``arguments``."""
    rest: list[str] = []
    path = None
    it = iter(arguments)
    for argument in it:
        if argument == "--":
            rest += [argument, *it]
            break
        if argument == "--config":
            path = next(it, None)
            if path is None:
                raise usage.UsageError("--config needs a file name")
        elif argument.startswith("--config="):
            path = argument.split("=", 1)[1]
        else:
            rest.append(argument)
    return path, rest


class PluginOptions(usage.Options):
    """``usage.Options`` with ``--config FILE`` and one-line errors under twistd."""

    #: The config file section holding this plugin's options.
    config_section = ""

    def __init__(self) -> None:
        super().__init__()
        #: The whole config file, when ``--config`` named one (other parts read it too).
        self.config_file: dict[str, dict[str, Any]] = {}
        self.config_path: str | None = None

    def opt_config(self, path: str) -> None:
        """TOML file of options, a section per part (docs/operating.md); the command line wins."""
        # only reached when parseOptions was bypassed; the file is read there

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        try:
            if options is None:
                options = sys.argv[1:]
            path, rest = _split_config(options)
            if path is not None:
                self.config_path = path
                self.config_file = load_config(path)
                table = self.config_file.get(self.config_section, {})
                where = f"--config {path}: [{self.config_section}]"
                rest = section_arguments(table, self, where) + rest
            super().parseOptions(rest)
        except usage.UsageError as e:
            parent = getattr(self, "parent", None)
            if parent is None:
                raise
            # under twistd: one line instead of twistd's whole usage text and the error
            raise SystemExit(f"twistd {parent.subCommand}: {e}") from None
