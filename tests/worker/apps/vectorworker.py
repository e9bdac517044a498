"""The worker of the captured Cocaine session, written with txloom's library.

``ping`` echoes, ``http`` answers the captured response; tests compare the bytes.
"""

from __future__ import annotations

from txloom.wire.cocaine_http import decode_request, encode_response_head
from txloom.worker import Request, Response, Worker

worker = Worker()


@worker.on("ping")
async def echo(request: Request, response: Response) -> None:
    async for chunk in request:
        response.write(chunk)


@worker.on("http")
async def http(request: Request, response: Response) -> None:
    req = decode_request(await request.read())
    response.write(
        encode_response_head(200, [(b"Content-Type", b"text/plain"), (b"X-M", req.method)])
    )
    response.write(b"got:" + req.body)


@worker.on("raise")
def boom(request: Request, response: Response) -> None:
    raise RuntimeError("handler exploded")


if __name__ == "__main__":
    worker.run()
