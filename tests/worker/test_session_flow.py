"""Flow-control logic of sessions and connections, driven step by step (fake sockets)."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from support.workerhost import SocketWorker
from txloom.interfaces import IDownstream, IReplyChannel, IService, IUpstream
from txloom.wire.cocaine import Message, encode
from txloom.worker import errors
from txloom.worker.dispatch import STREAMING, ServiceConnection
from txloom.worker.manifest import AppManifest
from txloom.worker.pool import WorkerPool
from txloom.worker.profile import Profile
from txloom.worker.session import MESSAGE_OVERHEAD, message_cost


class Launcher:
    def __init__(self) -> None:
        self.uuids: list[str] = []

    def launch(self, protocol: Any, argv: list[str], env: dict, cwd: str) -> Any:
        self.uuids.append(argv[argv.index("--uuid") + 1])
        return type("Process", (), {"pid": 1, "signalProcess": lambda self, name: None})()


@implementer(IDownstream)
class Consumer:
    """A downstream that is a consumer: the test pauses and resumes its producer."""

    def __init__(self, pause_after: int | None = None) -> None:
        self.items: list[Any] = []
        self.producer: Any = None
        self.pause_after = pause_after

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, chunk: bytes) -> None:
        self.items.append(chunk)
        if self.pause_after is not None and len(self.items) >= self.pause_after:
            self.pause_after = None
            self.producer.pauseProducing()

    def error(self, category: int, code: int, reason: str) -> None:
        self.items.append((category, code, reason))

    def close(self) -> None:
        self.items.append("closed")


class Feeder:
    """Stands in for a caller's connection whose reading the engine holds."""

    def __init__(self) -> None:
        self.held: set[object] = set()

    def pause_reading(self, by: object) -> None:
        self.held.add(by)

    def resume_reading(self, by: object) -> None:
        self.held.discard(by)


def make_pool(**profile: Any) -> tuple[WorkerPool, Launcher]:
    launcher = Launcher()
    manifest = AppManifest(name="app", command=("w",), cwd="/", env={}, profile=Profile(**profile))
    pool = WorkerPool(manifest, "/run/app.sock", "127.0.0.1:1", launcher, Clock())
    pool.start()
    return pool, launcher


def test_replies_wait_while_the_caller_does_not_read_and_keep_their_order() -> None:
    pool, launcher = make_pool()
    consumer = Consumer()
    session = pool.enqueue(b"echo", (), consumer)
    assert consumer.producer is session
    worker = SocketWorker(pool, launcher.uuids[0])
    session.close()
    consumer.producer.pauseProducing()
    for chunk in (b"a", b"bb", b"ccc"):
        worker.send(2, 0, [chunk])
    worker.send(2, 2, [])
    assert consumer.items == []
    assert pool.stats.backlog == 6
    # the worker's slot stays taken until the caller has everything
    assert not session.finished and pool.workers[launcher.uuids[0]].load == 1
    session.resumeProducing()
    assert consumer.items == [b"a", b"bb", b"ccc", "closed"]
    assert session.finished and pool.workers[launcher.uuids[0]].load == 0
    assert (pool.stats.backlog, pool.stats.backlog_peak) == (0, 6)
    assert consumer.producer is None


def test_a_consumer_that_pauses_again_mid_flush_gets_the_rest_later() -> None:
    pool, launcher = make_pool()
    consumer = Consumer()
    session = pool.enqueue(b"echo", (), consumer)
    worker = SocketWorker(pool, launcher.uuids[0])
    session.pauseProducing()
    for i in range(4):
        worker.send(2, 0, [b"%d" % i])
    consumer.pause_after = 2
    session.resumeProducing()
    assert consumer.items == [b"0", b"1"]
    worker.send(2, 0, [b"4"])  # queued behind the held ones, not written ahead of them
    session.resumeProducing()
    assert consumer.items == [b"0", b"1", b"2", b"3", b"4"]


def test_backlog_overflow_fails_the_session_both_ways_and_its_channel_is_muted() -> None:
    pool, launcher = make_pool(backlog_limit=1000)
    consumer = Consumer()
    session = pool.enqueue(b"stream", (), consumer)
    session.close()
    worker = SocketWorker(pool, launcher.uuids[0])
    worker.received()
    session.pauseProducing()
    worker.send(2, 0, [b"x" * 600])
    assert not session.finished
    worker.send(2, 0, [b"x" * 600])
    assert session.finished
    category, code, reason = consumer.items[-1]
    assert (category, code) == (errors.ENGINE, errors.CLIENT_TOO_SLOW)
    assert reason == "client too slow: more than 1000 bytes of replies were waiting"
    # the worker hears of it on the channel even though the caller had closed its side
    told = [[errors.ENGINE, errors.CLIENT_TOO_SLOW], reason.encode()]
    assert worker.received() == [Message(2, 1, told)]
    stats = pool.stats
    assert (stats.backlog, stats.backlog_peak, stats.overflows) == (0, 1200, 1)
    # what the worker still sends on the channel is dropped without a word, until it closes
    control = pool.workers[launcher.uuids[0]]
    assert 2 in control.abandoned
    worker.send(2, 0, [b"late"])
    worker.send(2, 2, [])
    assert 2 not in control.abandoned
    assert len(consumer.items) == 1


def test_a_failed_session_drops_its_backlog_for_the_error() -> None:
    pool, launcher = make_pool()
    consumer = Consumer()
    session = pool.enqueue(b"echo", (), consumer)
    worker = SocketWorker(pool, launcher.uuids[0])
    session.pauseProducing()
    worker.send(2, 0, [b"held"])
    worker.send(2, 2, [])  # the worker's end is held too: the caller has not had it
    session.fail(errors.ENGINE, errors.TIMEOUT, "request timed out", tell_worker=True)
    assert consumer.items == [(errors.ENGINE, errors.TIMEOUT, "request timed out")]
    assert pool.stats.backlog == 0
    # the worker had ended its side, the caller had not: only the caller's side is closed
    assert [m.type for m in worker.received()[1:]] == [1]


def test_queued_messages_are_charged_their_objects() -> None:
    assert message_cost([b"x" * 10]) == MESSAGE_OVERHEAD + 10
    assert message_cost([]) == MESSAGE_OVERHEAD
    assert message_cost([[[]] * 100]) > 100 * 56  # an empty list takes 56 bytes, packed 1
    pool, _launcher = make_pool(max_message_size=1000)
    consumer = Consumer()
    session = pool.enqueue(b"echo", (), consumer)
    sent = 0
    while session.write(b"x"):
        sent += 1
    assert sent == 1000 // (MESSAGE_OVERHEAD + 1)
    assert consumer.items[-1][:2] == (errors.ENGINE, errors.QUEUE_FULL)
    assert pool.stats.pending == 0 and pool.stats.pending_peak > 1000


def test_a_congested_worker_holds_its_feeders_until_it_drains() -> None:
    pool, launcher = make_pool()
    feeder = Feeder()
    session = pool.enqueue(b"echo", (), Consumer(), feeder)
    worker = SocketWorker(pool, launcher.uuids[0])
    worker.received()
    session.write(b"fine")
    assert not feeder.held
    worker.connection.pauseProducing()  # its send buffer is full
    session.write(b"one more")
    assert feeder.held == {worker.connection}
    assert pool.stats.throttled == 1 and pool.stats.overshoot_peak > len(b"one more")
    worker.connection.resumeProducing()
    assert not feeder.held
    assert [m.args for m in worker.received()] == [[b"fine"], [b"one more"]]
    worker.connection.pauseProducing()
    session.write(b"again")
    worker.connection.connectionLost(None)  # a worker gone releases its feeders too
    assert not feeder.held


def test_what_waited_in_the_queue_goes_out_as_the_worker_drains() -> None:
    pool, launcher = make_pool()
    feeder = Feeder()
    session = pool.enqueue(b"echo", (), Consumer(), feeder)
    for chunk in (b"1", b"2", b"3"):
        session.write(chunk)
    session.close()
    assert pool.stats.pending == 4 * MESSAGE_OVERHEAD + 3
    worker = SocketWorker(pool, launcher.uuids[0], congested=True)
    assert [m.args for m in worker.received()] == [[b"echo"]]  # the invoke only
    assert feeder.held == {worker.connection}
    worker.connection.resumeProducing()
    assert [(m.type, m.args) for m in worker.received()] == [
        (0, [b"1"]),
        (0, [b"2"]),
        (0, [b"3"]),
        (2, []),
    ]
    assert not feeder.held and pool.stats.pending == 0


@implementer(IService)
class Streams:
    """A service whose channels' upstreams are recorded, for ServiceConnection tests."""

    name = "streams"
    version = 1
    graph = {0: ("open", STREAMING, STREAMING)}

    def __init__(self) -> None:
        self.replies: list[IReplyChannel] = []

    def invoke(self, method: int, args: list, headers: tuple, reply: IReplyChannel) -> IUpstream:
        self.replies.append(reply)
        return Upstream()


@implementer(IUpstream)
class Upstream:
    def message(self, mtype: int, args: list) -> None:
        pass

    def cancel(self, reason: str) -> None:
        pass


class Producer:
    def __init__(self, name: str, log: list[str], on_resume: Any = None) -> None:
        self.name = name
        self.log = log
        self.on_resume = on_resume

    def pauseProducing(self) -> None:
        self.log.append(f"pause {self.name}")

    def resumeProducing(self) -> None:
        self.log.append(f"resume {self.name}")
        if self.on_resume is not None:
            self.on_resume()


def test_a_client_connection_pauses_its_channels_and_resumes_them_in_turn() -> None:
    service = Streams()
    connection = ServiceConnection(service)
    transport = StringTransport()
    connection.makeConnection(transport)
    assert transport.producer is connection
    connection.dataReceived(encode(1, 0, []) + encode(2, 0, []) + encode(3, 0, []))
    log: list[str] = []
    a, b, c = service.replies
    a.registerProducer(Producer("a", log), True)
    b.registerProducer(Producer("b", log, on_resume=connection.pauseProducing), True)
    connection.pauseProducing()
    connection.pauseProducing()  # said again on every write while full: no effect
    c.registerProducer(Producer("c", log), True)  # a newcomer starts paused
    assert log == ["pause a", "pause b", "pause c"]
    log.clear()
    connection.resumeProducing()  # b fills the buffer again: c waits for the next round
    assert log == ["resume a", "resume b", "pause a", "pause b", "pause c"]
    log.clear()
    connection.resumeProducing()  # which starts with c
    assert log == ["resume c", "resume a", "resume b", "pause c", "pause a", "pause b"]
    b.close()  # a reply that has ended is no longer paused or resumed
    log.clear()
    connection.resumeProducing()
    connection.pauseProducing()
    assert log == ["resume c", "resume a", "pause a", "pause c"]


def test_reading_from_a_client_stays_paused_while_any_worker_holds_it() -> None:
    connection = ServiceConnection(Streams())
    transport = StringTransport()
    connection.makeConnection(transport)
    first, second = object(), object()
    connection.pause_reading(first)
    connection.pause_reading(second)
    connection.pause_reading(second)
    assert transport.producerState == "paused"
    connection.resume_reading(first)
    assert transport.producerState == "paused"
    connection.resume_reading(first)  # not holding any more: no effect
    connection.resume_reading(second)
    assert transport.producerState == "producing"


def test_a_caller_slower_than_its_worker_pauses_the_worker_briefly() -> None:
    pool, launcher = make_pool(backlog_limit=1000, stall_limit=0.05)
    clock = pool.clock
    consumer = Consumer()
    session = pool.enqueue(b"stream", (), consumer)
    session.close()
    worker = SocketWorker(pool, launcher.uuids[0])
    socket = worker.transport
    session.pauseProducing()
    worker.send(2, 0, [b"x" * 200])
    assert socket.producerState == "producing"
    worker.send(2, 0, [b"x" * 100])  # past a quarter of backlog-limit: the worker waits
    assert socket.producerState == "paused" and pool.stats.stalls == 1
    clock.advance(0.01)
    session.resumeProducing()  # the caller catches up: the worker is read again
    assert socket.producerState == "producing"
    # for as long as it was paused, it is not paused again: its other sessions go on
    session.pauseProducing()
    worker.send(2, 0, [b"x" * 300])
    assert socket.producerState == "producing"
    clock.advance(0.01)
    assert socket.producerState == "paused" and pool.stats.stalls == 2
    # a caller that does not catch up within stall-limit is left to its backlog-limit
    clock.advance(0.05)
    assert socket.producerState == "producing"
    clock.advance(1)
    assert socket.producerState == "producing"
    worker.send(2, 0, [b"x" * 400])
    assert not session.finished
    worker.send(2, 0, [b"x" * 400])
    assert session.finished and consumer.items[-1][1] == errors.CLIENT_TOO_SLOW
    assert socket.producerState == "producing"


def test_stall_limit_0_never_pauses_the_worker() -> None:
    pool, launcher = make_pool(backlog_limit=1000, stall_limit=0)
    session = pool.enqueue(b"stream", (), Consumer())
    worker = SocketWorker(pool, launcher.uuids[0])
    session.pauseProducing()
    worker.send(2, 0, [b"x" * 900])
    assert worker.transport.producerState == "producing" and pool.stats.stalls == 0


def _web_request() -> tuple[Any, Any]:
    from twisted.web.server import Request
    from twisted.web.test.requesthelper import DummyChannel

    channel = DummyChannel()
    request = Request(channel)
    request.method, request.uri, request.clientproto = b"GET", b"/", b"HTTP/1.1"
    return channel, request


def test_http_error_before_anything_was_written_gets_a_status_of_its_own() -> None:
    from txloom.wire.cocaine_http import encode_response_head
    from txloom.worker.http_front import HttpReply

    channel, request = _web_request()
    reply = HttpReply(request, "app")
    reply.write(encode_response_head(200, [(b"X-App", b"1"), (b"Content-Length", b"9")]))
    reply.error(errors.ENGINE, errors.CLIENT_TOO_SLOW, "client too slow: ...")
    written = channel.transport.written.getvalue()
    assert written.startswith(b"HTTP/1.1 503 ")
    assert b"X-App" not in written and written.endswith(b"\r\n\r\nclient too slow: ...\n")


def test_http_response_registered_while_the_client_lags_starts_paused() -> None:
    from txloom.worker.http_front import HttpReply

    channel, request = _web_request()
    channel._waitingForTransport = True  # a pipelined request, the previous reply unread
    log: list[str] = []
    producer = Producer("session", log)
    reply = HttpReply(request, "app")
    reply.registerProducer(producer, True)
    assert log == ["pause session"]
    reply.close()  # (without a head: a 502) the producer is let go first
    assert request.producer is None
    assert channel.transport.written.getvalue().startswith(b"HTTP/1.1 502 ")
