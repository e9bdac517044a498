"""The store server: a durable fact store speaking the Igniter store wire protocol.

``twistd storeserver`` runs it (see ``txloom.store.tap``); ``StoreService`` embeds it;
``StoreClient`` (Twisted) and ``NetworkBackend`` (blocking) talk to it; ``Fact.build``
makes facts the way the spec says. docs/store.md has a quick start.
"""

from txloom.store.blocking import NetworkBackend, Subscription
from txloom.store.config import FsyncPolicy, StoreConfig
from txloom.store.errors import StoreConnectionError, StoreError
from txloom.store.fact import Fact, canonical_json, value_hash

__all__ = [
    "Fact",
    "FsyncPolicy",
    "NetworkBackend",
    "StoreConfig",
    "StoreConnectionError",
    "StoreError",
    "Subscription",
    "canonical_json",
    "value_hash",
]
