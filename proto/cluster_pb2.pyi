from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers

DESCRIPTOR: _descriptor.FileDescriptor

class Hello(_message.Message):
    __slots__ = ("node_id", "hostname", "version", "labels", "config_version", "config_hash")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: str | None = ..., value: str | None = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_HASH_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    hostname: str
    version: str
    labels: _containers.ScalarMap[str, str]
    config_version: int
    config_hash: str
    def __init__(self, node_id: str | None = ..., hostname: str | None = ..., version: str | None = ..., labels: _Mapping[str, str] | None = ..., config_version: int | None = ..., config_hash: str | None = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("version", "hash")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    version: int
    hash: str
    def __init__(self, version: int | None = ..., hash: str | None = ...) -> None: ...

class Nack(_message.Message):
    __slots__ = ("version", "hash", "error_detail")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    ERROR_DETAIL_FIELD_NUMBER: _ClassVar[int]
    version: int
    hash: str
    error_detail: str
    def __init__(self, version: int | None = ..., hash: str | None = ..., error_detail: str | None = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ("config_version", "config_hash")
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_HASH_FIELD_NUMBER: _ClassVar[int]
    config_version: int
    config_hash: str
    def __init__(self, config_version: int | None = ..., config_hash: str | None = ...) -> None: ...

class DataPlaneMessage(_message.Message):
    __slots__ = ("hello", "ack", "nack", "ping")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    ack: Ack
    nack: Nack
    ping: Ping
    def __init__(self, hello: Hello | _Mapping | None = ..., ack: Ack | _Mapping | None = ..., nack: Nack | _Mapping | None = ..., ping: Ping | _Mapping | None = ...) -> None: ...

class Resource(_message.Message):
    __slots__ = ("kind", "id", "body")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    kind: str
    id: str
    body: bytes
    def __init__(self, kind: str | None = ..., id: str | None = ..., body: bytes | None = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("version", "hash", "resources")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    version: int
    hash: str
    resources: _containers.RepeatedCompositeFieldContainer[Resource]
    def __init__(self, version: int | None = ..., hash: str | None = ..., resources: _Iterable[Resource | _Mapping] | None = ...) -> None: ...

class Pong(_message.Message):
    __slots__ = ("config_version",)
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    config_version: int
    def __init__(self, config_version: int | None = ...) -> None: ...

class ControlPlaneMessage(_message.Message):
    __slots__ = ("snapshot", "pong")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    snapshot: Snapshot
    pong: Pong
    def __init__(self, snapshot: Snapshot | _Mapping | None = ..., pong: Pong | _Mapping | None = ...) -> None: ...
