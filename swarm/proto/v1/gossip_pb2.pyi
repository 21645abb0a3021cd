from swarm.proto.v1 import delta_pb2 as _delta_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PushReply(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    def __init__(self, accepted: _Optional[int] = ...) -> None: ...

class MemberUpdate(_message.Message):
    __slots__ = ("node", "address", "state", "incarnation")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ALIVE: _ClassVar[MemberUpdate.State]
        SUSPECT: _ClassVar[MemberUpdate.State]
        DEAD: _ClassVar[MemberUpdate.State]
    ALIVE: MemberUpdate.State
    SUSPECT: MemberUpdate.State
    DEAD: MemberUpdate.State
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    node: str
    address: str
    state: MemberUpdate.State
    incarnation: int
    def __init__(self, node: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[_Union[MemberUpdate.State, str]] = ..., incarnation: _Optional[int] = ...) -> None: ...

class PingRequest(_message.Message):
    __slots__ = ("sender_node", "incarnation", "updates", "signature")
    SENDER_NODE_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    sender_node: str
    incarnation: int
    updates: _containers.RepeatedCompositeFieldContainer[MemberUpdate]
    signature: bytes
    def __init__(self, sender_node: _Optional[str] = ..., incarnation: _Optional[int] = ..., updates: _Optional[_Iterable[_Union[MemberUpdate, _Mapping]]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class PingReply(_message.Message):
    __slots__ = ("node", "incarnation", "updates", "signature")
    NODE_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    node: str
    incarnation: int
    updates: _containers.RepeatedCompositeFieldContainer[MemberUpdate]
    signature: bytes
    def __init__(self, node: _Optional[str] = ..., incarnation: _Optional[int] = ..., updates: _Optional[_Iterable[_Union[MemberUpdate, _Mapping]]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class PingReqRequest(_message.Message):
    __slots__ = ("sender_node", "target_node", "target_address", "updates", "signature")
    SENDER_NODE_FIELD_NUMBER: _ClassVar[int]
    TARGET_NODE_FIELD_NUMBER: _ClassVar[int]
    TARGET_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    sender_node: str
    target_node: str
    target_address: str
    updates: _containers.RepeatedCompositeFieldContainer[MemberUpdate]
    signature: bytes
    def __init__(self, sender_node: _Optional[str] = ..., target_node: _Optional[str] = ..., target_address: _Optional[str] = ..., updates: _Optional[_Iterable[_Union[MemberUpdate, _Mapping]]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class PingReqReply(_message.Message):
    __slots__ = ("reachable", "updates", "signature")
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    reachable: bool
    updates: _containers.RepeatedCompositeFieldContainer[MemberUpdate]
    signature: bytes
    def __init__(self, reachable: _Optional[bool] = ..., updates: _Optional[_Iterable[_Union[MemberUpdate, _Mapping]]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class Introduction(_message.Message):
    __slots__ = ("node", "address", "agents", "unix_ms", "membership", "signature")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    node: str
    address: str
    agents: _containers.RepeatedScalarFieldContainer[int]
    unix_ms: int
    membership: bool
    signature: bytes
    def __init__(self, node: _Optional[str] = ..., address: _Optional[str] = ..., agents: _Optional[_Iterable[int]] = ..., unix_ms: _Optional[int] = ..., membership: _Optional[bool] = ..., signature: _Optional[bytes] = ...) -> None: ...
