"""Durable checkpoints: numpy arrays plus JSON metadata in one file, written atomically.

A checkpoint is an uncompressed .npz (a zip of .npy arrays) with one extra member, `__meta__`,
holding UTF-8 JSON. It is read with `allow_pickle=False`, so loading one can never run code:
object arrays are refused by numpy, and the metadata is JSON, not a pickle.

Writing is crash-safe: the file is written beside the target, flushed and fsync-ed, then
`os.replace`d over it and the directory fsync-ed, so a reader (or a node restarting after
`kill -9` or a power cut) sees either the previous checkpoint or the new one, whole. The
metadata carries a format version and a SHA-256 of the arrays' bytes and of the rest of the
metadata, checked on load: a file damaged on disk is refused with a clear error rather than
resumed from (format /1 files, whose checksum covers the arrays only, still load).

Loading trusts nothing before the checksum (issue 18): the path must be a regular file of at
most `max_bytes`; every member must be stored uncompressed (as `save` writes them: a deflate
bomb is never inflated) and its .npy header must declare exactly the bytes the member holds
(a header claiming (1, 2^36) is refused before anything is allocated); and the arrays whose
names start with a prefix the caller gives in `finite` (the weights) must be finite: a
checkpoint of NaN weights would resume at chance without a word. Other arrays may hold NaN on
purpose (a loss not yet known).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import zipfile
from collections.abc import Collection, Mapping
from pathlib import Path

import numpy as np

from swarm.records import JSON, Document

FORMAT = "yan-swarm-checkpoint/2"
#: Older files: the checksum covers the arrays only.
FORMAT_V1 = "yan-swarm-checkpoint/1"
_META = "__meta__"
#: Largest checkpoint `load` reads by default (a 1,000-agent shard's is a few hundred MB).
MAX_BYTES = 16 * 2**30


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used; the message says which file and why."""


def _digest(arrays: dict[str, np.ndarray], meta: Mapping[str, object] | None = None) -> str:
    """SHA-256 of the arrays (name, dtype, shape, bytes) and, from format /2 on, of the
    metadata other than the checksum itself (canonical JSON)."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    if meta is not None:
        rest = {k: v for k, v in meta.items() if k != "sha256"}
        h.update(json.dumps(rest, sort_keys=True).encode())
    return h.hexdigest()


def temp_path(path: Path) -> Path:
    """Where `save` writes before it replaces `path` (a crash can leave it behind: a node
    removes it at start)."""
    return path.with_name(f".{path.name}.tmp")


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
    full: dict[str, object] = {"format": FORMAT, **meta}
    full["sha256"] = _digest(arrays, full)
    payload = dict(arrays)
    payload[_META] = np.frombuffer(json.dumps(full).encode(), np.uint8)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **payload)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, most often: the previous checkpoint stays whole
        tmp.unlink(missing_ok=True)
        raise CheckpointError(
            f"cannot write the checkpoint {path}: {exc.strerror or exc}; the previous one, if "
            "any, is kept"
        ) from None
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path.stat().st_size


def _check_members(data: bytes) -> None:
    """Refuse (ValueError) a compressed member, or a .npy header whose shape and dtype do not
    account for exactly the member's bytes: before numpy allocates or inflates anything."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"member {info.filename!r} is compressed (save never does)")
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"member {info.filename!r}: .npy version {version}")
                header = f.tell()
            want = math.prod(shape) * dtype.itemsize
            if dtype.hasobject or header + want != info.file_size:
                raise ValueError(
                    f"member {info.filename!r} declares {shape} {dtype} ({want:,} bytes) but "
                    f"holds {info.file_size - header:,}"
                )


def load(
    path: Path | str, max_bytes: int = MAX_BYTES, finite: Collection[str] = ()
) -> tuple[dict[str, np.ndarray], Document]:
    """Read a checkpoint written by `save`; raises CheckpointError (FileNotFoundError if absent).

    The metadata is a JSON object: narrow its values where they are read
    (swarm.records.as_int, as_doc)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    if not path.is_file():  # follows links: a link to /dev/zero is not a regular file
        raise CheckpointError(f"{path} is not a regular file")
    size = path.stat().st_size
    if size > max_bytes:
        raise CheckpointError(f"{path} is {size:,} bytes, more than {max_bytes:,}")
    data = path.read_bytes()
    try:
        _check_members(data)
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, SyntaxError, OSError, zipfile.BadZipFile, EOFError) as exc:
        # SyntaxError: numpy parses a .npy header as a Python literal
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
    if meta.get("format") not in (FORMAT, FORMAT_V1):
        raise CheckpointError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    covered = meta if meta.get("format") == FORMAT else None
    if meta.get("sha256") != _digest(arrays, covered):
        raise CheckpointError(
            f"{path}: the arrays or the metadata do not match their checksum (damaged file)"
        )
    for key, a in arrays.items():
        checked = any(key.startswith(prefix) for prefix in finite)
        if checked and a.dtype.kind in "fc" and not np.isfinite(a).all():
            raise CheckpointError(f"{path}: array {key!r} holds NaN or infinity")
    return arrays, meta
