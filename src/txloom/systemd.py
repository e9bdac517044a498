"""Readiness for systemd: ``READY=1`` once every part is serving, ``STOPPING=1`` on the way out.

With ``Type=notify`` a unit is "started" only when the service says so, and dependent
units (a load balancer, a worker that needs the store) wait for it. Under systemd,
``$NOTIFY_SOCKET`` names a Unix datagram socket (``@`` for the abstract namespace);
without it every call here does nothing.

Each plugin calls ``ready_when(d)`` for what must finish before it serves (the store's
recovery) or ``ready_when()`` when listening is enough; the process notifies once, when
the reactor runs and all of them have fired, so the all-in-one node is ready when its
last part is.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

__all__ = ["NOTIFY_SOCKET", "notify", "ready_when"]

NOTIFY_SOCKET = "NOTIFY_SOCKET"

log = Logger()

_waiting: list[Deferred[Any]] = []
_scheduled = False


def notify(state: str) -> bool:
    """Send ``state`` (``READY=1``, ``STOPPING=1``, ``STATUS=...``) to systemd, if it listens."""
    address = os.environ.get(NOTIFY_SOCKET)
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError as e:
        log.warn("cannot notify systemd at {address}: {error}", address=address, error=e)
        return False
    return True


def ready_when(*deferreds: Deferred[Any], reactor: Any = None) -> None:
    """Count ``deferreds`` in before ``READY=1`` (none: ready once the reactor runs)."""
    global _scheduled
    if not os.environ.get(NOTIFY_SOCKET):
        return
    for d in deferreds:
        waiter: Deferred[Any] = Deferred()  # a part that fails to start is never ready
        d.addCallback(lambda result, w=waiter: (w.callback(None), result)[1])
        _waiting.append(waiter)
    if _scheduled:
        return
    _scheduled = True
    if reactor is None:
        from twisted.internet import reactor  # noqa: PLC0415 - the installed one
    reactor.callWhenRunning(_when_running, reactor)


def _when_running(reactor: Any) -> None:
    reactor.addSystemEventTrigger("before", "shutdown", notify, "STOPPING=1")
    waiting = list(_waiting)
    DeferredList(waiting).addCallback(_all_fired, len(waiting))


def _all_fired(_: object, count: int) -> None:
    if len(_waiting) != count:  # a part registered late: wait for it too
        DeferredList(list(_waiting)).addCallback(_all_fired, len(_waiting))
        return
    if notify("READY=1\nSTATUS=serving"):
        log.info("told systemd the service is ready")
