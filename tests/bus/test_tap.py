"""``twistd busnode``: options, the service they make, start-up failures, SIGTERM."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from twisted.python import usage

from support.processes import free_port, twistd
from txloom.bus.node import BusNodeService
from txloom.bus.tap import Options, makeService


def parse(*args: str) -> Options:
    return Options().parse(args)


def test_defaults_are_the_specs() -> None:
    c = parse().config()
    assert c.listen == "tcp:8081:interface=127.0.0.1"  # loopback, its own port
    assert c.path == "/meta/message"
    assert c.belongs_to == "*"
    assert c.discovery == "none"
    assert (c.discovery_group, c.discovery_port, c.discovery_interval) == (
        "239.255.255.250",
        9999,
        10.0,
    )
    assert c.replay_size == 128
    assert not c.relay
    assert c.status


def test_all_in_one_arguments_make_a_service() -> None:
    service = makeService(parse("--listen", "tcp:8081:interface=127.0.0.1", "--discovery", "none"))
    assert isinstance(service, BusNodeService)
    assert service.config.listen == "tcp:8081:interface=127.0.0.1"


def test_repeatable_options_and_token_file(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("  s3cret \n")
    c = parse(
        "--peer", "ws://10.0.0.2:8080/meta/message",
        "-p", "wss://node.example:8443/mesh",
        "--token-file", str(token),
        "--nats", "nats://127.0.0.1:4222",
        "--bridge-type", "orders.created",
        "--bridge-type", "orders.paid",
        "--relay",
        "--hop-limit", "3",
    ).config()  # fmt: skip
    assert c.peers == ["ws://10.0.0.2:8080/meta/message", "wss://node.example:8443/mesh"]
    assert c.token == "s3cret"
    assert c.bridge_types == ["orders.created", "orders.paid"]
    assert c.relay
    assert c.hop_limit == 3


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--peer", "http://x/"], "ws:// or wss://"),
        (["--peer", "not-a-url"], "ws://HOST:PORT"),
        (["--peer", "127.0.0.1"], "ws://HOST:PORT"),
        (["--peer", "ws://"], "names no host"),
        (["--keepalive", "-1"], "--keepalive"),
        (["--replay-size", "-1"], "--replay-size"),
        (["--discovery", "everywhere"], "--discovery everywhere: not installed; choose one of"),
        (["--discovery-option", "x=1"], "comes after the --discovery"),
        (["--discovery", "local", "--discovery-option", "interval=-1"], "interval must be"),
        (["--discovery", "local", "--discovery", "local"], "given twice"),
        (["--bridge", "orders.created"], "--bridge orders.created: not installed"),
        (["--bridge", "nats"], "--bridge nats needs --nats URL"),
        (["--bridge", "nats", "--bridge-option", "url=nats://x:1"], "at least one --bridge-type"),
        (["--transport", "carrier-pigeon"], "--transport carrier-pigeon: not installed"),
        (["--slow-pod-policy", "panic"], "--slow-pod-policy"),
        (["--slow-client-policy", "pause"], "--slow-client-policy must be"),
        (["--client-backlog-limit", "0"], "0 is not positive"),
        (["--bridge-type", "a.b"], "--bridge-type needs --nats"),
        (["--nats", "nats://127.0.0.1:4222"], "at least one --bridge-type"),
        (["--nats", "nats://x:1", "--bridge-type", "bad type"], "valid NATS subject"),
        (["--nats", "nats://x:1", "--bridge-type", "a..b"], "valid NATS subject"),
        (["--nats", "http://x", "--bridge-type", "a"], "--nats must look like"),
        (["--listen", "nonsense:1:2:3"], "--listen"),
        (["--token-file", "/nonexistent/token"], "--token-file"),
        (["--hop-limit", "0"], "--hop-limit"),
        (["--uuid", "not-a-uuid"], "--uuid"),
        (["--discovery-address", "239.1.1.1"], "GROUP:PORT"),
        (["--handshake-timeout", "-1"], "-1 is not positive"),
        (["--path", "meta"], "--path"),
    ],
)
def test_bad_command_lines(args: list[str], complaint: str) -> None:
    with pytest.raises(usage.UsageError, match=complaint):
        parse(*args)


def test_empty_token_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "token"
    empty.write_text("\n")
    with pytest.raises(usage.UsageError, match="empty"):
        parse("--token-file", str(empty))


@pytest.mark.slow
def test_twistd_help_and_bad_options(tmp_path: Path) -> None:
    with twistd("busnode", "--help", cwd=tmp_path) as helped:
        assert helped.wait() == 0
        for option in ("--listen", "--peer", "--discovery", "--belongs-to", "--token-file",
                       "--nats", "--bridge", "--relay", "--slow-pod-policy"):  # fmt: skip
            assert option in helped.output
    with twistd("busnode", "--discovery", "everywhere", cwd=tmp_path) as bad:
        assert bad.wait() != 0
        assert "--discovery everywhere: not installed; choose one of: " in bad.lines[-1]
        assert "local" in bad.lines[-1]
    for args, complaint in [
        (["--peer", "127.0.0.1"], "is not a peer URL: write ws://HOST:PORT/PATH (or wss://...)"),
        (["--keepalive", "-1"], "--keepalive must be 0 (no pings) or a positive number"),
    ]:
        with twistd("busnode", *args, cwd=tmp_path) as bad:
            assert bad.wait() != 0
            assert bad.lines[-1].endswith(complaint), bad.output
            assert "Traceback" not in bad.output


@pytest.mark.slow
def test_port_in_use_fails_with_one_readable_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with twistd("busnode", f"--listen=tcp:{port}:interface=127.0.0.1", cwd=tmp_path) as node:
            assert node.wait() != 0
            assert any(
                f"busnode: cannot listen on tcp:{port}:interface=127.0.0.1" in line
                and "Address already in use" in line
                for line in node.lines
            ), node.output


@pytest.mark.slow
def test_sigterm_withdraws_and_exits_zero(tmp_path: Path) -> None:
    """With a --peer that was never reached, SIGTERM is still clean (no unhandled
    CancelledError at critical level)."""
    port, unreachable = free_port(), free_port()
    with twistd(
        "busnode",
        f"--listen=tcp:{port}:interface=127.0.0.1",
        f"--peer=ws://127.0.0.1:{unreachable}/meta/message",
        "--reconnect-initial=0.05",
        cwd=tmp_path,
    ) as node:
        node.wait_for(rf"listening on tcp:127\.0\.0\.1:{port}")
        node.wait_for(r"bus node \S+ ready")
        node.wait_for(r"cannot connect to peer .* attempt 2")
        assert node.terminate() == 0
        assert "bus node stopping" in node.output
        assert "Traceback" not in node.output
        assert "Unhandled error" not in node.output
        assert "critical" not in node.output
