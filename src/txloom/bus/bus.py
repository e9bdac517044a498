"""The bus: connects pods and carries every message from its sender to every other pod.

``send`` only appends to a pending batch; once per reactor turn the bus delivers the whole
batch, pod by pod. Batching is what makes a pure-Python bus fast (one scheduled call per
turn instead of one per message, and a tight loop per pod) and it gives the ordering
guarantee for free: a batch is delivered to each pod in send order, and batches in turn
order, so every pod sees one sender's messages in the order they were sent.

Self-filtering costs nothing: the batch records which pod sent each message, and a pod
skips its own. Nothing is remembered per sent message (Grav keeps a deny list of every uuid
a pod ever sent).

Slow pods (handlers that return pending Deferreds) get a bounded queue; past
``pod_queue_limit`` the ``slow_pod_policy`` decides: ``pause`` keeps queueing (up to a hard
``overflow_limit``) and tells registered producers (mesh connections, bridges) to stop
reading until the queue drains to half; ``drop`` drops and counts. Both are logged and
visible in ``stats`` and each pod's ``stats``.
"""

from __future__ import annotations

import enum
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from txloom.bus.buffer import DEFAULT_REPLAY_SIZE, MsgBuffer
from txloom.bus.errors import TransportNotConfigured
from txloom.bus.message import Message
from txloom.bus.once import Once
from txloom.bus.pod import Pod

__all__ = [
    "DEFAULT_POD_QUEUE_LIMIT",
    "MAX_FAILURES",
    "OVERFLOW_FACTOR",
    "Bus",
    "BusStats",
    "SlowPodPolicy",
]

#: Messages a pod may have waiting for its handler before the slow-pod policy applies.
DEFAULT_POD_QUEUE_LIMIT = 1024

#: Failures in a row (no success between them) after which a pod is disconnected (Grav: 64).
MAX_FAILURES = 64

#: Under the ``pause`` policy a queue may grow to this many times ``pod_queue_limit`` while
#: producers stop; past that, messages for the pod are dropped and counted, so that a sender
#: that ignores backpressure cannot exhaust memory.
OVERFLOW_FACTOR = 4


class SlowPodPolicy(enum.Enum):
    """What the bus does when a pod's queue is full."""

    PAUSE = "pause"  # keep everything, pause producers until the pod catches up
    DROP = "drop"  # drop the pod's copy of new messages and count them


class BusStats:
    """Bus-wide counters (each pod has its own ``stats`` as well)."""

    __slots__ = ("dropped", "messages", "pauses")

    def __init__(self) -> None:
        self.messages = 0
        self.dropped = 0
        self.pauses = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class Bus:
    """An in-process message bus of pods (Grav's ``Grav`` instance, without networking).

    A mesh transport, discovery and bridges attach to a bus; ``stop`` stops them with it.
    """

    log = Logger()

    def __init__(
        self,
        *,
        reactor: IReactorTime | None = None,
        replay_size: int = DEFAULT_REPLAY_SIZE,
        pod_queue_limit: int = DEFAULT_POD_QUEUE_LIMIT,
        slow_pod_policy: SlowPodPolicy | str = SlowPodPolicy.PAUSE,
        max_failures: int = MAX_FAILURES,
        overflow_limit: int | None = None,
    ) -> None:
        if reactor is None:
            # imported late: importing the global reactor installs it, which a library
            # must not do at import time
            from twisted.internet import reactor as default_reactor  # noqa: PLC0415

            reactor = default_reactor  # type: ignore[assignment]
        if pod_queue_limit < 1:
            raise ValueError("pod_queue_limit must be at least 1")
        if max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        self.reactor: Any = reactor
        self.buffer = MsgBuffer(replay_size)
        self.pod_queue_limit = pod_queue_limit
        self.slow_pod_policy = SlowPodPolicy(slow_pod_policy)
        self.max_failures = max_failures
        self.overflow_limit = (
            overflow_limit if overflow_limit is not None else pod_queue_limit * OVERFLOW_FACTOR
        )
        self.stats = BusStats()
        #: The mesh transport attached to this bus, if any.
        self.mesh: Any = None
        self._pods: tuple[Pod, ...] = ()
        self._next_id = 1
        self._pending_msgs: list[Message] = []
        self._pending_from: list[object] = []
        self._flush_call: Any = None
        self._flushing = False
        self._over_limit: set[Pod] = set()
        self._producers: list[IPushProducer] = []
        self._writable: list[Deferred[None]] = []
        self._transports: list[Any] = []
        self._stop_once = Once(self._stop)

    # =========================================================================================
    # Pods
    # =========================================================================================

    def connect(self) -> Pod:
        """A new pod that receives live messages once it has a handler."""
        return self._add(Pod(self, self._take_id()))

    def connect_with_replay(self) -> Pod:
        """A new pod that first receives the replay buffer (oldest first), then live ones.

        The replay happens when the pod's first handler is set, so nothing is missed between
        ``connect_with_replay()`` and ``on()``.
        """
        return self._add(Pod(self, self._take_id(), replay=True))

    @property
    def pods(self) -> tuple[Pod, ...]:
        return self._pods

    @property
    def paused(self) -> bool:
        """True while some pod is over its queue limit under the ``pause`` policy."""
        return bool(self._over_limit)

    @property
    def deliveries(self) -> int:
        """Handler calls that succeeded, over every connected pod."""
        return sum(p.stats.delivered for p in self._pods)

    def _take_id(self) -> int:
        pod_id = self._next_id
        self._next_id += 1
        return pod_id

    def _add(self, pod: Pod) -> Pod:
        if self._stop_once.started:
            raise RuntimeError("the bus is stopped")
        self._pods = (*self._pods, pod)
        return pod

    def _remove(self, pod: Pod) -> None:
        self._pods = tuple(p for p in self._pods if p is not pod)
        if pod in self._over_limit:
            self._pod_below_limit(pod)

    def _replay_for(self, pod: Pod) -> list[Message]:
        return self.buffer.messages(exclude=pod)

    # =========================================================================================
    # Dispatch
    # =========================================================================================

    def post(self, msg: Message, sender: Pod) -> None:
        """Deliver ``msg`` to every pod but ``sender``, on the next reactor turn.

        This is how transports and bridges hand the bus a message that came from elsewhere
        (a peer, a broker): they post through their own pod, so the bus never hands the
        message back to them. Unlike ``Pod.send`` it makes no receipt (nobody here waits for
        a reply) and does not check that the pod is still connected. Messages posted in one
        turn are delivered in posting order, as sent ones are.
        """
        self._pending_msgs.append(msg)
        self._pending_from.append(sender)
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        """Deliver the pending batch to every pod (see the module doc)."""
        self._flush_call = None
        msgs = self._pending_msgs
        if not msgs or self._flushing:
            return
        senders = self._pending_from
        self._pending_msgs = []
        self._pending_from = []
        self._flushing = True
        try:
            self.buffer.extend(msgs, senders)
            self.stats.messages += len(msgs)
            count = len(msgs)
            for pod in self._pods:
                if not pod._fast:
                    pod._offer_from(msgs, senders, 0)
                    continue
                # The hot path: call the handler directly while the pod stays idle.
                handler = pod._handler
                own = 0
                for i in range(count):
                    if senders[i] is pod:
                        own += 1
                        continue
                    try:
                        result = handler(msgs[i])
                    except Exception:
                        pod.stats.delivered += i - own
                        pod._failure(msgs[i], Failure())
                    else:
                        if result is None and pod._fast:
                            continue
                        # Something happened: count what went well, go on the general path.
                        pod.stats.delivered += i - own
                        if result is None:
                            pod.stats.delivered += 1
                        else:
                            pod._result(msgs[i], result)
                    pod._offer_from(msgs, senders, i + 1)
                    break
                else:
                    pod.stats.delivered += count - own
        finally:
            self._flushing = False
        if self._pending_msgs and self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self._flush)

    def flush(self) -> None:
        """Deliver what is pending now instead of on the next reactor turn."""
        if self._flush_call is not None:
            self._flush_call.cancel()
        self._flush()

    # =========================================================================================
    # Slow pods and backpressure
    # =========================================================================================

    def register_producer(self, producer: IPushProducer) -> None:
        """``producer`` is paused while the bus is paused (and at once if it is now)."""
        self._producers.append(producer)
        if self._over_limit:
            producer.pauseProducing()

    def unregister_producer(self, producer: IPushProducer) -> None:
        if producer in self._producers:
            self._producers.remove(producer)

    def writable(self) -> Deferred[None]:
        """Fires once the bus is not paused (at once if it is not)."""
        if not self._over_limit:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._writable.append(d)
        return d

    def _admit_over_limit(self, pod: Pod) -> bool:
        """A message for ``pod`` finds its queue full: True to queue it anyway."""
        queued = len(pod._queue)
        if self.slow_pod_policy is SlowPodPolicy.DROP or queued >= self.overflow_limit:
            self._note_drop(pod, queued)
            return False
        if pod not in self._over_limit:
            self._over_limit.add(pod)
            if len(self._over_limit) == 1:
                self.stats.pauses += 1
                self.log.warn(
                    "bus paused: pod {pod} has {queued} messages queued (limit {limit}); "
                    "producers stop until it drains to {low}",
                    pod=pod.id,
                    queued=queued,
                    limit=self.pod_queue_limit,
                    low=self.pod_queue_limit // 2,
                )
                for producer in list(self._producers):
                    producer.pauseProducing()
        return True

    def _pod_below_limit(self, pod: Pod) -> None:
        self._over_limit.discard(pod)
        if self._over_limit:
            return
        self.log.info("bus resumed: slow pods caught up")
        for producer in list(self._producers):
            producer.resumeProducing()
        waiters, self._writable = self._writable, []
        for d in waiters:
            d.callback(None)

    def _note_drop(self, pod: Pod, queued: int) -> None:
        self.stats.dropped += 1
        dropped = pod.stats.dropped + 1
        if dropped & (dropped - 1) == 0:  # 1, 2, 4, 8, ...: visible but never a flood
            self.log.warn(
                "pod {pod} is slow: {dropped} messages dropped so far ({queued} queued, "
                "policy {policy})",
                pod=pod.id,
                dropped=dropped,
                queued=queued,
                policy=self.slow_pod_policy.value,
            )

    # =========================================================================================
    # Transports
    # =========================================================================================

    def attach(self, transport: Any, *, mesh: bool = False) -> None:
        """Let ``stop`` stop ``transport`` (a mesh, a bridge); ``mesh=True`` also makes it
        the transport for ``connect_endpoint`` and ``withdraw``."""
        if mesh:
            if self.mesh is not None and self.mesh is not transport:
                raise RuntimeError("this bus already has a mesh transport")
            self.mesh = transport
        if transport not in self._transports:
            self._transports.append(transport)

    def connect_endpoint(self, url: str) -> Deferred[Any]:
        """Dial a node at ``url`` through the mesh (and keep it connected)."""
        if self.mesh is None:
            return fail(TransportNotConfigured("this bus has no mesh transport"))
        return self.mesh.dial(url)

    def withdraw(self) -> Deferred[None]:
        """Tell every peer that this node leaves, so they stop sending to it."""
        if self.mesh is None:
            return fail(TransportNotConfigured("this bus has no mesh transport"))
        return self.mesh.withdraw()

    def stop(self) -> Deferred[None]:
        """Withdraw and stop the transports, deliver what is pending, disconnect every pod."""
        return self._stop_once()

    async def _stop(self) -> None:
        for transport in reversed(self._transports):
            try:
                await transport.stop()
            except Exception:
                self.log.failure("stopping {transport} failed", transport=transport)
        self.flush()
        for pod in self._pods:
            pod._close("closed: the bus stopped")
