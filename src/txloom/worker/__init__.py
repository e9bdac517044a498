"""The worker host and the libraries around it.

App authors import the worker-side library from here::

    from txloom.worker import Worker

Clients use ``txloom.worker.client``; the engine itself (pools, services, HTTP front end)
is built by ``txloom.worker.tap`` / ``txloom.worker.host``.
"""

from txloom.worker.appworker import Request, Response, Worker

__all__ = ["Request", "Response", "Worker"]
