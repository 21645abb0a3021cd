"""What a node's checkpoint must hold before any of it is used (issue 18).

`swarm.checkpoint.load` proves a file is whole (its checksum) and holds only numbers and JSON; it
cannot tell whether the values make sense. A tool that writes its own checkpoint computes a right
checksum over `step: -5`, a missing `gossip`, a `learner` that is a string, an epoch of 2^70 (an
int64 overflow later) or a weight matrix of another shape. A node (swarm/node.py) checks here,
before it builds or restores anything from the file, and refuses with one line naming the file and
the key (CheckpointError):

- `check_node_meta`: every metadata value a node reads (what `Node.save_checkpoint` writes);
- `check_node_arrays`: every array it restores is there with this model's shape and dtype, its
  gossip counters are within 0..MAX_COUNT and its pending deltas come from its neighbours;
- `check_rng`: a learner's random-generator state, against the generator it is restored into.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import NoReturn

import numpy as np

from swarm.checkpoint import CheckpointError
from swarm.records import JSON, Document

#: Largest step, round, epoch, sensor position or counter a checkpoint may hold: int64 (numpy
#: arrays, the wire's fields) with room for what is added to it later (a node's epoch plus its
#: SWIM incarnations, swarm.node.INCARNATION_ROOM = 2^20; a version plus the deltas of a run).
MAX_COUNT = 2**62
#: Widest integer of a random generator's state (PCG64's state and increment are 128 bits).
MAX_RNG_WORD = 2**128
#: Arrays a node's checkpoint may lack: older learners did not save them (agents/learner.py,
#: load_learner_state falls back for each).
OLDER = ("learner.taught", "learner.grad_mask", "shadow.taught", "shadow.grad_mask")
#: Arrays whose first dimension is the number of deltas accepted but not yet applied: any
#: number, the same in each of them (protocols/gossip.py, ChocoGossip.state).
PENDING = "gossip.pending_"
#: Arrays that must be exactly this model's, no other name beside them: a torch state dict
#: refuses any other key, and the gossip state's arrays are read by prefix.
EXACT = ("learner.pop.", "shadow.pop.", "gossip.")


def _fail(path: Path, key: str, problem: str) -> NoReturn:
    raise CheckpointError(f"{path}: {key}: {problem}")


def _shown(value: object) -> str:
    """A value read from the file, as one short line (repr escapes newlines)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _get(doc: Document, key: str, path: Path, where: str) -> JSON:
    if key not in doc:
        _fail(path, where + key, "missing from the metadata")
    return doc[key]


def _count(doc: Document, key: str, path: Path, where: str = "") -> int:
    value = _get(doc, key, path, where)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        _fail(path, where + key, f"{_shown(value)}; expected an integer from 0 to 2^62")
    return value


def _number(doc: Document, key: str, path: Path, high: float, *, optional: bool = False) -> None:
    value = _get(doc, key, path, "")
    if optional and value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and 0 <= value <= high)
    ):
        _fail(path, key, f"{_shown(value)}; expected a finite number from 0 to {high:g}")


def _mapping(doc: Document, key: str, path: Path, where: str = "") -> Document:
    value = _get(doc, key, path, where)
    if not isinstance(value, dict):
        _fail(path, where + key, f"{_shown(value)}; expected a JSON object")
    return value


def _learner_scalars(doc: Document, where: str, path: Path) -> None:
    """agents.learner.learner_state's scalars: three counters and the generator's state (its
    form is checked against the learner's own generator, `check_rng`)."""
    for key in ("n", "learn_steps", "labels_dropped"):
        _count(doc, key, path, where)
    _mapping(doc, "rng", path, where)


def check_node_meta(meta: Document, path: Path) -> None:
    """The metadata a node reads from its checkpoint, each value of the type and range it was
    saved with (swarm/node.py, save_checkpoint); CheckpointError names the first that is not."""
    _count(meta, "agent", path)  # whether it is this node's agent: the node says
    for key in ("epoch", "step", "round", "sensor_position"):
        _count(meta, key, path)
    layout = _get(meta, "layout", path, "")
    if not isinstance(layout, str) or not 0 < len(layout) <= 64:
        _fail(path, "layout", f"{_shown(layout)}; expected a layout fingerprint (a string)")
    _number(meta, "probe_acc", path, 1.0, optional=True)  # none without a probe set
    _number(meta, "saved_unix", path, MAX_COUNT)
    _count(_mapping(meta, "gossip", path), "epoch", path, "gossip.")
    _learner_scalars(_mapping(meta, "learner", path), "learner.", path)
    if meta.get("shadow") is not None:  # a node without `shadow: true` saves None
        _learner_scalars(_mapping(meta, "shadow", path), "shadow.", path)


def _like(value: JSON, template: object, key: str, path: Path) -> None:
    """`value` has the form of `template` (a generator's state): the same keys, strings equal,
    integers unsigned and at most MAX_RNG_WORD."""
    if isinstance(template, dict):
        if not isinstance(value, dict):
            _fail(path, key, f"{_shown(value)}; expected a JSON object")
        if set(value) != set(template):
            _fail(path, key, f"keys {sorted(value)}; expected {sorted(template)}")
        for name, inner in template.items():
            _like(value[name], inner, f"{key}.{name}", path)
    elif isinstance(template, str):
        if value != template:
            _fail(path, key, f"{_shown(value)}; this learner's is {template!r}")
    elif isinstance(template, int) and not _word(value):
        _fail(path, key, f"{_shown(value)}; expected an integer from 0 to 2^128 - 1")


def _word(value: JSON) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_RNG_WORD


def check_rng(state: JSON, generator: np.random.BitGenerator, key: str, path: Path) -> None:
    """`state` is one `generator` takes: the form of its own state, then set on a scratch
    generator of its kind (which checks what the form cannot, e.g. a word's width)."""
    if not isinstance(state, dict):
        _fail(path, key, f"{_shown(state)}; expected a JSON object")
    _like(state, generator.state, key, path)
    scratch = type(generator)()
    try:
        scratch.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        _fail(path, key, f"not a {type(generator).__name__} state: {exc}")


def _check_shapes(
    arrays: Mapping[str, np.ndarray], model: Mapping[str, np.ndarray], path: Path
) -> None:
    pending: int | None = None  # the number of pending deltas, as the first array gives it
    for name, like in model.items():
        if name not in arrays:
            if name in OLDER:
                continue
            _fail(path, f"array {name}", "missing (this model has it)")
        a = arrays[name]
        if a.dtype != like.dtype:
            _fail(path, f"array {name}", f"dtype {a.dtype}, this model's is {like.dtype}")
        want = like.shape
        if name.startswith(PENDING) and a.ndim == like.ndim >= 1:
            pending = a.shape[0] if pending is None else pending
            want = (pending, *want[1:])
        if a.shape != want:
            _fail(path, f"array {name}", f"shape {a.shape}, this model's is {want}")
    restored = {name.split(".", 1)[0] for name in model}  # learner, shadow, gossip, fed
    for name in arrays:
        if name.startswith(EXACT) and name.split(".", 1)[0] in restored and name not in model:
            _fail(path, f"array {name}", "not part of this model")


def check_node_arrays(
    arrays: Mapping[str, np.ndarray],
    model: Mapping[str, np.ndarray],
    path: Path,
    *,
    neighbours: Collection[int],
) -> None:
    """The arrays a node restores from `arrays` (its checkpoint), against `model`: the arrays
    it would save itself (Node._checkpoint_arrays) of the parts it restores. Each must be there
    (OLDER ones may not), of the model's dtype and shape (a gossip.pending_ array has any
    number of rows, the same in each); the weights and the gossip state have no array of
    another name; the gossip state's integers (versions, epochs, rounds, counts) and a
    coordinator's version are within 0..MAX_COUNT; a pending delta's sender is one of
    `neighbours`."""
    _check_shapes(arrays, model, path)
    for name, a in arrays.items():
        counted = name.startswith("gossip.") or name == "fed.version"
        if counted and a.dtype.kind in "iu" and a.size and not 0 <= a.min() <= a.max() <= MAX_COUNT:
            _fail(path, f"array {name}", "holds a value outside 0..2^62")
    senders = arrays.get(PENDING + "sender")
    if senders is not None and not np.isin(senders, list(neighbours)).all():
        stranger = int(senders[~np.isin(senders, list(neighbours))][0])
        _fail(
            path,
            f"array {PENDING}sender",
            f"agent {stranger} is not a neighbour of this node ({sorted(neighbours)})",
        )
