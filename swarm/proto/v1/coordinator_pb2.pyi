from swarm.proto.v1 import delta_pb2 as _delta_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubmitReply(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    def __init__(self, accepted: _Optional[int] = ...) -> None: ...

class AggregateRequest(_message.Message):
    __slots__ = ("node", "round", "signature")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    node: str
    round: int
    signature: bytes
    def __init__(self, node: _Optional[str] = ..., round: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class AggregateReply(_message.Message):
    __slots__ = ("round", "aggregate", "contributors", "snapshot")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTORS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    round: int
    aggregate: _delta_pb2.KnowledgeDelta
    contributors: int
    snapshot: bool
    def __init__(self, round: _Optional[int] = ..., aggregate: _Optional[_Union[_delta_pb2.KnowledgeDelta, _Mapping]] = ..., contributors: _Optional[int] = ..., snapshot: _Optional[bool] = ...) -> None: ...
