"""The agent's handlers, keyed by request type name.

``registry.register(Ping, handle_ping)`` makes ``handle_ping`` answer requests of Ping's
type name (see ``txloom.rpc.codecs``); the handler receives a decoded ``Ping`` and returns
the response (a dataclass, a protobuf message, bytes or None) -- directly, as a Deferred, or
from an ``async def``. Registering a plain string registers a raw-bytes handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from txloom.rpc.codecs import Codec, codec_for, type_name_of

__all__ = ["Handler", "HandlerRegistry", "Registration"]

#: A handler: request object in; response, Deferred or awaitable out.
Handler = Callable[[Any], Any | Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Registration:
    """One registered type: how to decode its requests, and who answers them."""

    type_name: str
    codec: Codec
    handler: Handler


class HandlerRegistry:
    """Type name -> handler; registering one type twice is an error (spec)."""

    def __init__(self) -> None:
        self._by_type: dict[str, Registration] = {}

    def register(self, request_type: type | str, handler: Handler) -> Registration:
        """Answer requests of ``request_type`` (a class, or a type name for raw bytes)."""
        if not callable(handler):
            raise TypeError(f"handler for {request_type!r} is not callable")
        name = type_name_of(request_type)
        if name in self._by_type:
            raise ValueError(f"a handler for {name!r} is already registered")
        kind = None if isinstance(request_type, str) else request_type
        registration = Registration(name, codec_for(kind), handler)
        self._by_type[name] = registration
        return registration

    def handler(self, request_type: type | str) -> Callable[[Handler], Handler]:
        """Decorator form of ``register``."""

        def decorate(fn: Handler) -> Handler:
            self.register(request_type, fn)
            return fn

        return decorate

    def unregister(self, request_type: type | str) -> None:
        self._by_type.pop(type_name_of(request_type), None)

    def lookup(self, type_name: str) -> Registration | None:
        return self._by_type.get(type_name)

    def __contains__(self, request_type: object) -> bool:
        return type_name_of(request_type) in self._by_type

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._by_type))

    def __len__(self) -> int:
        return len(self._by_type)
