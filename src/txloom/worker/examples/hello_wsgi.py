"""A plain WSGI app, served as a worker with no change::

python -m txloom.worker.http --wsgi txloom.worker.examples.hello_wsgi:app
"""


def app(environ, start_response):
    body = b"Hello, world!\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
