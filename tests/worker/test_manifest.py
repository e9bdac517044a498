"""Manifests and profiles: defaults, overrides, and readable errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from txloom.worker import profile as defaults
from txloom.worker.manifest import ManifestError, load_apps, load_manifest
from txloom.worker.profile import Profile, ProfileError


def test_profile_defaults_are_the_protocols() -> None:
    p = Profile()
    assert (p.pool_limit, p.concurrency, p.queue_limit) == (10, 10, 100)
    assert (p.spawn_timeout, p.handshake_timeout, p.heartbeat_timeout) == (1.0, 5.0, 30.0)
    assert (p.idle_timeout, p.terminate_timeout, p.request_timeout) == (600.0, 10.0, 86400.0)
    assert p.effective_grow_threshold == 5  # max(1, 100 / 10 / 2)
    assert p.max_message_size == defaults.MAX_MESSAGE_SIZE == 64 * 1024 * 1024


def test_profile_overrides_and_backoff() -> None:
    p = Profile.from_mapping({"pool-limit": 3, "queue_limit": 10, "backoff-initial": 0.5})
    assert (p.pool_limit, p.queue_limit, p.effective_grow_threshold) == (3, 10, 1)
    assert [p.backoff(n) for n in range(5)] == [0.0, 0.5, 1.0, 2.0, 4.0]
    assert Profile(backoff_max=1.5).backoff(10) == 1.5
    assert p.as_dict()["grow-threshold"] == 1


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"pool-limit": 0}, "pool-limit must be positive"),
        ({"queue-limit": 0}, "queue-limit must be positive"),
        ({"pool-limit": 1.5}, "pool-limit must be an integer"),
        ({"heartbeat-timeout": "soon"}, "must be a number"),
        ({"concurrency": True}, "must be a number"),
        ({"no-such-thing": 1}, "unknown profile setting"),
    ],
)
def test_profile_errors(values: dict, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        Profile.from_mapping(values)


def test_toml_and_json_manifests(tmp_path: Path) -> None:
    (tmp_path / "echo.toml").write_text(
        'command = ["{python}", "-m", "echo"]\n'
        'http-event = "web"\n'
        '[env]\nK = "v"\n'
        "[profile]\npool-limit = 2\nidle-timeout = 0\n"
    )
    (tmp_path / "other.json").write_text(
        json.dumps({"name": "hello", "command": "./run.sh --fast", "cwd": "{dir}/sub"})
    )
    (tmp_path / "notes.txt").write_text("not a manifest")
    apps, errors = load_apps(tmp_path)
    assert errors == []
    echo, hello = sorted(apps, key=lambda a: a.name)
    assert echo.name == "echo" and echo.command == (sys.executable, "-m", "echo")
    assert echo.http_event == "web" and echo.env == {"K": "v"}
    assert echo.profile.pool_limit == 2 and echo.profile.idle_timeout == 0
    assert echo.cwd == str(tmp_path.resolve())
    assert hello.command == (str(tmp_path.resolve() / "run.sh"), "--fast")
    assert hello.cwd == str(tmp_path.resolve() / "sub")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "bad.json"),
        ('{"command": []}', "non-empty list"),
        ('{"name": "locator", "command": ["x"]}', "built-in service"),
        ('{"name": "a/b", "command": ["x"]}', "bad app name"),
        ('{"command": ["x"], "extra": 1}', "unknown keys"),
        ('{"command": ["x"], "profile": {"pool-limit": -1}}', "pool-limit must be positive"),
        ('{"command": ["x"], "env": {"A": 1}}', "env"),
        ("[1]", "table/object"),
    ],
)
def test_bad_manifests_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ManifestError, match=message):
        load_manifest(path)


def test_one_bad_manifest_does_not_hide_the_others(tmp_path: Path) -> None:
    (tmp_path / "good.json").write_text('{"command": ["x"]}')
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "dup.json").write_text('{"name": "good", "command": ["y"]}')
    apps, errors = load_apps(tmp_path)
    assert [a.name for a in apps] == ["good"]
    assert len(errors) == 2
    assert any("already in" in str(e) for e in errors)
