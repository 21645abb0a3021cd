"""Compressors for knowledge deltas (pure numpy).

A compressor maps a float32 vector to a `Compressed` payload and back. Gossip uses them inside
CHOCO-Gossip (Koloskova et al. 2019), whose public copies make any of these contractive
compressors converge; the coordinator path adds explicit error feedback.

- none:      dense float32.
- topk:      the k = ceil(ratio * P) largest |entries| (omega = k / P), float32 values.
- int8:      every entry, symmetric int8 with one scale = max|x| / 127 (rounded to nearest).
- topk_int8: top-k, then int8 on the kept values.

A coordinator's robust rules (median, trimmed mean, Krum) compare the agents' values
coordinate by coordinate, so every agent must send the same coordinates: with each agent's own
top-k, a coordinate is zero in almost every row and its median is zero, and the global model
never moves. For those rules the sparse kinds keep their ratio and encoding but take the
round's `shared_indices` (a random subset every agent draws from the round number, rand-k)
instead of each agent's top-k; error feedback carries what was not sent to later rounds, as it
does for top-k (Stich et al. 2018, sparsified SGD with memory).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from protocols.config import CompressionConfig

DENSE_F32, SPARSE_F32, DENSE_INT8, SPARSE_INT8 = 1, 2, 3, 4  # == swarm.v1.Encoding values


@dataclass(frozen=True)
class Compressed:
    """A compressed vector of length `num_params`; `indices` is None for dense encodings."""

    encoding: int
    num_params: int
    values: np.ndarray  # float32 or int8
    indices: np.ndarray | None = None  # uint32, strictly increasing
    scale: float = 1.0

    def decode(self) -> np.ndarray:
        """The dense float32 vector this payload stands for."""
        vals = self.values.astype(np.float32)
        if self.encoding in (DENSE_INT8, SPARSE_INT8):
            vals *= np.float32(self.scale)
        if self.indices is None:
            return vals
        out = np.zeros(self.num_params, dtype=np.float32)
        out[self.indices] = vals
        return out

    def peak(self) -> float:
        """max |decode()|, without building the dense vector (0 for no values): the int8
        encodings scale by a positive factor, which keeps the order of magnitudes."""
        if self.values.size == 0:
            return 0.0
        top = np.float32(np.max(np.abs(self.values.astype(np.float32))))
        if self.encoding in (DENSE_INT8, SPARSE_INT8):
            top *= np.float32(self.scale)
        return float(abs(top))

    @property
    def nbytes(self) -> int:
        """Payload bytes on the wire (values + indices)."""
        return int(self.values.nbytes + (0 if self.indices is None else self.indices.nbytes))


def _int8(values: np.ndarray) -> tuple[np.ndarray, float]:
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    scale = peak / 127.0 if peak > 0 else 1.0
    q = np.clip(np.rint(values / scale), -127, 127).astype(np.int8)
    return q, scale


def _topk(vec: np.ndarray, ratio: float) -> np.ndarray:
    k = max(1, math.ceil(ratio * vec.size))
    if k >= vec.size:
        return np.arange(vec.size, dtype=np.uint32)
    # argpartition is O(P); sorting the k winners gives the increasing indices the wire needs.
    # Ties are broken by index (stable order) so a seeded run is reproducible.
    idx = np.argpartition(-np.abs(vec), k - 1, kind="introselect")[:k]
    return np.sort(idx).astype(np.uint32)


def shared_indices(num_params: int, ratio: float, round_: int) -> np.ndarray:
    """The k = ceil(ratio * P) coordinates every agent sends in round `round_` under a robust
    rule: a uniform random subset drawn from the round number alone, increasing (uint32)."""
    k = max(1, math.ceil(ratio * num_params))
    if k >= num_params:
        return np.arange(num_params, dtype=np.uint32)
    rng = np.random.default_rng([0x5EED, round_])
    return np.sort(rng.choice(num_params, size=k, replace=False)).astype(np.uint32)


def compress(
    vec: np.ndarray, cfg: CompressionConfig, indices: np.ndarray | None = None
) -> Compressed:
    """Compress a float32 vector as `cfg` says; a sparse kind sends `indices` when given (the
    round's `shared_indices`) instead of its own top-k."""
    vec = np.ascontiguousarray(vec, dtype=np.float32)
    n = vec.size
    if cfg.kind == "none":
        return Compressed(DENSE_F32, n, vec.copy())
    if cfg.kind == "int8":
        q, scale = _int8(vec)
        return Compressed(DENSE_INT8, n, q, scale=scale)
    idx = _topk(vec, cfg.ratio) if indices is None else indices
    if cfg.kind == "topk":
        return Compressed(SPARSE_F32, n, vec[idx].copy(), idx)
    q, scale = _int8(vec[idx])
    return Compressed(SPARSE_INT8, n, q, idx, scale)


# ---------------------------------------------------------------------------------------------
# Sparse index encoding: gaps between successive indices as LEB128 varints. At top-k ratio r
# the mean gap is 1/r, so at r = 0.1 almost every index costs one byte instead of four.

_VARINT_MAX_BYTES = 5  # a uint32 needs at most ceil(32 / 7) = 5 bytes


def encode_index_varint(indices: np.ndarray) -> bytes:
    """Strictly increasing uint32 indices -> gaps (first from -1, so every gap >= 1) as
    little-endian base-128 varints (LEB128), vectorized."""
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size == 0:
        return b""
    gaps = np.diff(idx, prepend=-1)  # (n,) >= 1
    top = int(gaps.max())
    if top < 0x80:  # every gap fits in one byte: the usual case at top-k ratios above ~1%
        return gaps.astype(np.uint8).tobytes()
    width = (top.bit_length() + 6) // 7  # bytes of the longest varint, <= _VARINT_MAX_BYTES
    rest = gaps >> (7 * np.arange(width, dtype=np.int64))[:, None]  # (w, n) gap >> 7k
    data = (rest & 0x7F).astype(np.uint8)  # (w, n) 7-bit groups, least significant first
    data[:-1] |= (rest[1:] > 0).astype(np.uint8) << 7  # continuation bit: more groups follow
    used = np.ones_like(data, dtype=bool)  # (w, n) group k is written when gap >> 7k > 0
    used[1:] = rest[1:] > 0
    return data.T[used.T].tobytes()  # varint by varint, each least significant group first


def decode_index_varint(data: bytes, num_params: int) -> np.ndarray:
    """Inverse of encode_index_varint, with every check a hostile message needs; raises
    ValueError (the caller maps it to a rejection) on truncation, overlong varints or indices
    outside [0, num_params)."""
    b = np.frombuffer(data, dtype=np.uint8)
    if b.size == 0:
        return np.zeros(0, dtype=np.uint32)
    terminal = (b & 0x80) == 0
    if not terminal[-1]:
        raise ValueError("the last index varint is truncated")
    ends = np.flatnonzero(terminal)  # (n,) last byte of each varint
    starts = np.concatenate([[0], ends[:-1] + 1])
    if int((ends - starts).max()) >= _VARINT_MAX_BYTES:
        raise ValueError("an index varint is longer than 5 bytes")
    if ends.size == b.size:  # every varint one byte (the usual case): the bytes are the gaps
        gaps = b.astype(np.int64)
    else:
        group = np.repeat(np.arange(ends.size), ends - starts + 1)  # (len,) varint of each byte
        shift = 7 * (np.arange(b.size) - starts[group])
        # each varint's bytes are contiguous: one reduceat sums its groups
        gaps = np.add.reduceat((b & 0x7F).astype(np.int64) << shift, starts)
    if (gaps < 1).any():
        raise ValueError("index gaps must be >= 1 (indices strictly increasing)")
    indices = np.cumsum(gaps) - 1
    if int(indices[-1]) >= num_params:
        raise ValueError(f"an index is out of range (>= {num_params})")
    return indices.astype(np.uint32)
