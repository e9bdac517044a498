import datetime

from google.protobuf import any_pb2 as _any_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Request(_message.Message):
    __slots__ = ("id", "timeout", "payload")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    id: int
    timeout: _duration_pb2.Duration
    payload: _any_pb2.Any
    def __init__(self, id: _Optional[int] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., payload: _Optional[_Union[_any_pb2.Any, _Mapping]] = ...) -> None: ...

class Response(_message.Message):
    __slots__ = ("id", "payload", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: int
    payload: bytes
    error: _status_pb2.Status
    def __init__(self, id: _Optional[int] = ..., payload: _Optional[bytes] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class ServerToClient(_message.Message):
    __slots__ = ("request", "cancel_id")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    CANCEL_ID_FIELD_NUMBER: _ClassVar[int]
    request: Request
    cancel_id: int
    def __init__(self, request: _Optional[_Union[Request, _Mapping]] = ..., cancel_id: _Optional[int] = ...) -> None: ...

class ClientToServer(_message.Message):
    __slots__ = ("hello", "response")
    class Hello(_message.Message):
        __slots__ = ("name", "next_id")
        NAME_FIELD_NUMBER: _ClassVar[int]
        NEXT_ID_FIELD_NUMBER: _ClassVar[int]
        name: str
        next_id: int
        def __init__(self, name: _Optional[str] = ..., next_id: _Optional[int] = ...) -> None: ...
    HELLO_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    hello: ClientToServer.Hello
    response: Response
    def __init__(self, hello: _Optional[_Union[ClientToServer.Hello, _Mapping]] = ..., response: _Optional[_Union[Response, _Mapping]] = ...) -> None: ...
