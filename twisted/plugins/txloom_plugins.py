"""twistd plugins of txloom: one ServiceMaker per server, nothing else.

Each ServiceMaker names the module that holds its ``Options`` and ``makeService``; Twisted
imports that module only when the plugin is used, so ``twistd --help`` stays fast.
"""

from twisted.application.service import ServiceMaker

txloom = ServiceMaker(
    "txloom all-in-one node",
    "txloom.allinone",
    "Run every txloom server in one process on embedded defaults.",
    "txloom",
)

storeserver = ServiceMaker(
    "txloom store server",
    "txloom.store.tap",
    "Durable fact store: CRC32-framed JSON over TCP, Unix or TLS, with a write-ahead log.",
    "storeserver",
)

workerhost = ServiceMaker(
    "txloom worker host",
    "txloom.worker.tap",
    "App engine: supervised worker processes, Locator, Logging and an HTTP front end.",
    "workerhost",
)

busnode = ServiceMaker(
    "txloom bus node",
    "txloom.bus.tap",
    "Message bus node: pods, WebSocket mesh, discovery and a NATS bridge.",
    "busnode",
)
