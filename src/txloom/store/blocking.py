"""A blocking client for scripts, with the method names of Igniter's ``NetworkBackend``.

One socket, one request at a time (calls from several threads are serialised), answers
read whole before returning. ``subscribe`` opens a second connection and calls the
callback from a background thread, as the Ruby client does; that thread reconnects
when the connection drops (a server restart, an overflow) and resubscribes from the
last sequence number it delivered, so nothing is missed and nothing comes twice.

    with NetworkBackend(address="127.0.0.1:7400") as store:
        store.write_fact(Fact.build(store="tasks", key="t1", value={"done": False}))
        for fact in store.replay():
            print(fact.key, fact.value)
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from txloom.store.errors import StoreConnectionError, StoreError
from txloom.store.fact import Fact
from txloom.store.messages import (
    facts_of,
    replay_request,
    subscribe_request,
    write_fact_request,
    write_snapshot_request,
)
from txloom.wire.crcjson import DEFAULT_MAX_FRAME_SIZE, ObjectDecoder, encode_object
from txloom.wire.errors import WireError

__all__ = ["NetworkBackend", "NetworkError", "Subscription"]

#: Ruby's name for the error; here every failure is a ``StoreError``.
NetworkError = StoreError

#: Seconds a call waits for the server before giving up.
DEFAULT_TIMEOUT = 30.0

#: Writes ``write_facts`` keeps unanswered: enough for group commit to fold many writes
#: into one fsync, below the server's default --max-pipeline.
DEFAULT_WRITE_WINDOW = 64

#: Seconds a subscription waits before its first attempt to reconnect; each failed
#: attempt doubles the wait, up to ``MAX_RECONNECT_DELAY``.
INITIAL_RECONNECT_DELAY = 0.1
MAX_RECONNECT_DELAY = 5.0

_RECV = 256 * 1024

_log = logging.getLogger(__name__)


class _Connection:
    """One socket speaking framed JSON."""

    def __init__(
        self,
        address: str,
        transport: str,
        timeout: float | None,
        max_frame_size: int,
        token: str | None,
    ) -> None:
        self.decoder = ObjectDecoder(max_frame_size)
        try:
            if transport == "unix":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                sock.connect(address)
            elif transport == "tcp":
                host, _, port = address.rpartition(":")
                sock = socket.create_connection((host.strip("[]"), int(port)), timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            else:
                raise ValueError(f"unknown transport {transport!r}: use 'tcp' or 'unix'")
        except OSError as e:
            raise StoreConnectionError(f"cannot connect to {address} ({transport}): {e}") from e
        self.sock = sock
        if token is not None:
            self.call({"op": "auth", "token": token})

    def send(self, request: Mapping[str, Any]) -> None:
        try:
            self.sock.sendall(encode_object(request))
        except OSError as e:
            raise StoreConnectionError(f"connection lost while sending: {e}") from e

    def receive(self) -> dict[str, Any] | None:
        """The next object from the server; None when it closed the connection."""
        while True:
            try:
                obj = self.decoder.next_object()
            except WireError as e:
                raise StoreConnectionError(f"bad frame from the server: {e}") from e
            if obj is not None:
                return obj
            try:
                data = self.sock.recv(_RECV)
            except OSError as e:
                raise StoreConnectionError(f"connection lost while reading: {e}") from e
            if not data:
                return None
            self.decoder.receive_data(data)

    def call(self, request: Mapping[str, Any]) -> dict[str, Any]:
        self.send(request)
        response = self.receive()
        if response is None:
            raise StoreConnectionError("connection closed by the server")
        if response.get("ok") is not True:
            raise StoreError.from_response(response)
        return response

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Subscription:
    """A push connection read by a background thread; ``close()`` ends it.

    With ``reconnect`` (the default), a lost connection is replaced: the thread waits
    ``INITIAL_RECONNECT_DELAY`` (doubling after each failure, up to
    ``MAX_RECONNECT_DELAY``), connects and subscribes again from ``last_seq``; the
    server catches it up from its store. An overflow (this reader fell behind and the
    server dropped events) is healed the same way. Without it, the thread ends and
    ``error`` says why.
    """

    def __init__(
        self,
        connect: Callable[[], _Connection],
        stores: list[str],
        callback: Callable[[Fact], Any],
        *,
        on_overflow: Callable[[int], Any] | None = None,
        since: int | None = None,
        reconnect: bool = True,
    ) -> None:
        self._connect_new = connect
        self._stores = stores
        self._callback = callback
        self._on_overflow = on_overflow
        self._reconnect = reconnect
        self._closed = threading.Event()
        self._lock = threading.Lock()
        #: Sequence number of the last event delivered (or where delivery starts).
        self.last_seq: int | None = since
        #: Why the subscription ended on its own, or the last connection error while
        #: reconnecting (None while all is well, and after close()).
        self.error: Exception | None = None
        #: Connections made after the first.
        self.reconnects = 0
        self._connection = self._subscribe()  # fails here if the server refuses
        self._thread = threading.Thread(target=self._run, name="txloom-subscription", daemon=True)
        self._thread.start()

    def _subscribe(self) -> _Connection:
        connection = self._connect_new()
        try:
            if self.last_seq is None and self._reconnect:
                # start from the server's present, by number, so a reconnect misses nothing
                self.last_seq = int(connection.call({"op": "stats"}).get("last_seq", 0))
            connection.call(subscribe_request(self._stores, self.last_seq))
        except BaseException:
            connection.close()
            raise
        if connection.sock.gettimeout() is not None:
            connection.sock.settimeout(None)  # events may be far apart
        return connection

    def _run(self) -> None:
        delay = INITIAL_RECONNECT_DELAY
        connection: _Connection | None = self._connection
        while not self._closed.is_set():
            if connection is None:
                if self._closed.wait(delay):
                    return
                try:
                    connection = self._subscribe()
                except Exception as e:
                    self.error = e
                    delay = min(delay * 2, MAX_RECONNECT_DELAY)
                    continue
                with self._lock:
                    if self._closed.is_set():
                        connection.close()
                        return
                    self._connection = connection
                self.reconnects += 1
                self.error = None
                delay = INITIAL_RECONNECT_DELAY
            try:
                self._read(connection)
                self.error = StoreConnectionError("connection closed by the server")
            except Exception as e:
                self.error = e
            connection.close()
            connection = None
            if not self._reconnect:
                return
        self.error = None

    def _read(self, connection: _Connection) -> None:
        """Deliver events until the connection ends (or must be dropped: overflow)."""
        while True:
            event = connection.receive()
            if event is None:
                return
            kind = event.get("event")
            if kind == "fact_written":
                seq = event.get("seq")
                if isinstance(seq, int):
                    if self.last_seq is not None and seq <= self.last_seq:
                        continue  # delivered before a reconnect
                    self.last_seq = seq
                fact = Fact.from_dict(event.get("fact"), seq if isinstance(seq, int) else None)
                try:
                    self._callback(fact)
                except Exception:  # a callback error must not end the stream
                    _log.exception("subscription callback failed on seq %s", fact.seq)
            elif kind == "overflow":
                dropped = int(event.get("dropped", 0))
                if self._on_overflow is not None:
                    self._on_overflow(dropped)
                if self._reconnect:
                    _log.warning(
                        "subscription fell behind: %d events dropped; catching up from seq %s",
                        dropped,
                        self.last_seq,
                    )
                    return  # the events after the gap come again, in order, on the next one

    def close(self, timeout: float = 5.0) -> None:
        """Unsubscribe: send ``close``, close the socket, wait for the reader thread."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
            connection = self._connection
        with contextlib.suppress(StoreError):
            connection.send({"op": "close"})
        with contextlib.suppress(OSError):
            connection.sock.shutdown(socket.SHUT_RDWR)
        connection.close()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NetworkBackend:
    """Blocking client of the store server (``transport`` is ``"tcp"`` or ``"unix"``)."""

    NetworkError = StoreError

    def __init__(
        self,
        address: str = "127.0.0.1:7400",
        transport: str = "tcp",
        *,
        token: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        self.address = address
        self.transport = transport
        self.token = token
        self.timeout = timeout
        self.max_frame_size = max_frame_size
        self._lock = threading.Lock()
        self._connection = self._connect()

    def _connect(self) -> _Connection:
        return _Connection(
            self.address, self.transport, self.timeout, self.max_frame_size, self.token
        )

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            return self._connection.call(request)

    # -- the Ruby client's methods --------------------------------------------------------

    def write_fact(self, fact: Fact | Mapping[str, Any]) -> None:
        """Store one fact; returns once the server acknowledged it (durably, by default)."""
        self._call(write_fact_request(fact))

    def write_facts(
        self,
        facts: Iterable[Fact | Mapping[str, Any]],
        window: int = DEFAULT_WRITE_WINDOW,
        on_written: Callable[[int], Any] | None = None,
    ) -> int:
        """Store ``facts`` in order with up to ``window`` of them unanswered at once, so
        that the server's group commit covers many with one fsync; returns how many were
        acknowledged (``on_written(n)`` is called as they are).

        The first refusal raises ``StoreError``: the facts before it are stored, the ones
        after it may be, and the connection is replaced (its answers are out of step).
        """
        if window < 1:
            raise ValueError("window must be at least 1")
        with self._lock:
            connection = self._connection
            sent = answered = 0

            def take_answer() -> None:
                nonlocal answered
                response = connection.receive()
                if response is None:
                    raise StoreConnectionError("connection closed by the server")
                if response.get("ok") is not True:
                    raise StoreError.from_response(response)
                answered += 1
                if on_written is not None:
                    on_written(answered)

            try:
                for fact in facts:
                    if sent - answered >= window:
                        take_answer()
                    try:
                        connection.send(write_fact_request(fact))
                    except StoreConnectionError:
                        # refused before it was all sent (too large)? the answer says why
                        while answered <= sent:
                            take_answer()
                        raise
                    sent += 1
                while answered < sent:
                    take_answer()
            except BaseException:
                connection.close()
                with contextlib.suppress(StoreError):
                    self._connection = self._connect()
                raise
            return answered

    def replay(
        self,
        stores: Iterable[str] | None = None,
        since: int | None = None,
        limit: int | None = None,
    ) -> list[Fact]:
        """Every fact (by transaction time); with arguments, one page in sequence order."""
        return facts_of(self._call(replay_request(stores, since, limit)))

    def replay_pages(
        self, stores: Iterable[str] | None = None, since: int = 0, limit: int | None = None
    ) -> Iterator[Fact]:
        """Every fact numbered above ``since``, page by page (for stores of any size)."""
        while True:
            response = self._call(replay_request(stores, since, limit))
            yield from facts_of(response)
            if not response.get("more"):
                return
            since = response["next"]

    def write_snapshot(self, facts: Iterable[Fact | Mapping[str, Any]]) -> None:
        """Replace the server's snapshot with ``facts``."""
        self._call(write_snapshot_request(facts))

    def subscribe(
        self,
        stores: Iterable[str] | str = (),
        callback: Callable[[Fact], Any] | None = None,
        *,
        since: int | None = None,
        on_overflow: Callable[[int], Any] | None = None,
        reconnect: bool = True,
    ) -> Subscription:
        """Call ``callback(fact)`` for each write to ``stores`` (all stores when empty).

        With ``since``, stored facts numbered above it come first (catch-up). The
        subscription is registered when this returns; it reconnects and catches up by
        itself unless ``reconnect`` is false (see ``Subscription``).
        """
        if callback is None:
            raise TypeError("subscribe needs a callback")
        names = [stores] if isinstance(stores, str) else [str(s) for s in stores]
        return Subscription(
            self._connect,
            names,
            callback,
            on_overflow=on_overflow,
            since=since,
            reconnect=reconnect,
        )

    def close(self) -> None:
        """Say goodbye and close the connection."""
        with self._lock:
            with contextlib.suppress(StoreError):
                self._connection.call({"op": "close"})
            self._connection.close()

    # -- txloom's additions ---------------------------------------------------------------

    def ping(self) -> bool:
        return bool(self._call({"op": "ping"}).get("pong"))

    def stats(self) -> dict[str, Any]:
        response = self._call({"op": "stats"})
        response.pop("ok", None)
        return response

    def compact(self) -> dict[str, Any]:
        response = self._call({"op": "compact"})
        response.pop("ok", None)
        return response

    def __enter__(self) -> NetworkBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
