"""A worker for the tests: one event per behaviour the engine must handle."""

from __future__ import annotations

import os
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from txloom.worker import Request, Response, Worker
from txloom.worker.client import LoggerClient

worker = Worker()


@worker.on("echo")
async def echo(request: Request, response: Response) -> None:
    async for chunk in request:
        response.write(chunk)


@worker.on("ping")
def ping(request: Request, response: Response) -> None:
    response.write(b"pong")


@worker.on("count")
async def count(request: Request, response: Response) -> None:
    """Reads the number of chunks to send, then sends them."""
    n = int(await request.read_all())
    for i in range(n):
        response.write(b"chunk-%d" % i)


@worker.on("sum")
async def total(request: Request, response: Response) -> None:
    """Counts chunks and bytes of the request."""
    chunks = size = 0
    async for chunk in request:
        chunks += 1
        size += len(chunk)
    response.write(b"%d %d" % (chunks, size))


@worker.on("fail")
def fail(request: Request, response: Response) -> None:
    response.error(7, "requested failure")


@worker.on("raise")
def boom(request: Request, response: Response) -> None:
    raise ValueError("boom")


@worker.on("pid")
def pid(request: Request, response: Response) -> None:
    response.write(str(os.getpid()))


@worker.on("hang")
async def hang(request: Request, response: Response) -> None:
    """Answers its pid at once, then never finishes."""
    response.write(str(os.getpid()))
    await Deferred()


@worker.on("sleep")
async def sleep(request: Request, response: Response) -> None:
    seconds = float(await request.read_all() or b"0.2")
    await deferLater(reactor, seconds, lambda: None)
    response.write(str(os.getpid()))


@worker.on("print")
def say(request: Request, response: Response) -> None:
    print("out-line from", worker.uuid, flush=True)
    print("err-line from", worker.uuid, file=sys.stderr, flush=True)
    response.write(b"printed")


@worker.on("log")
async def log(request: Request, response: Response) -> None:
    host, port = worker.locator[0]
    logger = await LoggerClient.connect(f"app/{worker.app}", (host, port), uuid=worker.uuid)
    logger.warning((await request.read_all()).decode(), where="testworker")
    logger.debug("too verbose to be seen")
    level = await logger.verbosity()
    logger.close()
    response.write(str(level))


@worker.on("headers")
def headers(request: Request, response: Response) -> None:
    """The invoke's header entries, as the worker received them."""
    for entry in request.headers:
        if isinstance(entry, int):
            response.write(b"#%d" % entry)
        else:
            response.write(entry.name + b"=" + entry.value.hex().encode())


@worker.on("silent")
async def silent(request: Request, response: Response) -> None:
    """Never answers."""
    await Deferred()


@worker.on("vanish")
async def vanish(request: Request, response: Response) -> None:
    """Exits with code 3 before answering anything."""
    reactor.callLater(0.05, os._exit, 3)
    await Deferred()


@worker.on("exit")
async def leave(request: Request, response: Response) -> None:
    """Exits with code 3 in the middle of the session."""
    response.write(b"bye")
    reactor.callLater(0.05, os._exit, 3)
    await Deferred()


if __name__ == "__main__":
    worker.run()
