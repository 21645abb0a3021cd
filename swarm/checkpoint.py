"""Durable checkpoints: numpy arrays plus JSON metadata in one file, written atomically.

A checkpoint is an uncompressed .npz (a zip of .npy arrays) with one extra member, `__meta__`,
holding UTF-8 JSON. It is read with `allow_pickle=False`, so loading one can never run code:
object arrays are refused by numpy, and the metadata is JSON, not a pickle.

Writing is crash-safe: the file is written beside the target, flushed and fsync-ed, then
`os.replace`d over it and the directory fsync-ed, so a reader (or a node restarting after
`kill -9` or a power cut) sees either the previous checkpoint or the new one, whole. The
metadata carries a format version and a SHA-256 of the arrays' bytes, checked on load: a file
damaged on disk is refused with a clear error rather than resumed from.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from swarm.records import JSON, Document

FORMAT = "yan-swarm-checkpoint/1"
_META = "__meta__"


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used; the message says which file and why."""


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save(path: Path | str, arrays: dict[str, np.ndarray], meta: Mapping[str, object]) -> int:
    """Write `arrays` and `meta` to `path` atomically; returns the file size.

    `meta` must be JSON-able (json.dumps raises TypeError otherwise); its values are typed
    `object` because the learners describe their own scalars that way
    (agents.learner.learner_state)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for key, a in arrays.items():
        if key == _META or np.asarray(a).dtype == object:
            raise ValueError(f"checkpoint array {key!r} is an object array or a reserved name")
    full = {"format": FORMAT, "sha256": _digest(arrays), **meta}
    payload = dict(arrays)
    payload[_META] = np.frombuffer(json.dumps(full).encode(), np.uint8)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **payload)  # type: ignore[arg-type]
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path.stat().st_size


def load(path: Path | str) -> tuple[dict[str, np.ndarray], Document]:
    """Read a checkpoint written by `save`; raises CheckpointError (FileNotFoundError if absent).

    The metadata is a JSON object: narrow its values where they are read
    (swarm.records.as_int, as_doc)."""
    path = Path(path)
    data = path.read_bytes()
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint: {exc}") from None
    raw = arrays.pop(_META, None)
    if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8:
        raise CheckpointError(f"{path} has no metadata: not a yan-swarm checkpoint")
    try:
        meta: JSON = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: metadata is not JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: metadata is not a JSON object")
    if any(not isinstance(a, np.ndarray) for a in arrays.values()):
        raise CheckpointError(f"{path}: a member is not a numpy array")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("sha256") != _digest(arrays):
        raise CheckpointError(f"{path}: the arrays do not match their checksum (damaged file)")
    return arrays, meta
