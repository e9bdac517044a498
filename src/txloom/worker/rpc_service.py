"""The ``rpc`` service of the worker host's Locator: any Cocaine client or worker calls the
host's reverse-RPC agents through it.

Methods (all primitive: one ``value`` or one ``error`` back):

- ``call(name, type, payload[, timeout])`` -> the response payload (bytes);
- ``call_all(type, payload[, timeout])`` -> ``{name: [true, payload] | [false, code, message]}``;
- ``list()`` -> ``[[name, transport, address, calls in flight], ...]``.

Payloads are raw bytes with an explicit type name (``txloom.rpc.Raw``): the caller
encodes them (CBOR for dataclass types, serialized protobuf). An RPC failure is the error
``[[RPC, code], "code: message"]`` with the gRPC status number of the code.

The worker host depends on ``txloom.rpc``; ``txloom.rpc`` knows nothing of the host.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from txloom.interfaces import IReplyChannel, IService
from txloom.rpc import Clients, Raw, RPCError
from txloom.rpc.errors import STATUS_NUMBERS
from txloom.wire.cocaine import HeaderEntry
from txloom.worker import errors
from txloom.worker.dispatch import PRIMITIVE, TERMINAL

__all__ = ["RPC", "RpcService"]

#: Error category of reverse-RPC failures on the worker host's services.
RPC = 4

CALL, CALL_ALL, LIST = 0, 1, 2


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _timeout(args: list[Any], index: int) -> float | None:
    if len(args) <= index:
        return None
    value = args[index]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError("timeout must be a positive number of seconds")
    return float(value)


@implementer(IService)
class RpcService:
    """Calls on the agents of ``clients`` for Locator clients (see the module doc)."""

    log = Logger()
    name = "rpc"
    version = 1
    graph = {
        CALL: ("call", TERMINAL, PRIMITIVE),
        CALL_ALL: ("call_all", TERMINAL, PRIMITIVE),
        LIST: ("list", TERMINAL, PRIMITIVE),
    }

    def __init__(self, clients: Clients) -> None:
        self.clients = clients

    def invoke(
        self,
        method: int,
        args: list[Any],
        headers: tuple[HeaderEntry, ...],
        reply: IReplyChannel,
    ) -> None:
        try:
            if method == CALL:
                self._call(args, reply)
            elif method == CALL_ALL:
                self._call_all(args, reply)
            elif method == LIST:
                reply.value(
                    [[a.name, a.transport, a.address, a.in_flight] for a in self.clients.list()]
                )
            else:
                reply.error(errors.DISPATCH, errors.UNKNOWN_METHOD, f"no method {method}")
        except (ValueError, TypeError) as e:
            reply.error(errors.DISPATCH, errors.BAD_ARGUMENTS, str(e))

    def _call(self, args: list[Any], reply: IReplyChannel) -> None:
        if len(args) not in (3, 4):
            raise ValueError("call takes [name, type, payload, timeout?]")
        name, kind, payload = _text(args[0]), _text(args[1]), args[2]
        if name is None or kind is None or not isinstance(payload, bytes):
            raise ValueError("call takes [name: str, type: str, payload: bytes, timeout?]")
        d = self.clients.call(name, Raw(kind, payload), _timeout(args, 3))
        d.addCallbacks(reply.value, lambda f: _error(reply, f.value))

    def _call_all(self, args: list[Any], reply: IReplyChannel) -> None:
        if len(args) not in (2, 3):
            raise ValueError("call_all takes [type, payload, timeout?]")
        kind, payload = _text(args[0]), args[1]
        if kind is None or not isinstance(payload, bytes):
            raise ValueError("call_all takes [type: str, payload: bytes, timeout?]")
        d = self.clients.call_all(Raw(kind, payload), _timeout(args, 2))

        def answer(results: dict[str, Any]) -> None:
            out = {}
            for name, result in results.items():
                if isinstance(result, RPCError):
                    out[name] = [False, result.code, result.message]
                else:
                    out[name] = [True, result]
            reply.value(out)

        d.addCallback(answer)


def _error(reply: IReplyChannel, error: BaseException) -> None:
    if isinstance(error, RPCError):
        reply.error(RPC, STATUS_NUMBERS.get(error.code, 13), f"{error.code}: {error.message}")
    else:
        reply.error(RPC, 13, f"internal: {error}")


def build_controller(
    stream: str | None = None,
    grpc: str | None = None,
    http: bool = False,
    token: str | None = None,
) -> Any:
    """The host's ``RpcControllerService`` for its ``--rpc*`` options (None if none given).

    Transports are built by the installed ``IRPCTransportFactory`` plugins, by name.
    """
    if not (stream or grpc or http):
        return None
    from txloom.extensions import available, parse_options  # noqa: PLC0415
    from txloom.interfaces import IRPCTransportFactory  # noqa: PLC0415
    from txloom.rpc.service import RpcControllerService  # noqa: PLC0415

    factories = available(IRPCTransportFactory)
    clients = Clients(token=token)
    transports = []
    for name, listen, flag in (("stream", stream, "--rpc"), ("grpc", grpc, "--rpc-grpc")):
        if listen:
            factory = factories[name]
            options = parse_options(factory, [f"listen={listen}"], flag)
            transports.append(factory.server(clients, options))
    if http:
        for name in ("heartbeat", "longpoll"):
            transports.append(factories[name].server(clients, None))
    return RpcControllerService(clients, transports)
