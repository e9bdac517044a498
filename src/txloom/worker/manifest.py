"""App manifests: what an app is called, how to start its workers, how its pool behaves.

One file per app in the apps directory, TOML (``*.toml``, Python 3.11+) or JSON
(``*.json``)::

    name = "echo"                                   # default: the file name without suffix
    command = ["{python}", "-m", "txloom.worker.examples.echo"]
    cwd = "."                                       # default: the manifest's directory
    http-event = "http"                             # event an HTTP request is delivered as
    [env]
    GREETING = "hello"
    [profile]
    pool-limit = 4
    idle-timeout = 60

In ``command`` and ``cwd``, ``{python}`` is the host's Python interpreter and ``{dir}`` the
manifest's directory; a first word starting with ``./`` is relative to that directory.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from txloom.wire.cocaine_http import DEFAULT_HTTP_EVENT
from txloom.worker.profile import Profile, ProfileError

try:
    import tomllib
except ImportError:  # Python 3.10: JSON manifests only
    tomllib = None  # type: ignore[assignment]

#: Names the host uses for its own services.
RESERVED_NAMES = frozenset({"locator", "logging"})
#: An app name is used in socket paths and URLs, so it is kept plain.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: Manifests larger than this are refused (they are a few hundred bytes in practice).
MAX_MANIFEST_SIZE = 1024 * 1024

_KEYS = {"name", "command", "cwd", "env", "profile", "http-event"}


class ManifestError(ValueError):
    """A manifest cannot be read or does not describe an app; the message names the file."""


@dataclasses.dataclass(frozen=True)
class AppManifest:
    name: str
    command: tuple[str, ...]
    cwd: str
    env: Mapping[str, str]
    profile: Profile
    http_event: str = DEFAULT_HTTP_EVENT
    source: str = ""


def _substitute(text: str, directory: Path) -> str:
    return text.replace("{python}", sys.executable).replace("{dir}", str(directory))


def parse_manifest(
    data: Mapping[str, Any], directory: Path, default_name: str, source: str = ""
) -> AppManifest:
    """Check a decoded manifest and build the ``AppManifest``; raise ``ManifestError``."""
    where = source or default_name
    unknown = set(data) - _KEYS
    if unknown:
        raise ManifestError(f"{where}: unknown keys {sorted(unknown)}")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ManifestError(f"{where}: bad app name {name!r} (letters, digits, '_.-')")
    if name in RESERVED_NAMES:
        raise ManifestError(f"{where}: {name!r} is the name of a built-in service")
    command = data.get("command")
    if isinstance(command, str):
        command = command.split()
    if (
        not isinstance(command, list)
        or not command
        or not all(isinstance(w, str) and w for w in command)
    ):
        raise ManifestError(f"{where}: 'command' must be a non-empty list of strings")
    words = [_substitute(w, directory) for w in command]
    if words[0].startswith(("./", "../")):
        words[0] = str((directory / words[0]).resolve())
    cwd = data.get("cwd", str(directory))
    if not isinstance(cwd, str):
        raise ManifestError(f"{where}: 'cwd' must be a string")
    cwd_path = Path(_substitute(cwd, directory))
    if not cwd_path.is_absolute():
        cwd_path = directory / cwd_path
    env = data.get("env", {})
    if not isinstance(env, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise ManifestError(f"{where}: 'env' must map strings to strings")
    profile_table = data.get("profile", {})
    if not isinstance(profile_table, Mapping):
        raise ManifestError(f"{where}: 'profile' must be a table")
    try:
        profile = Profile.from_mapping(profile_table)
    except (ProfileError, TypeError) as e:
        raise ManifestError(f"{where}: {e}") from None
    http_event = data.get("http-event", DEFAULT_HTTP_EVENT)
    if not isinstance(http_event, str) or not http_event:
        raise ManifestError(f"{where}: 'http-event' must be a non-empty string")
    return AppManifest(
        name=name,
        command=tuple(words),
        cwd=str(cwd_path),
        env=dict(env),
        profile=profile,
        http_event=http_event,
        source=source,
    )


def load_manifest(path: Path) -> AppManifest:
    """Read one manifest file (``.toml`` or ``.json``)."""
    try:
        if path.stat().st_size > MAX_MANIFEST_SIZE:
            raise ManifestError(f"{path}: larger than {MAX_MANIFEST_SIZE} bytes")
        raw = path.read_bytes()
    except OSError as e:
        raise ManifestError(f"{path}: {e.strerror}") from None
    try:
        if path.suffix == ".toml":
            if tomllib is None:
                raise ManifestError(f"{path}: TOML manifests need Python 3.11+; use JSON")
            data = tomllib.loads(raw.decode("utf-8"))
        else:
            data = json.loads(raw)
    except ManifestError:
        raise
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: {e}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: a manifest is a table/object")
    return parse_manifest(data, path.parent.resolve(), path.stem, str(path))


def load_apps(directory: Path) -> tuple[list[AppManifest], list[ManifestError]]:
    """Every manifest in ``directory``, and the errors of those that could not be loaded.

    One bad manifest must not keep the other apps from running, so errors are returned
    rather than raised; a duplicate name is an error for the second file.
    """
    apps: list[AppManifest] = []
    errors: list[ManifestError] = []
    seen: dict[str, str] = {}
    for path in sorted(directory.iterdir()):
        # a .toml file on Python 3.10 is reported by load_manifest, not silently skipped
        if path.suffix not in (".toml", ".json") or not path.is_file():
            continue
        try:
            app = load_manifest(path)
        except ManifestError as e:
            errors.append(e)
            continue
        if app.name in seen:
            errors.append(ManifestError(f"{path}: app {app.name!r} already in {seen[app.name]}"))
            continue
        seen[app.name] = str(path)
        apps.append(app)
    return apps, errors
