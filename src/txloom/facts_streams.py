"""The ``facts`` stream service: a store's facts as nested streams.

The request body names stores, one per line (UTF-8); the answer is one source per store,
its header the store's name and its frames that store's facts in sequence order, one frame
per fact (the fact's JSON, as the store keeps it). Each store is read page by page only as
its own reader takes frames, so a slow reader of one store holds back that store alone.

This adapter is the only place that knows both sides: ``txloom.store`` and
``txloom.streams`` do not import each other. It is served by ``twistd workerhost
--streams ENDPOINT --stream-service "facts store=tcp:127.0.0.1:7400"`` and by ``make
run``'s all-in-one node.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from twisted.internet.defer import Deferred
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

from txloom.interfaces import IStreamServiceFactory

__all__ = ["MAX_STORES", "FactsService", "FactsServiceFactory", "parse_stores"]

#: Most stores one request may name.
MAX_STORES = 1024
#: Facts fetched from the store per page (one page is read ahead per store at most).
DEFAULT_PAGE_SIZE = 500


class BadFactsRequest(ValueError):
    """The body does not name stores (one readable line)."""


def parse_stores(body: bytes) -> list[str]:
    """Store names, one per line; blank lines are ignored, duplicates kept once."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadFactsRequest("the body must be UTF-8 store names, one per line") from None
    names = list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))
    if len(names) > MAX_STORES:
        raise BadFactsRequest(f"at most {MAX_STORES} stores per request")
    return names


class FactsService:
    """Source function over a ``StoreClient`` (see the module doc)."""

    def __init__(self, store: Any, page_size: int = DEFAULT_PAGE_SIZE) -> None:
        self.store = store
        self.page_size = page_size

    def __call__(self, body: bytes, tags: dict[str, str]) -> list[Any]:
        from txloom.streams import Source  # noqa: PLC0415 - keeps the plugin dropin cheap

        return [Source(name.encode("utf-8"), self.facts(name)) for name in parse_stores(body)]

    async def facts(self, store: str) -> AsyncIterator[bytes]:
        """One store's facts as frames, a page at a time, as the reader takes them."""
        from txloom.store.fact import encode_fact  # noqa: PLC0415

        async for page in self.store.replay_pages([store], 0, self.page_size):
            for fact in page:
                yield encode_fact(fact.to_dict())

    def stop(self) -> Deferred[Any]:
        return self.store.stop()


class FactsServiceOptions(usage.Options):
    optParameters = [
        ["store", None, "tcp:127.0.0.1:7400", "Client endpoint string of the store server."],
        ["token", None, None, "The store server's token, if it wants one."],
        ["page", None, DEFAULT_PAGE_SIZE, "Facts read from the store per page.", int],
    ]


@implementer(IPlugin, IStreamServiceFactory)
class FactsServiceFactory:
    name = "facts"
    description = "a store server's facts, one source per store (store=ENDPOINT)"
    options = FactsServiceOptions

    def source_function(self, options: usage.Options | None) -> FactsService:
        from txloom.store.client import StoreClient  # noqa: PLC0415

        if options is None:
            options = FactsServiceOptions()
            options.parseOptions([])
        client = StoreClient(options["store"], token=options["token"]).start()
        return FactsService(client, options["page"])
