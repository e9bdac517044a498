"""A worker for the tests: one event per behaviour the engine must handle."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from txloom.wire.cocaine_http import decode_request, encode_response_head
from txloom.worker import Request, Response
from txloom.worker.client import LoggerClient
from txloom.worker.examples.echo import worker

# ``worker`` is the shipped example (``echo``, ``ping``) plus one event per behaviour under test


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


@worker.on("env")
async def env(request: Request, response: Response) -> None:
    """The value of the environment variable the request names, then the worker's pid."""
    name = (await request.read_all()).decode()
    response.write(f"{os.environ.get(name, '')} {os.getpid()}")


@worker.on("linger")
async def linger(request: Request, response: Response) -> None:
    """Answers its pid at once, and "done" once the caller has closed its side."""
    response.write(str(os.getpid()))
    await request.read_all()
    response.write(b"done")


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


HELPER = (
    "import signal, sys, time\n"
    "if sys.argv[1] == 'ignore-term':\n"
    "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "time.sleep(120)\n"
)


@worker.on("helper")
async def helper(request: Request, response: Response) -> None:
    """Starts a helper process that shares the worker's stdout/stderr; answers its pid.

    The request says whether the helper ignores SIGTERM (``ignore-term``).
    """
    how = (await request.read_all()).decode() or "plain"
    child = subprocess.Popen([sys.executable, "-c", HELPER, how])
    response.write(str(child.pid))


@worker.on("fork-exit")
async def fork_exit(request: Request, response: Response) -> None:
    """Forks a child that keeps every descriptor of the worker (socket and pipes), answers
    the child's pid, then the worker exits with code 3 mid-session."""
    pid = os.fork()
    if pid == 0:
        time.sleep(120)
        os._exit(0)
    response.write(str(pid))
    reactor.callLater(0.05, os._exit, 3)
    await Deferred()


BLOCK = b"s" * 65536


async def _stream_blocks(response: Response, total: int) -> None:
    """``total`` bytes in 64 KiB chunks as fast as the reactor turns, 1 MiB a turn.

    ``response.write`` raises once the engine gives up on the session, which ends it.
    """
    sent = 0
    while sent < total:
        for _ in range(16):
            response.write(BLOCK)
            sent += len(BLOCK)
        await deferLater(reactor, 0, lambda: None)


@worker.on("stream")
async def stream(request: Request, response: Response) -> None:
    """Streams as many bytes as the request says."""
    await _stream_blocks(response, int(await request.read_all()))


@worker.on("slowsink")
async def slowsink(request: Request, response: Response) -> None:
    """Takes the request slowly (blocks 1 ms a chunk); answers its size and SHA-256."""
    digest = hashlib.sha256()
    size = 0
    async for chunk in request:
        time.sleep(0.001)
        digest.update(chunk)
        size += len(chunk)
    response.write(b"%d %s" % (size, digest.hexdigest().encode()))


@worker.on("http")
async def http(request: Request, response: Response) -> None:
    """A raw HTTP event, by path: /stream?N streams N bytes, /late, /long, /short are
    Content-Length replies (closed 0.3 s late, longer and shorter than they say)."""
    req = decode_request(await request.read())
    path, _, query = req.uri.partition(b"?")
    if path == b"/stream":
        response.write(encode_response_head(200, [(b"Content-Type", b"text/plain")]))
        await _stream_blocks(response, int(query))
        return
    length, body = {b"/late": (5, b"hello"), b"/long": (5, b"hello world")}.get(
        path, (10, b"hello")
    )
    response.write(encode_response_head(200, [(b"Content-Length", b"%d" % length)]))
    response.write(body)
    if path == b"/late":
        await deferLater(reactor, 0.3, lambda: None)
        print(f"late close; cancelled={response.cancelled is not None}", flush=True)


if __name__ == "__main__":
    worker.run()
