"""Where asyncio client code (nats-py, grpc.aio) runs, seen from the reactor.

Two answers, chosen by the reactor in use:

* ``SameLoop``: Twisted runs on its asyncio reactor, so the client runs on the reactor's own
  event loop. No threads and no hand-offs; this is the fast path (and what the tests use).
* ``ThreadLoop``: any other reactor (``twistd``'s default is epoll). The client gets its
  own asyncio loop in one daemon thread; work goes to it with
  ``call_soon_threadsafe``/``run_coroutine_threadsafe`` and results come back with
  ``reactor.callFromThread``. Callers batch what they hand over, so a burst of messages
  costs one wake-up per turn rather than one per message.

Both offer the same four operations, so the bridge is written once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

__all__ = ["AsyncioRunner", "SameLoop", "ThreadLoop", "runner_for"]


class AsyncioRunner:
    """Run asyncio code for reactor code (see the module doc)."""

    mode = "abstract"
    loop: asyncio.AbstractEventLoop

    def start(self) -> None:
        """Make the loop available (``ThreadLoop`` starts its thread)."""

    def stop(self) -> None:
        """Release the loop; nothing may be submitted afterwards."""

    def run(self, coro: Coroutine[Any, Any, Any]) -> Deferred[Any]:
        """Run ``coro`` on the loop; the Deferred fires on the reactor thread."""
        raise NotImplementedError

    def call_in_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn(*args)`` on the loop's thread, soon."""
        raise NotImplementedError

    def to_reactor(self, fn: Callable[..., Any], *args: Any) -> None:
        """From loop code: call ``fn(*args)`` on the reactor thread."""
        raise NotImplementedError


class SameLoop(AsyncioRunner):
    """The reactor is Twisted's asyncio reactor: one thread, one loop."""

    mode = "same loop"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def run(self, coro: Coroutine[Any, Any, Any]) -> Deferred[Any]:
        return Deferred.fromFuture(asyncio.ensure_future(coro, loop=self.loop))

    def call_in_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        self.loop.call_soon(fn, *args)

    def to_reactor(self, fn: Callable[..., Any], *args: Any) -> None:
        fn(*args)


class ThreadLoop(AsyncioRunner):
    """A private asyncio loop in a daemon thread."""

    mode = "own thread"

    def __init__(self, reactor: Any, name: str = "txloom-asyncio") -> None:
        self.reactor = reactor
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name=name, daemon=True)
        self._started = False

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        self.loop.close()

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def stop(self) -> None:
        if self._started and self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)

    def run(self, coro: Coroutine[Any, Any, Any]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)

        def done(f: Any) -> None:
            try:
                result = f.result()
            except BaseException as e:
                self.reactor.callFromThread(d.errback, Failure(e))
            else:
                self.reactor.callFromThread(d.callback, result)

        future.add_done_callback(done)
        return d

    def call_in_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def to_reactor(self, fn: Callable[..., Any], *args: Any) -> None:
        self.reactor.callFromThread(fn, *args)


def runner_for(reactor: Any, prefer: str = "auto") -> AsyncioRunner:
    """``SameLoop`` on Twisted's asyncio reactor (unless ``prefer="thread"``), else
    ``ThreadLoop``; ``prefer="same"`` insists on the first."""
    loop = getattr(reactor, "_asyncioEventloop", None)
    if prefer not in ("auto", "thread", "same"):
        raise ValueError(f"unknown asyncio runner {prefer!r}")
    if loop is not None and prefer != "thread":
        return SameLoop(loop)
    if prefer == "same":
        raise RuntimeError("the same-loop runner needs Twisted's asyncio reactor")
    return ThreadLoop(reactor)
