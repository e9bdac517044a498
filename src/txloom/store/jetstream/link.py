"""The store's side of NATS: one connection, the two streams, publishing, and the feeds.

Runs on an asyncio loop (``txloom.aioloop``: the reactor's own under the asyncio
reactor, a thread of its own otherwise). The reactor side (``JetStreamBackend``) hands
over whole batches of publications with one ``call_in_loop``; acknowledgements and
delivered messages come back in batches too, one ``to_reactor`` per loop turn, so a burst
of a thousand writes costs two hand-overs, not two thousand.

Streams (``prefix`` defaults to ``txloom``):

- ``<prefix>_facts``, subjects ``<prefix>.facts.<store>``: every fact, its body the
  compact JSON that replay sends back, numbered by JetStream. A message with the header
  ``Txloom-Snapshot`` is a number a snapshot reserved for a new fact, not a log fact.
- ``<prefix>_snapshots``: the current snapshot, as parts ``<prefix>.snapshots.<name>.<i>``
  (each a run of ``u64 number, u32 length, body``) and a commit
  ``<prefix>.snapshots.current`` naming the parts; one message per subject is kept.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nats
from nats.errors import NoRespondersError
from nats.js import api
from nats.js.errors import APIError, NotFoundError

from txloom.aioloop import AsyncioRunner

T = TypeVar("T")

__all__ = [
    "CONSUMER_HEARTBEAT",
    "PUBLISH_RETRY_PAUSE",
    "SNAPSHOT_PART_BYTES",
    "JetStreamLink",
    "LinkSettings",
    "store_token",
]

#: Seconds between the idle heartbeats of the feed's consumer; two missed ones (after a
#: NATS node died, say) make the client re-create the consumer where the feed stopped.
CONSUMER_HEARTBEAT = 0.5
#: Seconds between tries of a publication that got no acknowledgement (a node died, the
#: stream is electing a leader); tries carry the same message id, so JetStream stores a
#: publication once however often it is tried.
PUBLISH_RETRY_PAUSE = 0.05
#: Seconds between looks for publications whose acknowledgement is late.
SWEEP_INTERVAL = 0.05
#: Bytes of snapshot facts per part message (under NATS's default 1 MiB payload limit).
SNAPSHOT_PART_BYTES = 512 * 1024
#: Header marking a number reserved by a snapshot (its value: the snapshot's name).
SNAPSHOT_HEADER = "Txloom-Snapshot"

#: JetStream's error code for "stream name already in use with a different configuration".
STREAM_EXISTS = 10058

_PLAIN_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}\Z")
_ENTRY = struct.Struct(">QI")


def store_token(store: str) -> str:
    """A subject token for a store name: the name itself when it is plain, otherwise
    ``~`` and its base64url (NATS subjects cannot hold dots, spaces or wildcards)."""
    if _PLAIN_TOKEN.match(store):
        return store
    return "~" + base64.urlsafe_b64encode(store.encode("utf-8")).decode("ascii").rstrip("=")


@dataclass(frozen=True)
class LinkSettings:
    """How to reach JetStream and what to create there (the factory's options)."""

    servers: Sequence[str]
    replicas: int = 1
    prefix: str = "txloom"
    token: str | None = None
    creds: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    #: Seconds one publication waits for its acknowledgement before it is tried again.
    ack_timeout: float = 2.0
    #: Seconds a publication is retried before its writer is told it failed.
    retry_for: float = 30.0
    #: Seconds allowed for connecting and creating the streams at start.
    connect_timeout: float = 30.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def facts_stream(self) -> str:
        return f"{self.prefix}_facts"

    @property
    def snapshots_stream(self) -> str:
        return f"{self.prefix}_snapshots"

    def subject(self, store: str) -> str:
        return f"{self.prefix}.facts.{store_token(store)}"

    @property
    def commit_subject(self) -> str:
        return f"{self.prefix}.snapshots.current"

    def part_subject(self, name: str, index: int) -> str:
        return f"{self.prefix}.snapshots.{name}.{index}"


#: What the feed hands the reactor: ``(number, reserved, body)``.
Delivered = tuple[int, bool, bytes]
#: A publication: ``(token, subject, body, message id, snapshot name or None)``.
Publication = tuple[int, str, bytes, str, "str | None"]


class StoreRefused(Exception):
    """JetStream refused a publication for good (too large, no such stream, ...)."""


@dataclass(slots=True)
class _Pending:
    """A publication waiting for its acknowledgement."""

    token: int
    subject: str
    body: bytes
    headers: dict[str, str]
    deadline: float
    sent_at: float = 0.0
    tries: int = 1
    error: Exception | None = None


def encode_part(entries: Sequence[tuple[int, bytes]]) -> bytes:
    return b"".join(_ENTRY.pack(seq, len(body)) + body for seq, body in entries)


def decode_part(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    at = 0
    while at < len(data):
        seq, size = _ENTRY.unpack_from(data, at)
        at += _ENTRY.size
        out.append((seq, bytes(data[at : at + size])))
        at += size
    return out


class JetStreamLink:
    """The loop side of the backend (see the module docstring).

    ``on_acks(list of (token, number | Exception, duplicate))``, ``on_facts(list of
    Delivered)``, ``on_snapshot(name, [(number, body)])`` and ``on_state(text | None,
    down)`` (None: connected again; ``down``: the connection is lost)
    are called on the reactor thread through ``runner.to_reactor``.
    """

    def __init__(
        self,
        runner: AsyncioRunner,
        settings: LinkSettings,
        *,
        on_acks: Callable[[list[Any]], None],
        on_facts: Callable[[list[Delivered]], None],
        on_snapshot: Callable[[str, list[tuple[int, bytes]]], None],
        on_state: Callable[[str | None, bool], None],
    ) -> None:
        self.runner = runner
        self.settings = settings
        self._on_acks = on_acks
        self._on_facts = on_facts
        self._on_snapshot = on_snapshot
        self._on_state = on_state
        self.nc: Any = None
        self.js: Any = None
        self.max_payload = 1024 * 1024
        self._acks: list[Any] = []
        self._facts: list[Delivered] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Future[Any]] = set()
        self._waiting: dict[int, _Pending] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._inbox = ""
        self._subs: list[Any] = []
        self._closing = False

    # -- lifetime -------------------------------------------------------------------------

    async def connect(self) -> tuple[int, int | None]:
        """Connect, create or find both streams, start both feeds. Returns the facts
        stream's last number now and the snapshot commit's own number (or None)."""
        s = self.settings
        options: dict[str, Any] = {
            "servers": list(s.servers),
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.1,
            "connect_timeout": 2,
            "allow_reconnect": True,
            "error_cb": self._error,
            "disconnected_cb": self._disconnected,
            "reconnected_cb": self._reconnected,
            **s.extra,
        }
        if s.token:
            options["token"] = s.token
        if s.creds:
            options["user_credentials"] = s.creds
        if s.tls_ca or s.tls_cert:
            import ssl  # noqa: PLC0415 - only with TLS

            context = ssl.create_default_context(cafile=s.tls_ca)
            if s.tls_cert:
                context.load_cert_chain(s.tls_cert, s.tls_key)
            options["tls"] = context
        self.nc = await asyncio.wait_for(nats.connect(**options), s.connect_timeout)
        self.max_payload = self.nc.max_payload
        self.js = self.nc.jetstream(timeout=s.ack_timeout)
        self._inbox = self.nc.new_inbox()
        self._subs.append(await self.nc.subscribe(f"{self._inbox}.*", cb=self._acknowledged))
        deadline = asyncio.get_running_loop().time() + s.connect_timeout
        last = await self._settled(
            deadline,
            lambda: self._ensure_stream(s.facts_stream, [f"{s.prefix}.facts.>"], -1),
        )
        await self._settled(
            deadline,
            lambda: self._ensure_stream(s.snapshots_stream, [f"{s.prefix}.snapshots.>"], 1),
        )
        commit_seq = await self._settled(deadline, self._load_snapshot)
        facts = await self._settled(
            deadline,
            lambda: self.js.subscribe(
                f"{s.prefix}.facts.>",
                stream=s.facts_stream,
                cb=self._fact,
                ordered_consumer=True,
                idle_heartbeat=CONSUMER_HEARTBEAT,
                deliver_policy=api.DeliverPolicy.ALL,
            ),
        )
        self._subs.append(facts)
        start = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=(commit_seq or 0) + 1,
        )
        commits = await self._settled(
            deadline,
            lambda: self.js.subscribe(
                s.commit_subject,
                stream=s.snapshots_stream,
                cb=self._commit,
                ordered_consumer=True,
                idle_heartbeat=CONSUMER_HEARTBEAT,
                config=start,
            ),
        )
        self._subs.append(commits)
        return last, commit_seq

    async def _ensure_stream(self, name: str, subjects: list[str], max_per_subject: int) -> int:
        config = api.StreamConfig(
            name=name,
            subjects=subjects,
            num_replicas=self.settings.replicas,
            storage=api.StorageType.FILE,
            max_msgs_per_subject=max_per_subject,
            duplicate_window=120.0,
        )
        try:
            info = await self.js.add_stream(config)
        except APIError as e:
            if e.err_code != STREAM_EXISTS:
                raise
            info = await self.js.stream_info(name)  # created with another configuration
        return info.state.last_seq

    async def _settled(self, deadline: float, step: Callable[[], Awaitable[T]]) -> T:
        """Run one start-up step, again and again until ``deadline``: a cluster that has
        just started may have no metadata leader, not know its peers yet ("no suitable
        peers for placement"), or not have elected a new stream's leader, and then its
        API answers with an error or not at all for a few seconds."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                return await step()
            except (
                APIError,
                NoRespondersError,
                nats.errors.TimeoutError,
                asyncio.TimeoutError,
            ) as e:
                if isinstance(e, NotFoundError) or loop.time() > deadline:
                    raise
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        self._closing = True
        if self._sweep is not None:
            self._sweep.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self.nc is not None and not self.nc.is_closed:
            try:
                await asyncio.wait_for(self.nc.drain(), 5)
            except Exception:
                await self.nc.close()

    async def _error(self, e: Exception) -> None:
        self._report(f"NATS: {e!r}")

    async def _disconnected(self) -> None:
        if not self._closing:
            self._report("NATS connection lost; reconnecting", down=True)

    async def _reconnected(self) -> None:
        self._report(None)

    def _report(self, text: str | None, down: bool = False) -> None:
        self.runner.to_reactor(self._on_state, text, down)

    # -- publishing -----------------------------------------------------------------------

    def publish(self, batch: list[Publication]) -> None:
        """Loop thread: publish each in order (so they are numbered in order); the
        acknowledgements come to this link's own inbox, one subscription for all."""
        task = asyncio.ensure_future(self._publish_batch(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish_batch(self, batch: list[Publication]) -> None:
        now = asyncio.get_running_loop().time()
        for token, subject, body, msg_id, reserved_for in batch:
            headers = {"Nats-Msg-Id": msg_id}
            if reserved_for is not None:
                headers[SNAPSHOT_HEADER] = reserved_for
            pending = _Pending(token, subject, body, headers, now + self.settings.retry_for)
            self._waiting[token] = pending
            await self._send(pending, now)
        self._arm_sweep()

    async def _send(self, pending: _Pending, now: float) -> None:
        pending.sent_at = now
        try:
            await self.nc.publish(
                pending.subject,
                pending.body,
                reply=f"{self._inbox}.{pending.token}",
                headers=pending.headers,
            )
        except Exception as e:  # reconnecting and its buffer is full, say: tried again
            pending.error = e
            pending.sent_at = -1.0

    async def _acknowledged(self, msg: Any) -> None:
        """An acknowledgement (or a refusal, or "no responders") in this link's inbox."""
        try:
            token = int(msg.subject.rsplit(".", 1)[1])
        except ValueError:
            return
        pending = self._waiting.get(token)
        if pending is None:
            return  # an answer to an earlier try of a publication already settled
        if msg.headers and msg.headers.get("Status") == "503":
            pending.error = NoRespondersError()
            return  # no stream leader right now: the sweep tries again
        try:
            answer = json.loads(msg.data)
        except ValueError as e:
            pending.error = e
            return
        error = answer.get("error")
        if error is None:
            del self._waiting[token]
            self._ack((token, answer["seq"], bool(answer.get("duplicate"))))
        elif error.get("code") == 503:
            pending.error = ConnectionError(error.get("description", "unavailable"))
        else:
            del self._waiting[token]
            self._ack((token, StoreRefused(error.get("description", str(error))), False))

    def _arm_sweep(self) -> None:
        if self._sweep is None and self._waiting and not self._closing:
            loop = asyncio.get_running_loop()
            self._sweep = loop.call_later(SWEEP_INTERVAL, self._swept)

    def _swept(self) -> None:
        """Try again what has no acknowledgement after ``ack_timeout`` (or failed to be
        sent, or met no stream leader); give up on what is past ``retry_for``."""
        self._sweep = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        again = []
        for token, pending in list(self._waiting.items()):
            late = now - pending.sent_at > self.settings.ack_timeout
            refused = pending.error is not None and now - pending.sent_at > PUBLISH_RETRY_PAUSE
            if not (late or refused):
                continue
            if self._closing or now > pending.deadline:
                del self._waiting[token]
                self._ack((token, pending.error or TimeoutError("no acknowledgement"), False))
                continue
            pending.error = None
            pending.tries += 1
            again.append(pending)
        if again:
            self._background(self._resend(again))
        self._arm_sweep()

    async def _resend(self, again: list[_Pending]) -> None:
        now = asyncio.get_running_loop().time()
        for pending in sorted(again, key=lambda p: p.token):
            await self._send(pending, now)

    def _background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _ack(self, item: Any) -> None:
        self._acks.append(item)
        self._schedule_flush()

    # -- feeds ----------------------------------------------------------------------------

    async def _fact(self, msg: Any) -> None:
        seq = msg.metadata.sequence.stream
        headers = msg.headers
        reserved = bool(headers) and SNAPSHOT_HEADER in headers
        self._facts.append((seq, reserved, msg.data))
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        acks, self._acks = self._acks, []
        facts, self._facts = self._facts, []
        if facts:
            self.runner.to_reactor(self._on_facts, facts)
        if acks:
            self.runner.to_reactor(self._on_acks, acks)

    async def _commit(self, msg: Any) -> None:
        try:
            name, facts = await self._read_snapshot(json.loads(msg.data))
        except Exception as e:
            self._report(f"could not read a snapshot: {e!r}")
            return
        self.runner.to_reactor(self._on_snapshot, name, facts)

    async def _load_snapshot(self) -> int | None:
        s = self.settings
        try:
            msg = await self.js.get_last_msg(s.snapshots_stream, s.commit_subject)
        except NotFoundError:
            return None
        name, facts = await self._read_snapshot(json.loads(msg.data))
        self.runner.to_reactor(self._on_snapshot, name, facts)
        return msg.seq

    async def _read_snapshot(self, commit: dict[str, Any]) -> tuple[str, list[tuple[int, bytes]]]:
        name = commit["name"]
        facts: list[tuple[int, bytes]] = []
        for i in range(commit["parts"]):
            part = await self.js.get_last_msg(
                self.settings.snapshots_stream, self.settings.part_subject(name, i)
            )
            facts.extend(decode_part(part.data))
        return name, facts

    async def write_snapshot(self, name: str, entries: list[tuple[int, bytes]]) -> None:
        """Store a snapshot's parts, then its commit (which makes it the current one),
        then purge the parts of the one it replaced."""
        s = self.settings
        parts: list[list[tuple[int, bytes]]] = [[]]
        size = 0
        for seq, body in entries:
            if size and size + len(body) + _ENTRY.size > SNAPSHOT_PART_BYTES:
                parts.append([])
                size = 0
            parts[-1].append((seq, body))
            size += len(body) + _ENTRY.size
        for i, part in enumerate(parts):
            await self.js.publish(s.part_subject(name, i), encode_part(part), timeout=s.retry_for)
        previous = None
        with contextlib.suppress(NotFoundError):
            last = await self.js.get_last_msg(s.snapshots_stream, s.commit_subject)
            previous = json.loads(last.data)["name"]
        commit = json.dumps({"name": name, "parts": len(parts), "count": len(entries)})
        await self.js.publish(s.commit_subject, commit.encode(), timeout=s.retry_for)
        if previous is not None and previous != name:
            await self.js.purge_stream(
                s.snapshots_stream, subject=f"{s.prefix}.snapshots.{previous}.>"
            )

    # -- compaction -----------------------------------------------------------------------

    async def sizes(self) -> int:
        total = 0
        for name in (self.settings.facts_stream, self.settings.snapshots_stream):
            total += (await self.js.stream_info(name)).state.bytes
        return total

    async def delete(self, seqs: Sequence[int]) -> None:
        """Delete these facts' messages (a compaction), a few hundred requests at a time."""
        name = self.settings.facts_stream
        for at in range(0, len(seqs), 256):
            await asyncio.gather(*(self.js.delete_msg(name, seq) for seq in seqs[at : at + 256]))
