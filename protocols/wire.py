"""Serialization of deltas: `to_proto` / `from_proto` pairs, signatures, and all input checks.

This is the only module that turns network bytes into arrays. It never unpickles: values are
raw little-endian bytes decoded with `numpy.frombuffer` after every length, range and finiteness
check. Signatures are HMAC-SHA256 over the deterministic serialization with the signature field
empty, keyed by the swarm's shared secret.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from typing import Any

import numpy as np

from protocols.compression import (
    DENSE_F32,
    DENSE_INT8,
    SPARSE_F32,
    SPARSE_INT8,
    Compressed,
    decode_index_varint,
    encode_index_varint,
)
from protocols.delta import Delta, DeltaRejected, Rejection
from swarm.proto.v1 import delta_pb2

_VALUE_DTYPE: dict[int, np.dtype[Any]] = {
    DENSE_F32: np.dtype("<f4"),
    SPARSE_F32: np.dtype("<f4"),
    DENSE_INT8: np.dtype("i1"),
    SPARSE_INT8: np.dtype("i1"),
}
_INDEX_DTYPE = np.dtype("<u4")
#: Relative tolerance of the norm check: the sender computes it in float32.
_NORM_RTOL = 1e-3


def sign(msg: delta_pb2.KnowledgeDelta, key: bytes) -> None:
    """Fill `msg.signature` with HMAC-SHA256(key, msg without signature)."""
    msg.signature = b""
    msg.signature = hmac.new(
        key, msg.SerializeToString(deterministic=True), hashlib.sha256
    ).digest()


def _signature_ok(msg: delta_pb2.KnowledgeDelta, key: bytes) -> bool:
    unsigned = delta_pb2.KnowledgeDelta()
    unsigned.CopyFrom(msg)
    unsigned.signature = b""
    want = hmac.new(key, unsigned.SerializeToString(deterministic=True), hashlib.sha256).digest()
    return hmac.compare_digest(want, msg.signature)


def to_proto(delta: Delta, key: bytes) -> delta_pb2.KnowledgeDelta:
    """A signed wire message for `delta`."""
    payload = delta.payload
    msg = delta_pb2.KnowledgeDelta(
        sender=delta.sender,
        round=delta.round,
        base_version=delta.base_version,
        num_params=payload.num_params,
        layout=delta.layout,
        encoding=delta_pb2.Encoding.Name(payload.encoding),
        values=payload.values.astype(_VALUE_DTYPE[payload.encoding], copy=False).tobytes(),
        scale=payload.scale,
        norm=delta.norm,
        examples=delta.examples,
    )
    if payload.indices is not None:
        msg.indices = encode_index_varint(payload.indices)
        msg.index_encoding = delta_pb2.INDEX_ENCODING_DELTA_VARINT
    sign(msg, key)
    return msg


def _indices(msg: delta_pb2.KnowledgeDelta, n_values: int, num_params: int) -> np.ndarray:
    """The sparse indices of `msg`, checked: as many as values, strictly increasing, in range."""
    if n_values > num_params:
        raise DeltaRejected(Rejection.WRONG_SHAPE, "more values than parameters")
    if msg.index_encoding == delta_pb2.INDEX_ENCODING_DELTA_VARINT:
        try:
            indices = decode_index_varint(msg.indices, num_params)
        except ValueError as exc:
            raise DeltaRejected(Rejection.MALFORMED, f"indices: {exc}") from None
    elif msg.index_encoding == delta_pb2.INDEX_ENCODING_U32:
        if len(msg.indices) != n_values * _INDEX_DTYPE.itemsize:
            raise DeltaRejected(Rejection.MALFORMED, "indices and values differ in length")
        indices = np.frombuffer(msg.indices, dtype=_INDEX_DTYPE)
        if indices.size and int(indices[-1]) >= num_params:
            raise DeltaRejected(Rejection.WRONG_SHAPE, "an index is out of range")
        if indices.size > 1 and not np.all(indices[1:] > indices[:-1]):
            raise DeltaRejected(Rejection.MALFORMED, "indices are not strictly increasing")
    else:
        raise DeltaRejected(Rejection.MALFORMED, f"unknown index encoding {msg.index_encoding}")
    if indices.size != n_values:
        raise DeltaRejected(Rejection.MALFORMED, "indices and values differ in length")
    return indices


def from_proto(msg: delta_pb2.KnowledgeDelta, *, key: bytes, num_params: int, layout: str) -> Delta:
    """Check a received message completely and decode it; raises DeltaRejected.

    Checks, in order: signature (nothing else is trusted before it), layout and length,
    encoding and byte lengths, index range and order, finiteness, and the declared norm.
    """
    if not msg.signature or not _signature_ok(msg, key):
        raise DeltaRejected(Rejection.BAD_SIGNATURE, f"signature of {msg.sender!r} does not verify")
    if msg.layout != layout or msg.num_params != num_params:
        raise DeltaRejected(
            Rejection.WRONG_SHAPE,
            f"delta for layout {msg.layout!r} with {msg.num_params} params; "
            f"this swarm uses {layout!r} with {num_params}",
        )
    encoding = int(msg.encoding)
    if encoding not in _VALUE_DTYPE:
        raise DeltaRejected(Rejection.MALFORMED, f"unknown encoding {encoding}")
    dtype = _VALUE_DTYPE[encoding]
    if len(msg.values) % dtype.itemsize:
        raise DeltaRejected(Rejection.MALFORMED, "values are not a whole number of elements")
    values = np.frombuffer(msg.values, dtype=dtype)
    indices = None
    if encoding in (SPARSE_F32, SPARSE_INT8):
        indices = _indices(msg, values.size, num_params)
    elif msg.indices or values.size != num_params:
        raise DeltaRejected(
            Rejection.WRONG_SHAPE, f"dense delta has {values.size} values, expected {num_params}"
        )
    scale = float(msg.scale)
    if not math.isfinite(scale) or not math.isfinite(float(msg.norm)):
        raise DeltaRejected(Rejection.NON_FINITE, "scale or norm is not finite")
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        raise DeltaRejected(Rejection.NON_FINITE, "values contain NaN or infinity")
    payload = Compressed(encoding, num_params, values, indices, scale)
    norm = float(np.linalg.norm(payload.decode().astype(np.float64)))
    if not math.isfinite(norm):
        raise DeltaRejected(Rejection.NON_FINITE, "decoded delta is not finite")
    if not math.isclose(norm, float(msg.norm), rel_tol=_NORM_RTOL, abs_tol=1e-6):
        raise DeltaRejected(
            Rejection.MALFORMED, f"declared norm {msg.norm:.6g} but the values have {norm:.6g}"
        )
    return Delta(
        sender=msg.sender,
        round=int(msg.round),
        base_version=int(msg.base_version),
        layout=msg.layout,
        payload=payload,
        norm=norm,
        examples=int(msg.examples),
    )
