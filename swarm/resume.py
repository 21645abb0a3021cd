"""A run's checkpoints on disk: one directory per checkpointed tick, and a marker naming the
last complete one.

    runs/<id>/checkpoints/
        tick-0000100/shard-0.npz ... shard-<n-1>.npz, world.npz   (swarm/checkpoint.py files)
        latest.json        {"ticks": 100, "round": 20, "rows": 5, "dir": "tick-0000100"}

Shards and the world write their own files (on a cluster of several machines the run
directory must be on a filesystem they all share, at the same path). The driver writes
latest.json, atomically, only once every file of that tick is written and the metrics rows up
to it are in metrics.jsonl: a run interrupted at any moment resumes from the last tick whose
checkpoint is whole. Older tick directories are pruned, keeping KEEP.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TypedDict

#: Complete checkpoints kept on disk (the newest ones).
KEEP = 2


def tick_dir(root: Path | str, ticks: int) -> Path:
    return Path(root) / f"tick-{ticks:07d}"


class Marker(TypedDict):
    """latest.json: which checkpoint is the last complete one."""

    ticks: int  # ticks completed at the checkpoint
    round: int  # the next gossip round
    rows: int  # metrics rows written up to it
    dir: str  # its directory under checkpoints/
    bytes: int  # what its shards wrote


def read_latest(root: Path | str) -> Marker | None:
    """The last complete checkpoint's marker, or None if there is none."""
    path = Path(root) / "latest.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable checkpoint marker ({exc})") from None
    fields = ("ticks", "round", "rows", "bytes")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), int) for k in fields):
        raise ValueError(f"{path}: not a checkpoint marker")
    return Marker(
        ticks=int(data["ticks"]),
        round=int(data["round"]),
        rows=int(data["rows"]),
        dir=str(data["dir"]),
        bytes=int(data["bytes"]),
    )


def commit(root: Path | str, marker: Marker) -> None:
    """Make `marker` (its tick's files all written) the latest checkpoint; prune old ones."""
    root = Path(root)
    tmp = root / "latest.json.tmp"
    with open(tmp, "w") as fh:
        json.dump(marker, fh, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, root / "latest.json")
    # newer directories may be being written; of the older ones keep the newest KEEP - 1
    older = sorted(p for p in root.glob("tick-*") if p.is_dir() and p.name < marker["dir"])
    for old in older[: max(0, len(older) - (KEEP - 1))]:
        shutil.rmtree(old, ignore_errors=True)
