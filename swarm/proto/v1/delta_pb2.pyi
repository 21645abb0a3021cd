from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENCODING_UNSPECIFIED: _ClassVar[Encoding]
    ENCODING_DENSE_F32: _ClassVar[Encoding]
    ENCODING_SPARSE_F32: _ClassVar[Encoding]
    ENCODING_DENSE_INT8: _ClassVar[Encoding]
    ENCODING_SPARSE_INT8: _ClassVar[Encoding]

class IndexEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INDEX_ENCODING_U32: _ClassVar[IndexEncoding]
    INDEX_ENCODING_DELTA_VARINT: _ClassVar[IndexEncoding]
ENCODING_UNSPECIFIED: Encoding
ENCODING_DENSE_F32: Encoding
ENCODING_SPARSE_F32: Encoding
ENCODING_DENSE_INT8: Encoding
ENCODING_SPARSE_INT8: Encoding
INDEX_ENCODING_U32: IndexEncoding
INDEX_ENCODING_DELTA_VARINT: IndexEncoding

class KnowledgeDelta(_message.Message):
    __slots__ = ("sender", "round", "base_version", "num_params", "layout", "encoding", "indices", "values", "scale", "norm", "examples", "signature", "chunk_index", "chunk_count", "param_offset", "push_weight", "shapes", "index_encoding", "epoch", "snapshot")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_PARAMS_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    NORM_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    PARAM_OFFSET_FIELD_NUMBER: _ClassVar[int]
    PUSH_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    SHAPES_FIELD_NUMBER: _ClassVar[int]
    INDEX_ENCODING_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    sender: str
    round: int
    base_version: int
    num_params: int
    layout: str
    encoding: Encoding
    indices: bytes
    values: bytes
    scale: float
    norm: float
    examples: int
    signature: bytes
    chunk_index: int
    chunk_count: int
    param_offset: int
    push_weight: float
    shapes: _containers.RepeatedCompositeFieldContainer[ParamShape]
    index_encoding: IndexEncoding
    epoch: int
    snapshot: bool
    def __init__(self, sender: _Optional[str] = ..., round: _Optional[int] = ..., base_version: _Optional[int] = ..., num_params: _Optional[int] = ..., layout: _Optional[str] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., indices: _Optional[bytes] = ..., values: _Optional[bytes] = ..., scale: _Optional[float] = ..., norm: _Optional[float] = ..., examples: _Optional[int] = ..., signature: _Optional[bytes] = ..., chunk_index: _Optional[int] = ..., chunk_count: _Optional[int] = ..., param_offset: _Optional[int] = ..., push_weight: _Optional[float] = ..., shapes: _Optional[_Iterable[_Union[ParamShape, _Mapping]]] = ..., index_encoding: _Optional[_Union[IndexEncoding, str]] = ..., epoch: _Optional[int] = ..., snapshot: _Optional[bool] = ...) -> None: ...

class ParamShape(_message.Message):
    __slots__ = ("name", "dims")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    dims: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dims: _Optional[_Iterable[int]] = ...) -> None: ...

class DeltaBatch(_message.Message):
    __slots__ = ("sender_node", "round", "deltas", "sightings")
    SENDER_NODE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    DELTAS_FIELD_NUMBER: _ClassVar[int]
    SIGHTINGS_FIELD_NUMBER: _ClassVar[int]
    sender_node: str
    round: int
    deltas: _containers.RepeatedCompositeFieldContainer[KnowledgeDelta]
    sightings: _containers.RepeatedCompositeFieldContainer[Sighting]
    def __init__(self, sender_node: _Optional[str] = ..., round: _Optional[int] = ..., deltas: _Optional[_Iterable[_Union[KnowledgeDelta, _Mapping]]] = ..., sightings: _Optional[_Iterable[_Union[Sighting, _Mapping]]] = ...) -> None: ...

class Sighting(_message.Message):
    __slots__ = ("sender", "origin", "tick", "cls", "hops", "rows", "cols", "values", "signature", "scale", "via")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    TICK_FIELD_NUMBER: _ClassVar[int]
    CLS_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    VIA_FIELD_NUMBER: _ClassVar[int]
    sender: str
    origin: str
    tick: int
    cls: int
    hops: int
    rows: int
    cols: int
    values: bytes
    signature: bytes
    scale: float
    via: str
    def __init__(self, sender: _Optional[str] = ..., origin: _Optional[str] = ..., tick: _Optional[int] = ..., cls: _Optional[int] = ..., hops: _Optional[int] = ..., rows: _Optional[int] = ..., cols: _Optional[int] = ..., values: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., scale: _Optional[float] = ..., via: _Optional[str] = ...) -> None: ...
