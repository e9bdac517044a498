"""Config files (``--config``) and one-line option errors, in-process and under twistd."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from twisted.python import usage

from support.processes import BIN_DIR
from txloom.allinone import Options as NodeOptions
from txloom.store.tap import Options as StoreOptions


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "txloom.toml"
    path.write_text(text)
    return str(path)


def test_each_section_reaches_its_part_and_the_command_line_wins(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        """
[txloom]
data = "from-file"
without = ["workerhost"]
status = "none"

[store]
fsync = "interval:20"
max_connections = 7
listen = ["tcp:0:interface=127.0.0.1"]

[busnode]
relay = true
replay-size = 5
""",
    )
    options = NodeOptions()
    options.parseOptions(["--config", config, "--data", str(tmp_path / "cli")])
    assert options["data"] == str(tmp_path / "cli")
    assert options["status"] is None
    parts = {component.name: sub for component, _tap, sub, _args in options.parts}
    assert set(parts) == {"store", "busnode"}
    store = parts["store"]
    assert (str(store.config.fsync), store["max-connections"]) == ("interval:20", 7)
    assert store["listen"] == ["tcp:0:interface=127.0.0.1"]  # replaces the node's --store-listen
    assert store["data"] == str(tmp_path / "cli" / "store")
    assert parts["busnode"]["relay"] and parts["busnode"]["replay-size"] == 5

    single = StoreOptions()
    single.parseOptions(["--config", config, "--max-connections", "9"])
    assert (single["max-connections"], str(single.config.fsync)) == (9, "interval:20")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[store]\nfsynch = 'always'\n", "[store]: unknown key 'fsynch'; known keys: "),
        ("[stor]\n", "unknown section [stor]"),
        ("[busnode]\nrelay = 'yes'\n", "relay is a flag: true or false"),
        ("[store]\nfsync = 'sometimes'\n", "--fsync must be always, never or interval:MS"),
        ("[txloom\n", "not TOML"),
    ],
)
def test_bad_files_name_the_key(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(usage.UsageError) as raised:
        NodeOptions().parseOptions(["--config", write(tmp_path, text)])
    assert words in str(raised.value)


def test_a_missing_file_is_named() -> None:
    with pytest.raises(usage.UsageError, match=r"--config /nonexistent\.toml: No such file"):
        StoreOptions().parseOptions(["--config", "/nonexistent.toml"])


def test_under_twistd_a_bad_value_is_one_line_naming_the_option() -> None:
    run = subprocess.run(
        [str(BIN_DIR / "twistd"), "-n", "--pidfile=", "storeserver", "--fsync", "sometimes"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr == (
        "twistd storeserver: --fsync must be always, never or interval:MS, not 'sometimes'\n"
    )
