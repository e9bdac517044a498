"""Status over HTTP for every txloom server: ``/healthz``, ``/readyz`` and ``/metrics``.

``--status ENDPOINT`` on a plugin adds a ``StatusService`` fed by that server's ``Watch``
(``txloom.status.store``, ``.worker``, ``.bus``); the all-in-one node serves every part's
watch on one site. Metrics are in the Prometheus text format, each server with its own
``CollectorRegistry`` so that several servers in one process never collide.
"""

from txloom.status.site import StatusService, Watch

__all__ = ["StatusService", "Watch"]
