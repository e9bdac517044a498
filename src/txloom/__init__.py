"""txloom: Twisted networking framework.

Five capabilities, each a wire format implemented as Twisted protocols with zope
interfaces as extension points: a durable fact store server (``txloom.store``), a worker
host (``txloom.worker``), reverse RPC (``txloom.rpc``), nested streams
(``txloom.streams``) and a message bus (``txloom.bus``). Sans-I/O codecs live in
``txloom.wire``; every extension point is declared in ``txloom.interfaces``.
"""

__version__ = "0.1.0.dev0"
