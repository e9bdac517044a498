"""A blocking client for scripts, with the method names of Igniter's ``NetworkBackend``.

One socket, one request at a time (calls from several threads are serialised), answers
read whole before returning. ``subscribe`` opens a second connection and calls the
callback from a background thread, as the Ruby client does.

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
    """A push connection read by a background thread; ``close()`` ends it."""

    def __init__(
        self,
        connection: _Connection,
        callback: Callable[[Fact], Any],
        on_overflow: Callable[[int], Any] | None,
    ) -> None:
        self._connection = connection
        self._callback = callback
        self._on_overflow = on_overflow
        self._closed = False
        #: Sequence number of the last event delivered.
        self.last_seq: int | None = None
        #: Why the subscription ended on its own (None while running or after close()).
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="txloom-subscription", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                event = self._connection.receive()
                if event is None:
                    return
                kind = event.get("event")
                if kind == "fact_written":
                    seq = event.get("seq")
                    fact = Fact.from_dict(event.get("fact"), seq if isinstance(seq, int) else None)
                    self.last_seq = fact.seq
                    try:
                        self._callback(fact)
                    except Exception:  # a callback error must not end the stream
                        _log.exception("subscription callback failed on seq %s", fact.seq)
                elif kind == "overflow" and self._on_overflow is not None:
                    self._on_overflow(int(event.get("dropped", 0)))
        except Exception as e:  # reported through .error
            if not self._closed:
                self.error = e

    def close(self, timeout: float = 5.0) -> None:
        """Unsubscribe: send ``close``, close the socket, wait for the reader thread."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(StoreError):
            self._connection.send({"op": "close"})
        with contextlib.suppress(OSError):
            self._connection.sock.shutdown(socket.SHUT_RDWR)
        self._connection.close()
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
    ) -> Subscription:
        """Call ``callback(fact)`` for each write to ``stores`` (all stores when empty).

        With ``since``, stored facts numbered above it come first (catch-up). The
        subscription is registered when this returns.
        """
        if callback is None:
            raise TypeError("subscribe needs a callback")
        connection = self._connect()
        try:
            connection.call(subscribe_request(stores, since))
        except BaseException:
            connection.close()
            raise
        if connection.sock.gettimeout() is not None:
            connection.sock.settimeout(None)  # events may be far apart
        return Subscription(connection, callback, on_overflow)

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
