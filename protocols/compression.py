"""Compressors for knowledge deltas (pure numpy).

A compressor maps a float32 vector to a `Compressed` payload and back. Gossip uses them inside
CHOCO-Gossip (Koloskova et al. 2019), whose public copies make any of these contractive
compressors converge; the coordinator path adds explicit error feedback.

- none:      dense float32.
- topk:      the k = ceil(ratio * P) largest |entries| (omega = k / P), float32 values.
- int8:      every entry, symmetric int8 with one scale = max|x| / 127 (rounded to nearest).
- topk_int8: top-k, then int8 on the kept values.
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


def compress(vec: np.ndarray, cfg: CompressionConfig) -> Compressed:
    """Compress a float32 vector as `cfg` says."""
    vec = np.ascontiguousarray(vec, dtype=np.float32)
    n = vec.size
    if cfg.kind == "none":
        return Compressed(DENSE_F32, n, vec.copy())
    if cfg.kind == "int8":
        q, scale = _int8(vec)
        return Compressed(DENSE_INT8, n, q, scale=scale)
    idx = _topk(vec, cfg.ratio)
    if cfg.kind == "topk":
        return Compressed(SPARSE_F32, n, vec[idx].copy(), idx)
    q, scale = _int8(vec[idx])
    return Compressed(SPARSE_INT8, n, q, idx, scale)
