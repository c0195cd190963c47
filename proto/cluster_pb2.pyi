from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Hello(_message.Message):
    __slots__ = ("node_id", "hostname", "version", "labels", "config_version", "config_hash", "ping_interval")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_HASH_FIELD_NUMBER: _ClassVar[int]
    PING_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    hostname: str
    version: str
    labels: _containers.ScalarMap[str, str]
    config_version: int
    config_hash: str
    ping_interval: float
    def __init__(self, node_id: _Optional[str] = ..., hostname: _Optional[str] = ..., version: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., config_version: _Optional[int] = ..., config_hash: _Optional[str] = ..., ping_interval: _Optional[float] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("version", "hash")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    version: int
    hash: str
    def __init__(self, version: _Optional[int] = ..., hash: _Optional[str] = ...) -> None: ...

class Nack(_message.Message):
    __slots__ = ("version", "hash", "error_detail", "resync")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    ERROR_DETAIL_FIELD_NUMBER: _ClassVar[int]
    RESYNC_FIELD_NUMBER: _ClassVar[int]
    version: int
    hash: str
    error_detail: str
    resync: bool
    def __init__(self, version: _Optional[int] = ..., hash: _Optional[str] = ..., error_detail: _Optional[str] = ..., resync: _Optional[bool] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ("config_version", "config_hash")
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_HASH_FIELD_NUMBER: _ClassVar[int]
    config_version: int
    config_hash: str
    def __init__(self, config_version: _Optional[int] = ..., config_hash: _Optional[str] = ...) -> None: ...

class AddressHealth(_message.Message):
    __slots__ = ("upstream_id", "target_id", "target", "address", "state", "reason", "time", "weight")
    UPSTREAM_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    upstream_id: str
    target_id: str
    target: str
    address: str
    state: str
    reason: str
    time: float
    weight: int
    def __init__(self, upstream_id: _Optional[str] = ..., target_id: _Optional[str] = ..., target: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., time: _Optional[float] = ..., weight: _Optional[int] = ...) -> None: ...

class HealthReport(_message.Message):
    __slots__ = ("full", "addresses", "panic_upstreams")
    FULL_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    PANIC_UPSTREAMS_FIELD_NUMBER: _ClassVar[int]
    full: bool
    addresses: _containers.RepeatedCompositeFieldContainer[AddressHealth]
    panic_upstreams: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, full: _Optional[bool] = ..., addresses: _Optional[_Iterable[_Union[AddressHealth, _Mapping]]] = ..., panic_upstreams: _Optional[_Iterable[str]] = ...) -> None: ...

class DataPlaneMessage(_message.Message):
    __slots__ = ("hello", "ack", "nack", "ping", "health")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    ack: Ack
    nack: Nack
    ping: Ping
    health: HealthReport
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., nack: _Optional[_Union[Nack, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ..., health: _Optional[_Union[HealthReport, _Mapping]] = ...) -> None: ...

class Resource(_message.Message):
    __slots__ = ("kind", "id", "body")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    kind: str
    id: str
    body: bytes
    def __init__(self, kind: _Optional[str] = ..., id: _Optional[str] = ..., body: _Optional[bytes] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("version", "hash", "resources")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    version: int
    hash: str
    resources: _containers.RepeatedCompositeFieldContainer[Resource]
    def __init__(self, version: _Optional[int] = ..., hash: _Optional[str] = ..., resources: _Optional[_Iterable[_Union[Resource, _Mapping]]] = ...) -> None: ...

class Delta(_message.Message):
    __slots__ = ("from_version", "from_hash", "version", "hash", "upserts", "removals")
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    FROM_HASH_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    UPSERTS_FIELD_NUMBER: _ClassVar[int]
    REMOVALS_FIELD_NUMBER: _ClassVar[int]
    from_version: int
    from_hash: str
    version: int
    hash: str
    upserts: _containers.RepeatedCompositeFieldContainer[Resource]
    removals: _containers.RepeatedCompositeFieldContainer[ResourceKey]
    def __init__(self, from_version: _Optional[int] = ..., from_hash: _Optional[str] = ..., version: _Optional[int] = ..., hash: _Optional[str] = ..., upserts: _Optional[_Iterable[_Union[Resource, _Mapping]]] = ..., removals: _Optional[_Iterable[_Union[ResourceKey, _Mapping]]] = ...) -> None: ...

class ResourceKey(_message.Message):
    __slots__ = ("kind", "id")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    kind: str
    id: str
    def __init__(self, kind: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class Pong(_message.Message):
    __slots__ = ("config_version",)
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    config_version: int
    def __init__(self, config_version: _Optional[int] = ...) -> None: ...

class HealthOverride(_message.Message):
    __slots__ = ("upstream_id", "target", "address", "healthy", "time")
    UPSTREAM_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    upstream_id: str
    target: str
    address: str
    healthy: bool
    time: float
    def __init__(self, upstream_id: _Optional[str] = ..., target: _Optional[str] = ..., address: _Optional[str] = ..., healthy: _Optional[bool] = ..., time: _Optional[float] = ...) -> None: ...

class ProbeAssignment(_message.Message):
    __slots__ = ("sharded", "targets", "replicas")
    SHARDED_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    sharded: bool
    targets: _containers.RepeatedScalarFieldContainer[str]
    replicas: int
    def __init__(self, sharded: _Optional[bool] = ..., targets: _Optional[_Iterable[str]] = ..., replicas: _Optional[int] = ...) -> None: ...

class HealthVerdicts(_message.Message):
    __slots__ = ("addresses",)
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    addresses: _containers.RepeatedCompositeFieldContainer[AddressHealth]
    def __init__(self, addresses: _Optional[_Iterable[_Union[AddressHealth, _Mapping]]] = ...) -> None: ...

class ControlPlaneMessage(_message.Message):
    __slots__ = ("snapshot", "pong", "health_override", "probe_assignment", "health_verdicts", "delta", "ping")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    HEALTH_OVERRIDE_FIELD_NUMBER: _ClassVar[int]
    PROBE_ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    HEALTH_VERDICTS_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    snapshot: Snapshot
    pong: Pong
    health_override: HealthOverride
    probe_assignment: ProbeAssignment
    health_verdicts: HealthVerdicts
    delta: Delta
    ping: Ping
    def __init__(self, snapshot: _Optional[_Union[Snapshot, _Mapping]] = ..., pong: _Optional[_Union[Pong, _Mapping]] = ..., health_override: _Optional[_Union[HealthOverride, _Mapping]] = ..., probe_assignment: _Optional[_Union[ProbeAssignment, _Mapping]] = ..., health_verdicts: _Optional[_Union[HealthVerdicts, _Mapping]] = ..., delta: _Optional[_Union[Delta, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ...) -> None: ...
