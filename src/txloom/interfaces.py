"""Every extension point of txloom, in one place.

Each interface states a contract that txloom's own implementations meet and that a user's
implementation must meet to be plugged in instead: storage backends for the store server,
transports and discovery for the bus, transports for reverse RPC, address resolvers and
source services for nested streams. Implementations declare themselves with
``@implementer`` and are checked with ``zope.interface.verify`` in the tests.

Methods that may wait on I/O return a ``Deferred`` (or are ``async def`` and wrapped with
``Deferred.fromCoroutine`` by the caller); that is written in each docstring.

The file is divided into one section per capability.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

# =============================================================================================
# Shared
# =============================================================================================


class IRunnable(Interface):
    """Something with a lifetime that a service starts and stops (a transport, a bridge)."""

    def start():  # type: ignore[misc]
        """Begin work; returns a Deferred that fires when ready (or fails with the reason)."""

    def stop():  # type: ignore[misc]
        """Stop work and release resources; returns a Deferred that fires when done.

        Calling ``stop`` twice, or before ``start`` finished, is allowed.
        """


class IExtensionFactory(Interface):
    """Builds one kind of extension; found with ``twisted.plugin.getPlugins``.

    A package adds a backend, a transport, a resolver... by shipping a dropin module under
    ``twisted/plugins/`` that holds an instance of a class declaring the kind's factory
    interface (``IStorageBackendFactory``, ``IRPCTransportFactory``, ...). ``txloom.extensions``
    finds them by interface and chooses one by ``name``; the ``twistd`` plugins list what is
    installed in their ``--help``. Each kind's factory interface adds its own build method.
    Factories must be cheap to import: import the implementation inside the build method.
    """

    name = Attribute("Short unique name chosen on the command line, e.g. 'file' or 'sqlite'.")
    description = Attribute("One line for --help.")
    options = Attribute(
        "The factory's own options: a ``twisted.python.usage.Options`` subclass, or None. "
        "Parsed from ``key=value`` words given on the command line (see txloom.extensions)."
    )


# =============================================================================================
# Store server (txloom.store)
# =============================================================================================


class IReplayPlan(Interface):
    """A fixed list of facts chosen for one replay answer, a page, or a catch-up step.

    Made on the reactor thread (``plan_replay``) or on a reader thread (``page``), then
    read on at most one thread at a time (a reader thread: reading may block on the
    disk). The facts a plan names never change under it: a backend keeps what it needs
    (pinned files, a read transaction) until ``close``.
    """

    count = Attribute("How many facts the plan holds.")
    next = Attribute(
        "Where a paged reader continues: the highest sequence number the plan covers. When "
        "``more`` is false it is at least the newest number committed when it was made."
    )
    more = Attribute("True when facts may remain after this page.")

    def encoded_size():  # type: ignore[misc]
        """Bytes of the fact bodies joined with commas (known before any is read)."""

    def batches():  # type: ignore[misc]
        """An iterator of lists of fact bodies (``bytes``), in plan order."""

    def numbered_batches():  # type: ignore[misc]
        """As ``batches``, with each body paired with its sequence number: ``(seq, body)``."""

    def close():  # type: ignore[misc]
        """Release what the plan holds; idempotent; called whether or not it was read."""


class IStorageBackend(Interface):
    """Where the store server keeps facts (``file`` and ``memory`` are txloom's own).

    The server hands a backend each fact twice over: its bytes (the compact JSON that
    replay and push send back verbatim) and its meta (``id``, ``store``,
    ``transaction_time``). The backend owns sequence numbers: 1, 2, ... in commit order,
    stable across restarts. Snapshot rules are the store spec's: a snapshot replaces the
    last one; a log fact whose id is in the snapshot is hidden from replay.

    Every method and attribute is used on the reactor thread; everything that writes or
    may wait returns a Deferred. A failure to store fails that Deferred with
    ``txloom.store.errors.StorageFailure`` (answered ``storage_failed``).
    """

    name = Attribute("Short name for logs and stats, such as 'file' or 'memory'.")
    location = Attribute("Where the facts live, for the start-up log (a path, or 'memory').")
    durable = Attribute("True when committed facts survive a restart of the process.")
    fsync = Attribute("The durability policy, shown in stats ('always', 'interval:MS', ...).")
    last_seq = Attribute("Sequence number of the newest committed fact (0 when empty).")
    fact_count = Attribute("How many facts a plain replay returns now.")

    def prepare():  # type: ignore[misc]
        """Take what must be exclusive (a directory lock) now, before anything is served:
        raises at once if another process holds it. May do nothing."""

    def open():  # type: ignore[misc]
        """Recover and load; a Deferred firing with a one-line summary for the log once
        appends and replays may begin."""

    def close():  # type: ignore[misc]
        """Finish queued writes, make them durable, release files; returns a Deferred."""

    def append(body, meta):  # type: ignore[misc]
        """Queue one fact; a Deferred firing with its sequence number once committed.

        "Committed" follows the backend's durability policy: with fsync ``always`` the
        fact is on stable storage when the Deferred fires. Facts are committed in the
        order ``append`` was called. Concurrent appends should share one sync.
        """

    def write_snapshot(facts):  # type: ignore[misc]
        """Replace the snapshot with ``facts`` (pairs of body and meta), atomically.

        A fact whose id the store already holds keeps that fact's sequence number; a new
        one takes the next. Queued behind earlier appends. Deferred fires with the count.
        """

    def compact():  # type: ignore[misc]
        """Drop what the snapshot hides and reclaim room; replay answers the same after.

        Never makes the store larger. Deferred fires with a dict: ``through`` (last
        number covered), ``facts`` (log facts kept), ``bytes_before``, ``bytes_after``
        and ``compacted`` (False when nothing was worth rewriting).
        """

    def plan_replay():  # type: ignore[misc]
        """An ``IReplayPlan`` of every visible fact, by transaction time then arrival."""

    def page(since, stores, limit, budget, scan_limit=None, then=None):  # type: ignore[misc]
        """A Deferred firing with an ``IReplayPlan`` of facts numbered above ``since``, in
        sequence order, chosen on a reader thread.

        ``stores`` (names, or None for all) filters; the page stops after ``limit``
        facts (None: no count limit), before ``budget`` bytes (bodies plus one comma
        each), or after examining ``scan_limit`` facts; ``plan.next`` is where the next
        page starts. With ``then``, ``then(plan)`` is called on that reader thread too
        (it closes the plan) and the Deferred fires with its result.
        """

    def read(fn, *args):  # type: ignore[misc]
        """Run ``fn(*args)`` (which reads plans) on a reader thread; a Deferred of it."""

    def add_listener(listener):  # type: ignore[misc]
        """Call ``listener(committed)`` with each batch of newly committed facts.

        Each item has ``seq``, ``store`` and ``body``; batches come in sequence order,
        after the facts are visible to replay and before their writers are answered.
        """

    def remove_listener(listener):  # type: ignore[misc]
        """Stop calling ``listener``."""

    def when_idle():  # type: ignore[misc]
        """A Deferred that fires once nothing is queued or being written (for drains)."""

    def storage_status():  # type: ignore[misc]
        """Health for ``stats``: ``{"storage": "ok" | "failed", "storage_failures": N}``,
        plus ``"storage_error"`` while failed."""


class IStorageBackendFactory(IExtensionFactory):
    """Builds a storage backend (found as a Twisted plugin: ``--backend NAME``)."""

    def backend(reactor, config, options):  # type: ignore[misc]
        """An ``IStorageBackend`` for a server with ``config`` (a ``StoreConfig``: data
        directory, fsync policy, frame limit, reader threads) and this factory's parsed
        ``options`` (or None)."""


# =============================================================================================
# Worker host (txloom.worker)
# =============================================================================================


class IDownstream(Interface):
    """The receiving end of a stream of replies: what a worker (or a service) sends back.

    ``write`` may be called any number of times, then exactly one of ``error`` or ``close``
    ends the stream; nothing is called after that. Calls never block and never raise to
    the sender: a receiver that cannot keep up buffers (boundedly) or drops its own
    connection. A receiver may also provide ``twisted.internet.interfaces.IConsumer``: the
    sender then registers itself as a push producer and, while paused, holds its stream (up
    to its own bound) or fails it; it never writes past a pause without limit.
    """

    def write(chunk):  # type: ignore[misc]
        """One chunk of the stream (``bytes``)."""

    def error(category, code, reason):  # type: ignore[misc]
        """The stream ends with an error ``[[category, code], reason]``."""

    def close():  # type: ignore[misc]
        """The stream ends normally."""


class IReplyChannel(IDownstream):
    """The server side of one channel of a service connection (see ``IService.invoke``)."""

    feeder = Attribute(
        "The caller's connection, or None: an object with ``pause_reading(by)`` and "
        "``resume_reading(by)``, so that a service whose own downstream lags (a worker "
        "that does not keep up) stops reading the caller until it has caught up."
    )

    def send(mtype, args):  # type: ignore[misc]
        """Send any message type allowed by the method's downstream protocol."""

    def value(*args):  # type: ignore[misc]
        """The single reply of a primitive protocol (message type 0)."""


class IUpstream(Interface):
    """What a service gives back from ``invoke`` when the client may keep sending."""

    def message(mtype, args):  # type: ignore[misc]
        """A further message from the client on this channel (write/error/close...)."""

    def cancel(reason):  # type: ignore[misc]
        """The client's connection is gone; release what the channel holds."""


class IService(Interface):
    """Something the Locator can resolve: a named set of methods on its own listener.

    ``graph`` maps method ids to ``(name, upstream, downstream)``, each protocol being a
    dict ``{message_type: (name, next_protocol)}``, ``None`` for "the same protocol
    continues" (recursive) or ``{}`` for "terminal".
    """

    name = Attribute("The name the Locator resolves (``locator``, ``logging``, an app name).")
    version = Attribute("Protocol version reported by resolve (locator 3, app 1, logging 2).")
    graph = Attribute("Method id -> (name, upstream protocol, downstream protocol).")

    def invoke(method, args, headers, reply):  # type: ignore[misc]
        """Start method ``method`` (an id in ``graph``) with ``args`` and header entries.

        Replies go to ``reply`` (an ``IReplyChannel``), possibly later. Returns an
        ``IUpstream`` if the method's upstream protocol is not terminal, else None. Must not
        raise for bad arguments: answer with ``reply.error`` instead.
        """


class IWorkerLauncher(Interface):
    """Starts worker processes for the engine (plain processes, containers, ...).

    A worker is everything it starts: the engine signals and waits for the worker through
    the transport ``launch`` returns, so that transport must reach all of it.
    """

    def launch(protocol, argv, env, cwd):  # type: ignore[misc]
        """Start ``argv`` with ``env`` in ``cwd``, wired to the ``IProcessProtocol``.

        Returns the ``IProcessTransport`` or a Deferred firing with it; the engine gives a
        launch ``spawn-timeout`` seconds. A failure to start is reported by raising, failing
        the Deferred or by the process ending before its handshake.

        The transport's ``signalProcess`` must reach what the worker started too (its
        process group, its container), also after the worker itself has exited, and raise
        ``ProcessExitedAlready`` once nothing of it is left; ``signalProcess(0)`` only
        checks that. The protocol's ``processExited`` is called as soon as the worker
        process has exited, whatever holds its output pipes: the engine sees the worker
        gone then, and ends the rest (SIGTERM, SIGKILL after ``terminate-timeout``).
        """


class IWorkerLauncherFactory(IExtensionFactory):
    """Builds an ``IWorkerLauncher`` (found as a Twisted plugin: ``--launcher NAME``)."""

    def launcher(reactor, options):  # type: ignore[misc]
        """An ``IWorkerLauncher`` starting workers with ``reactor``.

        ``options`` is the factory's own Options, parsed from ``--launcher-option
        key=value`` words (None when the factory takes none).
        """


# =============================================================================================
# Reverse RPC (txloom.rpc) -- see docs/rpc.md
# =============================================================================================
#
# server: [IRPCServerTransport] --IRPCPeer--> IRPCPeerRegistry (Clients) <- callers
# agent:  [IRPCClientTransport] --Request-->  IRPCDispatcher (Dispatcher) -> handlers
#
# Transports only move the four messages of ``txloom.wire.rpc``. Everything else (request
# ids, timeouts, cancels, same-name replacement, auth, typed payloads) lives in the registry
# and the dispatcher, so adding a transport changes neither.


class IRPCPeer(Interface):
    """The controller's handle on one connected agent, whatever transport carries it.

    A server transport creates one per agent session and reports it to its
    ``IRPCPeerRegistry``. ``send_request`` and ``send_cancel`` never block and never raise
    for a slow agent: the transport buffers a bounded amount per peer (in bytes) and, past
    it, closes the peer with a reason, which the registry sees as ``left``.
    """

    name = Attribute("The name the agent gave in its hello.")
    transport = Attribute("Which transport carries it: 'stream', 'heartbeat', 'longpoll', 'grpc'.")
    address = Attribute("Where the agent connects from, for logs and ``list`` (a string).")

    def send_request(request):  # type: ignore[misc]
        """Queue a ``txloom.wire.rpc.Request`` for the agent (ids are the registry's)."""

    def send_cancel(request_id):  # type: ignore[misc]
        """Queue ``Cancel(request_id)`` for the agent."""

    def close(code, reason):  # type: ignore[misc]
        """Drop the agent (replaced by a newer session, refused, or shut down).

        ``code`` is one of ``txloom.wire.rpc.ERROR_CODES``; the transport tells the agent
        where its wire can (an error message, a gRPC status) before closing. The transport
        does not report a peer it was told to close as ``left``.
        """


class IRPCPeerRegistry(Interface):
    """What a server transport reports to: the controller's registry of agents (``Clients``).

    Called on the reactor thread, in the order the transport received things.
    """

    def join(peer, hello):  # type: ignore[misc]
        """An agent said hello (``txloom.wire.rpc.Hello``) on ``peer``.

        Checks the token and the name; on refusal raises ``txloom.rpc.RPCError`` with the
        code (``unauthenticated``, ``invalid_argument``) and the transport closes the peer
        with it. A name already connected is replaced: the old peer is closed with
        ``cancelled`` and its in-flight calls fail with ``cancelled``.
        """

    def received(peer, response):  # type: ignore[misc]
        """A ``Response`` or ``ErrorResponse`` arrived on ``peer``; unknown ids are ignored."""

    def left(peer, reason):  # type: ignore[misc]
        """``peer``'s session ended (closed, cut, timed out); its in-flight calls fail."""


class IRPCServerTransport(IRunnable):
    """Accepts agents and reports their hellos, responses and departures to a registry."""

    name = Attribute("The transport's name: 'stream', 'heartbeat', 'longpoll', 'grpc'.")


class IRPCDispatcher(Interface):
    """What a client transport hands requests to: the agent's ``Dispatcher``."""

    def dispatch(request):  # type: ignore[misc]
        """Run the handler for a ``txloom.wire.rpc.Request``.

        Returns a Deferred that always fires with a ``Response`` or an ``ErrorResponse``
        (never fails). Cancelling the Deferred cancels the handler (its Deferred or
        coroutine); the transport cancels it when the controller sends ``cancel`` or when
        the session the request came on is gone for good.
        """


class IRPCClientTransport(IRunnable):
    """Carries an agent's hello and responses up and the controller's requests down.

    Built with the agent's name, optional token and an ``IRPCDispatcher``. ``start``
    connects (and keeps reconnecting with backoff and jitter until ``stop``); each new
    session begins with a hello.
    """

    connected = Attribute("True while a session with the controller is established.")


class IRPCTransportFactory(IExtensionFactory):
    """Builds both ends of one RPC transport (found as a Twisted plugin)."""

    schemes = Attribute(
        "URL schemes of the agent's --connect URL that choose this transport, "
        "e.g. ('tcp', 'unix', 'ssl') or ('grpc', 'grpcs')."
    )

    def server(registry, options):  # type: ignore[misc]
        """An ``IRPCServerTransport`` reporting to ``registry`` (``options``: its Options)."""

    def client(url, name, dispatcher, token, options):  # type: ignore[misc]
        """An ``IRPCClientTransport`` for the controller at ``url``."""


# =============================================================================================
# Nested streams (txloom.streams) -- see docs/streams.md once built
# =============================================================================================


class IAddressResolver(Interface):
    """Turns a service address (vAddr) into the endpoints that serve it.

    Implementations: a static map, the worker host's Locator, the bus.
    """

    def resolve(address):  # type: ignore[misc]
        """Return a Deferred firing with a list of client endpoint strings (may be empty)."""


class IAddressResolverFactory(IExtensionFactory):
    """Builds an ``IAddressResolver`` (found as a Twisted plugin: ``--resolver NAME``)."""

    def resolver(options):  # type: ignore[misc]
        """An ``IAddressResolver`` configured by ``options`` (its Options, parsed)."""


class IStreamServiceFactory(IExtensionFactory):
    """Builds a source function served under ``name`` (``workerhost --stream-service NAME``).

    A source function is called as ``source_func(body, tags)`` and returns the request's
    sources (see ``txloom.streams.source``). If it has a ``stop()`` method, the host calls
    it when it stops (to release clients the function holds), and waits on its Deferred.
    """

    def source_function(options):  # type: ignore[misc]
        """A source function configured by ``options`` (its Options, parsed, or None)."""


# =============================================================================================
# Bus node (txloom.bus)
# =============================================================================================


class IMeshTransport(IRunnable):
    """Carries bus messages between this node and its peers (the WebSocket mesh, or another).

    A mesh transport is a pod on its bus: it sends every message its pod receives to every
    peer that has not withdrawn, and hands every message a peer sends to its pod, so that
    the bus's self-filter keeps peer traffic from going straight back out. It must deliver
    each message to its bus at most once (dropping uuids it has already seen), keep at most
    one connection per peer node, and never let one slow peer hold up the others.
    ``start`` begins listening; ``stop`` withdraws first, then closes every connection.
    """

    node_uuid = Attribute("This node's uuid, as sent in handshakes and announcements.")
    belongs_to = Attribute("This node's group; '*' matches every group.")
    path = Attribute("The path peers dial, e.g. '/meta/message'.")
    listening_port = Attribute("The bound port once started (None when not listening).")
    withdrawn = Attribute("True once this node withdrew from the mesh.")
    peers = Attribute(
        "The connected peers now: a list of objects with node_uuid, direction ('inbound' or "
        "'outbound'), address, belongs_to and withdrawn (for status replies and logs)."
    )
    stats = Attribute("Counters, with ``as_dict()`` giving a dict of name to int.")

    def dial(url, node_uuid=None):  # type: ignore[misc]
        """Keep the node at ``url`` connected, redialling with backoff when it drops.

        ``node_uuid`` (when discovery announced it) is checked against the peer's
        handshake. Returns a Deferred that fires with the peer's node uuid once connected.
        """

    def found(url, node_uuid=None):  # type: ignore[misc]
        """Discovery's callback: dial ``url`` unless it is this node or already connected.

        Called repeatedly for the same peer; must be cheap and idempotent. Never raises.
        """

    def is_connected(node_uuid):  # type: ignore[misc]
        """True while a handshaked connection to ``node_uuid`` is open."""

    def withdraw():  # type: ignore[misc]
        """Tell every peer this node leaves (they stop sending to it); stop dialling.

        Returns a Deferred that fires once every peer acknowledged or a timeout passed.
        """


class IDiscovery(Interface):
    """Finds peers for a mesh transport.

    Implementations: static peer lists, Grav-compatible LAN multicast. A discovery reports
    what it finds and never dials by itself; the mesh decides (it skips itself and nodes
    already connected), so reporting the same peer often is expected and harmless.
    """

    def start(announcement, found):  # type: ignore[misc]
        """Begin discovering.

        ``announcement`` (a ``txloom.wire.grav.Announcement``: uuid, port, path) is what
        this node advertises, where the discovery advertises at all. ``found(url,
        node_uuid)`` is called for each peer found (``node_uuid`` None when unknown).
        Returns a Deferred that fires once discovery runs (or fails with the reason,
        e.g. the kernel refused multicast).
        """

    def stop():  # type: ignore[misc]
        """Stop announcing and listening; returns a Deferred. Stopping twice is allowed."""


class IBridgeTransport(IRunnable):
    """Carries chosen message types between the bus and an external broker (NATS).

    A bridge is a pod on its bus: it publishes each local message of a bridged type (one
    subject per type, the message JSON as payload) and sends into its bus each message the
    broker delivers. It must never hand a message back to the side it came from: its own
    publications are not delivered back to it, and a uuid it has already seen (sent or
    received) is dropped. ``start`` fires once subscribed; ``stop`` unsubscribes and
    drains.
    """

    message_types = Attribute("The message types bridged, in both directions.")

    def describe():  # type: ignore[misc]
        """A JSON-able dict of the bridge's state and counters, for status replies."""


class IMeshHub(Interface):
    """What one mesh connection reports to: the mesh that owns it (``WebSocketMesh``).

    A connection only feeds frames to its sans-I/O session and hands the events to its
    hub, which makes every decision (accept, refuse, which of two links to keep, relay);
    the hub answers by calling the connection's public methods (``send_reply``,
    ``send_payload``, ``close``). A dialer (which keeps one peer URL connected) asks the
    hub for the factory of its next attempt and parks with it. All calls happen on the
    reactor thread.
    """

    node_uuid = Attribute("This node's uuid (sent in handshakes).")
    belongs_to = Attribute("This node's group.")
    path = Attribute("The HTTP path the mesh is served on.")
    token = Attribute("The shared token peers must present, or None.")
    withdrawn = Attribute("True once this node withdrew (new connections are refused).")
    reactor = Attribute("The reactor (or clock) for the connection's deadlines.")
    handshake_timeout = Attribute("Seconds a connection has to complete the Grav handshake.")
    peer_backlog_limit = Attribute("Bytes a connection may queue for a slow peer.")
    max_message_size = Attribute("Largest WebSocket message taken from a peer, in bytes.")
    close_timeout = Attribute("Seconds to wait for a peer's close frame.")
    keepalive = Attribute("Seconds between pings on an idle connection (0: none).")

    def connection_made(conn):  # type: ignore[misc]
        """A new connection (either direction), before any frame."""

    def handshake_from(conn, handshake):  # type: ignore[misc]
        """A dialling peer's ``Handshake``: the hub accepts or refuses (and closes)."""

    def reply_from(conn, reply):  # type: ignore[misc]
        """The ``HandshakeReply`` of the node ``conn`` dialled."""

    def message_from(conn, fields):  # type: ignore[misc]
        """A message (``MessageFields``) from the peer of an open connection."""

    def foreign_from(conn, data):  # type: ignore[misc]
        """A frame that is not a message (it becomes a ``websocket.message``)."""

    def peer_withdrew(conn):  # type: ignore[misc]
        """The peer said WITHDRAW (the connection already answered WITHDRAW ACK)."""

    def dropped_for(conn):  # type: ignore[misc]
        """A message for a slow peer was dropped (its backlog was full)."""

    def connection_lost(conn, reason):  # type: ignore[misc]
        """The connection ended (``reason`` is one line for the log)."""

    def client_factory(dialer):  # type: ignore[misc]
        """The protocol factory a dialer's next connection attempt uses."""

    def park(node_uuid, dialer):  # type: ignore[misc]
        """``dialer``'s node is linked through another connection: unpark it (or tell it
        the peer withdrew) when that connection ends."""


class IMeshTransportFactory(IExtensionFactory):
    """Builds a mesh transport for a bus node (found as a Twisted plugin).

    txloom ships ``websocket`` (the Grav-compatible WebSocket mesh).
    """

    def transport(bus, config, options, reactor):  # type: ignore[misc]
        """An ``IMeshTransport`` on ``bus`` (it connects its own pod), configured by the
        node's ``BusNodeConfig`` and the factory's parsed ``options`` (or None)."""


class IDiscoveryFactory(IExtensionFactory):
    """Builds a discovery for a bus node: ``--discovery NAME`` (repeatable) chooses it and
    ``--discovery-option key=value`` words after it configure it.

    txloom ships ``static`` (the ``--peer`` list) and ``local`` (Grav's LAN multicast); the
    example distribution txloom-extras adds ``file`` (peers listed in a file).
    """

    def discovery(config, options, reactor):  # type: ignore[misc]
        """An ``IDiscovery`` configured by the node's ``BusNodeConfig`` and ``options``."""


class IBridgeFactory(IExtensionFactory):
    """Builds a bridge for a bus node: ``--bridge NAME`` (repeatable) chooses it and
    ``--bridge-option key=value`` words after it configure it. txloom ships ``nats``."""

    def bridge(bus, config, options, reactor):  # type: ignore[misc]
        """An ``IBridgeTransport`` on ``bus``, configured by ``config`` and ``options``."""
