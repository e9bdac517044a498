"""``txloom store ...`` against a real ``twistd storeserver``.

Most commands run in-process through ``txloom.cli.main`` (the console script's own entry,
minus a second interpreter start-up per command); the pipe, the tail and the installed
script run as real processes.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.cli import TXLOOM, txloom, txloom_child
from support.processes import twistd
from support.waiting import until_blocking
from txloom.cli import main

LISTENING = r"storeserver listening on tcp:127\.0\.0\.1:(\d+)"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("store") / "data"
    child = twistd("storeserver", "--listen", "tcp:0:interface=127.0.0.1", "--data", str(data))
    with child.start():
        yield "127.0.0.1:" + child.wait_for(LISTENING, timeout=30).group(1)
        assert child.terminate() == 0


@pytest.fixture
def cli(server: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> object:
    """``cli(*args, stdin=...)`` -> (status, stdout, stderr), talking to ``server``."""
    monkeypatch.setenv("TXLOOM_STORE", server)

    def run(*args: str, stdin: str = "") -> tuple[int, str, str]:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        try:
            status = main(list(args))
        except SystemExit as e:  # argparse's usage errors and --help
            status = int(e.code or 0)
        out, err = capsys.readouterr()
        return status, out, err

    return run


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_write_replay_tail_stats_compact_snapshot(cli, tmp_path: Path) -> None:
    assert cli("store", "write", "--store", "tasks", "--key", "t1", "--value", '{"done":0}') == (
        0,
        "written: 1\n",
        "",
    )
    many = "\n".join(
        json.dumps({"store": s, "key": k, "value": v})
        for s, k, v in [("tasks", "t2", 2), ("notes", "n1", "hi")]
    )
    status, out, err = cli("store", "write", "--json", stdin=many + "\n")
    assert (status, json.loads(out), err) == (0, {"written": 2}, "")

    status, out, _ = cli("store", "replay")
    facts = lines(out)
    assert [(f["store"], f["key"], f["value"]) for f in facts] == [
        ("tasks", "t1", {"done": 0}),
        ("tasks", "t2", 2),
        ("notes", "n1", "hi"),
    ]
    assert all(f["id"] and f["value_hash"] and f["transaction_time"] > 0 for f in facts)
    _, out, _ = cli("store", "replay", "--store", "tasks", "--page-size", "1")
    assert [f["key"] for f in lines(out)] == ["t1", "t2"]
    _, out, err = cli("store", "replay", "--since", "2", "--progress")
    assert [f["key"] for f in lines(out)] == ["n1"]
    assert "replay" in err  # the bar, when asked for

    stats = json.loads(cli("store", "stats", "--json")[1])
    assert (stats["last_seq"], stats["facts"]) == (3, 3)
    assert "last_seq:" in cli("store", "stats")[1]
    assert json.loads(cli("store", "compact", "--json")[1])["through"] == 3

    snapshot = tmp_path / "snapshot.jsonl"
    snapshot.write_text(json.dumps(facts[0]) + "\n")
    status, out, err = cli("store", "snapshot", str(snapshot), "--json")
    assert (status, json.loads(out)) == (0, {"snapshot_facts": 1}), err


def test_the_console_script_in_a_pipe_and_tail(server: str) -> None:
    env = {"TXLOOM_STORE": server}
    run = txloom("store", "write", input='{"store":"piped","key":"p1","value":1}\n', env=env)
    assert (run.returncode, run.stdout, run.stderr) == (0, "written: 1\n", "")  # no bar
    replayed = lines(txloom("store", "replay", "--store", "piped", env=env).stdout)
    assert [f["key"] for f in replayed] == ["p1"]
    # many writes are pipelined (a window of them shares the server's fsyncs), in order
    many = "".join(json.dumps({"store": "bulk", "key": n, "value": n}) + "\n" for n in range(300))
    run = txloom("store", "write", "--window", "16", input=many, env=env)
    assert (run.returncode, run.stdout) == (0, "written: 300\n"), run.stderr
    bulk = lines(txloom("store", "replay", "--store", "bulk", "--page-size", "100", env=env).stdout)
    assert [f["key"] for f in bulk] == list(range(300))
    # a reader that goes away ends the command quietly
    run = subprocess.run(
        f"{TXLOOM} store replay --store bulk | head -1",
        shell=True, capture_output=True, text=True, env={**os.environ, **env}, timeout=60,
    )  # fmt: skip
    assert run.stdout.count("\n") == 1 and run.stderr == ""

    with txloom_child(["store", "tail", "--server", server, "--store", "live"]) as tail:
        until_blocking(
            lambda: json.loads(txloom("store", "stats", "--json", env=env).stdout)["subscribers"],
            what="the tail to subscribe",
        )
        txloom("store", "write", "--store", "live", "--value", '"x"', env=env)
        fact = json.loads(tail.wait_for(r'"store":"live"').string)
        assert fact["value"] == "x" and fact["seq"] > 0
    # catch-up: --since prints what is stored first, --count ends the command
    run = txloom("store", "tail", "--store", "live", "--since", "0", "--count", "1", env=env)
    assert (run.returncode, lines(run.stdout)[0]["seq"]) == (0, fact["seq"])


@pytest.mark.parametrize(
    ("args", "stdin", "status", "words"),
    [
        (["store", "write", "--store", "s", "--value", "nope"], "", 1, "--value must be JSON"),
        (["store", "write"], '{"store":"s"}\nnot json\n', 1, "line 2: not a fact"),
        (["store", "stats", "--server", "127.0.0.1:1"], "", 3, "cannot connect to 127.0.0.1:1"),
        (["store", "replay", "--since", "-1"], "", 2, "--since: must not be negative"),
        (["store", "frobnicate"], "", 2, "invalid choice: 'frobnicate'"),
        (["store", "snapshot", "/nonexistent.jsonl"], "", 1, "No such file"),
        (["store", "write"], '{"store":"s","value":1e400}\n', 1, "line 1: not a fact"),
        (["store", "write"], '{"store":"s","value":"%s"}\n' % ("x" * 2**24), 1, "frame_too_large"),
    ],
)
def test_failures_say_why_in_one_line_with_their_status(
    cli, args: list[str], stdin: str, status: int, words: str
) -> None:
    got, _, err = cli(*args, stdin=stdin)
    assert got == status, err
    assert words in err
    assert "Traceback" not in err


def test_every_subcommand_has_help(cli) -> None:
    for group, commands in {
        "store": ["write", "replay", "tail", "stats", "snapshot", "compact"],
        "bus": ["pub", "sub", "stats"],
        "worker": ["apps", "status", "call"],
    }.items():
        for command in commands:
            status, out, _ = cli(group, command, "--help")
            assert status == 0 and f"usage: txloom {group} {command}" in out
