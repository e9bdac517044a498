"""HTTP apps written for plain WSGI and plain twisted.web, served as workers unchanged."""

from __future__ import annotations

import json

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET


def wsgi_app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"part-%d\n" % i for i in range(100))
    if path == "/echo":
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [body]
    if path == "/missing":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not here\n"]
    seen = {
        key: environ.get(key)
        for key in (
            "REQUEST_METHOD",
            "PATH_INFO",
            "QUERY_STRING",
            "SERVER_PROTOCOL",
            "HTTP_X_FORWARDED_PREFIX",
            "HTTP_X_TEST",
            "HTTP_HOST",
        )
    }
    body = json.dumps(seen).encode()
    start_response(
        "200 OK",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("X-Served-By", "wsgi"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
        ],
    )
    return [body]


class Slow(Resource):
    """Writes five chunks, 20 ms apart, with a 201 status."""

    isLeaf = True

    def render_GET(self, request):
        request.setResponseCode(201)
        request.setHeader(b"X-Served-By", b"twisted.web")
        request.setHeader(b"Content-Type", b"text/plain")
        chunks = [b"tick-%d\n" % i for i in range(5)]

        def more():
            if request.finished or request._disconnected:
                return
            if chunks:
                request.write(chunks.pop(0))
                reactor.callLater(0.02, more)
            else:
                request.finish()

        more()
        return NOT_DONE_YET


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"text/plain")
        return b"hello " + request.uri


root = Resource()
root.putChild(b"slow", Slow())
root.putChild(b"hello", Hello())
