"""Typed payloads: how a request or response object becomes the bytes of a message.

A request's *type name* (the ``type`` of ``txloom.wire.rpc.Request``) chooses the agent's
handler. Three kinds of types are understood:

- **Dataclasses**, encoded as a CBOR map of their fields (nested dataclasses and lists of
  them are decoded from the field annotations). The type name is the class's
  ``__rpc_type__`` attribute, set with the ``rpc_type("agents.Ping")`` decorator; a
  dataclass without one is named ``<module>.<qualified class name>``. Name your types
  explicitly: a module path differs between programs (``__main__``) and changes when code
  moves, and both ends must agree on the name.
- **Protobuf message classes**: the type name is the message's full protobuf name
  (``DESCRIPTOR.full_name``, e.g. ``agents.v1.Ping``), the payload its serialized bytes.
  These are what the gRPC transport carries inside ``google.protobuf.Any``.
- **Raw bytes** with an explicit type name: register a handler for the string
  ``"agents.Blob"`` and it receives the payload bytes; call it with
  ``Raw("agents.Blob", b"...")``.

A response's type is the request type's ``response`` (``rpc_type(..., response=Pong)``),
or given to the call (``response_type=Pong``); without one the caller receives bytes.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, Union

import cbor2
from google.protobuf.message import DecodeError

from txloom.rpc.errors import InvalidArgument

__all__ = ["Codec", "Raw", "codec_for", "encode_value", "rpc_type", "type_name_of"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Raw:
    """A request given as bytes with an explicit type name."""

    type: str
    payload: bytes


def rpc_type(name: str, response: type | None = None) -> Callable[[type[T]], type[T]]:
    """Class decorator naming a dataclass's RPC type (and its response type)."""
    if not isinstance(name, str) or not name:
        raise ValueError("an RPC type name is a non-empty string")

    def decorate(cls: type[T]) -> type[T]:
        cls.__rpc_type__ = name  # type: ignore[attr-defined]
        if response is not None:
            cls.__rpc_response__ = response  # type: ignore[attr-defined]
        return cls

    return decorate


def _is_protobuf(cls: Any) -> bool:
    return isinstance(cls, type) and hasattr(cls, "DESCRIPTOR") and hasattr(cls, "FromString")


def type_name_of(kind: Any) -> str:
    """The type name of a dataclass or protobuf class, or of a ``str`` (raw bytes) itself."""
    if isinstance(kind, str):
        return kind
    if isinstance(kind, Raw):
        return kind.type
    try:
        return _NAMES[kind]
    except (KeyError, TypeError):
        pass
    if _is_protobuf(kind):
        name = str(kind.DESCRIPTOR.full_name)
    elif isinstance(kind, type) and dataclasses.is_dataclass(kind):
        own = kind.__dict__.get("__rpc_type__")
        name = own if isinstance(own, str) else f"{kind.__module__}.{kind.__qualname__}"
    else:
        raise TypeError(f"{kind!r} is not an RPC type (a dataclass, a protobuf class or a name)")
    _NAMES[kind] = name
    return name


#: Type names by class (a class's name never changes once it is used).
_NAMES: dict[Any, str] = {}

#: Field names by dataclass, for encoding without ``dataclasses.fields`` on every call.
_FIELDS: dict[type, tuple[str, ...]] = {}


class Codec:
    """Bytes to objects of one type and back (raw bytes when ``kind`` is None)."""

    __slots__ = ("decode", "kind")

    def __init__(self, kind: type | None) -> None:
        self.kind = kind
        if kind is None:
            self.decode: Callable[[bytes], Any] = bytes
        elif _is_protobuf(kind):
            self.decode = functools.partial(_protobuf_from, kind)
        elif dataclasses.is_dataclass(kind):
            self.decode = functools.partial(_dataclass_from_bytes, kind)
        else:
            raise TypeError(f"{kind!r} is not a dataclass or a protobuf message class")


@functools.lru_cache(maxsize=1024)
def codec_for(kind: type | None) -> Codec:
    """The (cached) codec of a class, or of raw bytes for None."""
    return Codec(kind)


def encode_value(value: Any) -> bytes:
    """A request or response object as payload bytes (None is the empty payload)."""
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, Raw):
        return value.payload
    names = _FIELDS.get(type(value))
    if names is not None or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
        return cbor2.dumps(_plain(value))
    serialize = getattr(value, "SerializeToString", None)
    if serialize is not None:
        return bytes(serialize())
    raise TypeError(f"cannot send {type(value).__name__}: not a dataclass, protobuf or bytes")


def _plain(value: Any) -> Any:
    # dataclasses.asdict deep-copies every field; this walks only what needs converting.
    kind = type(value)
    if kind in _SCALARS:
        return value
    names = _FIELDS.get(kind)
    if names is None and dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = _FIELDS[kind] = tuple(f.name for f in dataclasses.fields(value))
    if names is not None:
        return {name: _plain(getattr(value, name)) for name in names}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


_SCALARS = frozenset({str, bytes, int, float, bool, type(None)})


def _protobuf_from(kind: Any, payload: bytes) -> Any:
    try:
        return kind.FromString(payload)
    except (DecodeError, RuntimeWarning, ValueError) as e:
        raise InvalidArgument(f"payload is not a {type_name_of(kind)}: {e}") from None


def _dataclass_from_bytes(kind: type, payload: bytes) -> Any:
    try:
        obj = cbor2.loads(payload)
    except RecursionError:
        raise InvalidArgument("payload nests too deeply") from None
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, MemoryError) as e:
        raise InvalidArgument(f"payload is not CBOR: {e}") from None
    return _dataclass_from(kind, obj)


@functools.lru_cache(maxsize=256)
def _hints(kind: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(kind)
    except Exception:  # unresolvable annotations: decode fields as they come
        return {}


def _dataclass_from(kind: type, obj: Any) -> Any:
    if not isinstance(obj, dict):
        raise InvalidArgument(f"payload of {type_name_of(kind)} must be a map of its fields")
    values: dict[str, Any] = {}
    for name, hint in _plan(kind):
        if name in obj:
            value = obj[name]
            values[name] = value if hint is None else _convert(hint, value, name)
    try:
        return kind(**values)
    except TypeError as e:  # a missing field, or the class's own check refusing a value
        raise InvalidArgument(f"payload does not make a {type_name_of(kind)}: {e}") from None


@functools.lru_cache(maxsize=256)
def _plan(kind: type) -> tuple[tuple[str, Any], ...]:
    """(field, the annotation if it needs converting, else None) for each field."""
    hints = _hints(kind)
    plan = []
    for field in dataclasses.fields(kind):
        hint = hints.get(field.name)
        plain = (
            hint is None
            or hint in _SCALARS
            or hint is Any
            or (typing.get_origin(hint) is None and not dataclasses.is_dataclass(hint))
        )
        plan.append((field.name, None if plain else hint))
    return tuple(plan)


def _convert(hint: Any, value: Any, where: str) -> Any:
    if hint is None:
        return value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _dataclass_from(hint, value)
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(hint):
            if isinstance(arg, type) and dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return _dataclass_from(arg, value)
        return value
    if origin in (list, tuple) and isinstance(value, list):
        args = typing.get_args(hint)
        inner = args[0] if args else None
        items = [_convert(inner, v, where) for v in value]
        return tuple(items) if origin is tuple else items
    return value
