"""The cluster base against a real nats-server with JetStream: the connection for reactor
code, and the membership table (joins, changes, clean leaves, owners that die, restarts)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from support.nats import NatsServer
from support.waiting import until
from txloom.cluster.connection import InboundMessage, NatsConnection, parse_servers
from txloom.cluster.membership import Change, MemberEvent, Membership, valid_key

TTL = 2.0


@pytest.fixture
def jetstream(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path, "-js", "-sd", str(tmp_path / "js")).start()
    try:
        yield server
    finally:
        server.stop()


def test_server_lists_are_parsed_or_refused_in_one_line() -> None:
    assert parse_servers("nats://h1:4222, nats://h2:4222") == ("nats://h1:4222", "nats://h2:4222")
    assert parse_servers(["tls://h1:4443"]) == ("tls://h1:4443",)
    for bad in ("", "h1:4222", "http://h1:4222", "nats://:4222", "nats://h1:99999", "nats://h/x"):
        with pytest.raises(ValueError, match="NATS server URL"):
            parse_servers(bad)
    assert valid_key("host.a-1") and not valid_key("host..a") and not valid_key("a b")


class Events:
    def __init__(self, membership: Membership) -> None:
        self.seen: list[tuple[Change, str, bytes]] = []
        membership.on_change(self)

    def __call__(self, event: MemberEvent) -> None:
        self.seen.append((event.change, event.member.key, event.member.value))


async def _member(url: str, runner: str = "auto", ttl: float = TTL) -> Membership:
    connection = NatsConnection([url], runner=runner, name="test")
    await connection.start()
    membership = Membership(connection, "test-members", ttl=ttl)
    await membership.start()
    return membership


async def _close(*members: Membership) -> None:
    for m in members:
        await m.stop()
        await m.connection.stop()


@pytest_twisted.ensureDeferred
async def test_entries_join_change_and_leave_in_every_view(jetstream: NatsServer) -> None:
    # one member on the reactor's own loop, the other with nats-py in its own thread
    a = await _member(jetstream.url, "same")
    b = await _member(jetstream.url, "thread")
    try:
        b_events = Events(b)
        a.publish("host.a", b"one")
        await until(lambda: "host.a" in b.members, 10, "b to see a")
        assert b.members["host.a"].value == b"one"
        a.publish("host.a", b"two")
        await until(lambda: b.members["host.a"].value == b"two", 10, "b to see the change")
        b.publish("host.b", b"b")
        await until(lambda: set(a.members) == {"host.a", "host.b"}, 10, "a to see both")
        # refreshes keep it there past the TTL, and they are no change
        start = reactor.seconds()
        await until(lambda: reactor.seconds() - start > TTL * 1.5, 10, "a TTL and a half")
        assert set(b.members) == {"host.a", "host.b"} and a.failed_refreshes == 0
        await a.stop()
        await until(lambda: "host.a" not in b.members, 10, "a to leave b's view")
        assert b_events.seen == [
            (Change.JOINED, "host.a", b"one"),
            (Change.UPDATED, "host.a", b"two"),
            (Change.JOINED, "host.b", b"b"),
            (Change.LEFT, "host.a", b"two"),
        ]
        # a late joiner starts with the whole table
        c = await _member(jetstream.url)
        assert set(c.members) == {"host.b"}
        await _close(c)
    finally:
        await _close(a, b)


@pytest_twisted.ensureDeferred
async def test_an_owner_that_stops_refreshing_leaves_within_the_ttl(jetstream: NatsServer) -> None:
    a = await _member(jetstream.url)
    b = await _member(jetstream.url)
    try:
        b_events = Events(b)
        a.publish("host.a", b"a")
        await until(lambda: "host.a" in b.members, 10, "b to see a")
        # a's process "dies": its connection goes without withdrawing anything
        await a.connection.stop()
        gone_at = reactor.seconds()
        await until(lambda: "host.a" not in b.members, 10, "a to expire")
        # JetStream expires an entry TTL after its last refresh, checking about once a
        # second; the rest is room for a machine whose cores are busy
        assert reactor.seconds() - gone_at < TTL + 2.0
        assert b_events.seen[-1] == (Change.LEFT, "host.a", b"a")
    finally:
        await _close(b)


@pytest_twisted.ensureDeferred
async def test_a_server_restart_keeps_the_table_and_reconciles_the_view(
    jetstream: NatsServer,
) -> None:
    a = await _member(jetstream.url)
    b = await _member(jetstream.url)
    try:
        a.publish("host.a", b"a")
        b.publish("host.b", b"b")
        await until(lambda: len(a.members) == len(b.members) == 2, 10, "both views")
        links: list[bool] = []
        a.connection.on_link(links.append)
        jetstream.stop()
        await until(lambda: links == [False], 10, "a to see NATS go")
        await jetstream.started()
        await until(lambda: a.connection.connected and b.connection.connected, 20, "reconnect")
        # both re-put at once and watch afresh; a change after the restart reaches b
        a.publish("host.a", b"after")
        await until(
            lambda: (
                b.members.get("host.a", None) is not None and b.members["host.a"].value == b"after"
            ),
            20,
            "b to see a's change",
        )
        assert set(a.members) == {"host.a", "host.b"}
    finally:
        await _close(a, b)


@pytest_twisted.ensureDeferred
async def test_requests_and_subscriptions_are_answered_on_the_reactor(
    jetstream: NatsServer,
) -> None:
    server = NatsConnection(jetstream.url, runner="thread")
    client = NatsConnection(jetstream.url)
    await server.start()
    await client.start()
    try:
        got: list[InboundMessage] = []

        def answer(msg: InboundMessage) -> None:
            got.append(msg)
            server.publish(msg.reply, msg.data.upper())

        sub = await server.subscribe("svc.echo", answer, queue="q")
        reply = await client.request("svc.echo", b"hello", timeout=5)
        assert reply.data == b"HELLO" and got[0].subject == "svc.echo"
        await sub.unsubscribe()
        await until(lambda: server.connected and client.connected, 5, "links")
    finally:
        await client.stop()
        await server.stop()
