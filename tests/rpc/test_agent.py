"""``python -m txloom.rpc.agent`` as a real process: joins, answers, dies mid-call."""

from __future__ import annotations

import subprocess
import sys

import pytest
import pytest_twisted

from support.processes import python
from support.waiting import until
from txloom.rpc import Cancelled, Clients, InvalidArgument
from txloom.rpc.agent import AgentOptions, load_handlers
from txloom.rpc.examples.echo import Echo, Fail, Sleep
from txloom.rpc.transports.stream import StreamServerTransport


def test_help_and_usage_errors() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "txloom.rpc.agent", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    assert "--connect" in out.stdout and "heartbeat+http" in out.stdout
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "txloom.rpc.agent",
            "--connect",
            "gopher://x:1",
            "--name",
            "a",
            "--handlers",
            "txloom.rpc.examples.echo",
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert "no RPC transport for 'gopher'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_handler_modules() -> None:
    registry = load_handlers(["txloom.rpc.examples.echo"])
    assert "txloom.examples.Echo" in registry
    options = AgentOptions()
    with pytest.raises(Exception, match="neither register"):
        options.parseOptions(
            ["--connect", "tcp://h:1", "--name", "a", "--handlers", "txloom.rpc.errors"]
        )
        load_handlers(options["handlers"])


@pytest_twisted.ensureDeferred
async def test_agent_process_answers_and_its_death_fails_the_call_at_once() -> None:
    clients = Clients()
    server = StreamServerTransport(clients, "tcp:0:interface=127.0.0.1")
    await server.start()
    url = f"tcp://127.0.0.1:{server.address.port}"
    agent = python(
        "-m",
        "txloom.rpc.agent",
        "--connect",
        url,
        "--name",
        "proc-1",
        "--handlers",
        "txloom.rpc.examples.echo",
    ).start()
    try:
        await until(lambda: "proc-1" in clients, what=f"the agent to join: {agent.tail()}")
        assert await clients.call("proc-1", Echo("hi")) == Echo("hi")
        with pytest.raises(InvalidArgument, match="nope"):
            await clients.call("proc-1", Fail("nope"))
        call = clients.call("proc-1", Sleep(60), timeout=60)
        await until(lambda: clients.list()[0].in_flight == 1)
        agent.kill()
        with pytest.raises(Cancelled):
            await call
    finally:
        agent.kill()
        await server.stop()
