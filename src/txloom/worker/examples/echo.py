"""A small worker: ``echo`` streams back what it gets, ``ping`` answers ``pong``.

Run under the host with the manifest in ``apps/echo.json``.
"""

from txloom.worker import Request, Response, Worker

worker = Worker()


@worker.on("echo")
async def echo(request: Request, response: Response) -> None:
    async for chunk in request:
        response.write(chunk)


@worker.on("ping")
def ping(request: Request, response: Response) -> None:
    response.write(b"pong")


if __name__ == "__main__":
    worker.run()
