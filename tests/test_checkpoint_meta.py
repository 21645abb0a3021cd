"""A node's checkpoint with a right checksum but values no node wrote (issue 18,
swarm/checkpoint_meta.py): each is refused at start with one line naming the file and the key,
exit status 2, never a traceback nor a resume from it.

Every case starts from a checkpoint a real node saved, changes one value and writes it back
with `swarm.checkpoint.save`, so its checksum is right: what is refused is the value itself.
The node is started through `swarm.node.main`, the program's own entry point (in this process;
one case also as its own OS process).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from swarm import checkpoint
from swarm.checkpoint_meta import MAX_COUNT

#: A tiny swarm: agent 1 of a ring of 3 (neighbours 0 and 2), reading a recording.
SCENARIO: dict[str, Any] = {
    "name": "ckpt",
    "seed": 1,
    "ticks": 10,
    "agents": {"count": 3, "per_shard": 3},
    "model": {"d_model": 16, "channels": 2, "layers": 1, "ffn_mult": 2, "slope_window": 4},
    "learning": {"window": 4, "replay": 32, "batch": 4},
    "gossip": {"graph": {"kind": "ring"}},
    "baseline": {"isolated": False},
}
CHECKPOINT = Path(".swarm-node") / "agent-1" / "checkpoint.npz"

Change = Callable[[dict[str, np.ndarray], dict[str, Any]], None]


def _write_node(base: Path) -> Path:
    (base / "scenario.yaml").write_text(yaml.safe_dump(SCENARIO))
    lines = [{"format": "yan-swarm-sensor/1", "input": {"vector_dim": 4}, "classes": ["none", "x"]}]
    lines += [{"t": t, "obs": [0.1 * t, 0, 1, 0], "labels": [[t, t % 2]]} for t in range(20)]
    (base / "rec.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    config = base / "node.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "scenario": "scenario.yaml",
                "agent": 1,
                "sensor": {"kind": "file", "path": "rec.jsonl"},
                "linger_s": 0,
            }
        )
    )
    return config


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A node's directory after it read 5 readings and saved its checkpoint."""
    from swarm.node import Node, load_node_config

    base = tmp_path_factory.mktemp("saved")
    node = Node(load_node_config(_write_node(base)), base)
    try:
        node.run(5)
        node.save_checkpoint()
    finally:
        node.close()
    return base


def _tampered(saved: Path, tmp_path: Path, change: Change) -> tuple[Path, Path]:
    """A copy of `saved` whose checkpoint `change` altered, re-saved with a right checksum;
    (node config, checkpoint)."""
    base = tmp_path / "node"
    shutil.copytree(saved, base)
    path = base / CHECKPOINT
    arrays, meta = checkpoint.load(path)
    meta = {k: v for k, v in meta.items() if k not in ("format", "sha256")}
    change(arrays, meta)
    checkpoint.save(path, arrays, meta)
    checkpoint.load(path)  # the checksum is right: only what the file holds is wrong
    return base / "node.yaml", path


def _refusal(config: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """What `swarm-node --config config` prints before it exits 2."""
    from swarm.node import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["--config", str(config)])
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and "Traceback" not in err
    return err.strip()


def _set(key: str, value: object) -> Change:
    def change(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        *inner, last = key.split(".")
        holder = meta
        for name in inner:
            holder = holder[name]
        holder[last] = value

    return change


def _drop(key: str) -> Change:
    def change(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        del meta[key]

    return change


@pytest.mark.parametrize(
    "change, problem",
    [
        # the four found in issue 18
        (_set("step", -5), "step: -5; expected an integer from 0 to 2^62"),
        (_drop("gossip"), "gossip: missing from the metadata"),
        (_set("learner", "x"), "learner: 'x'; expected a JSON object"),
        (_set("epoch", 2**70), f"epoch: {2**70}; expected an integer from 0 to 2^62"),
        # and every other value a node reads
        (_set("round", MAX_COUNT + 1), f"round: {MAX_COUNT + 1}; expected an integer"),
        (_set("sensor_position", 1.5), "sensor_position: 1.5; expected an integer"),
        (_set("agent", True), "agent: True; expected an integer"),
        (_set("layout", 5), "layout: 5; expected a layout fingerprint"),
        (_set("probe_acc", 7), "probe_acc: 7; expected a finite number from 0 to 1"),
        (_set("saved_unix", float("nan")), "saved_unix: nan; expected a finite number"),
        (_set("gossip", {"epoch": "now"}), "gossip.epoch: 'now'; expected an integer"),
        (_drop("learner"), "learner: missing from the metadata"),
        (_set("learner.n", "3"), "learner.n: '3'; expected an integer"),
        (_set("learner.labels_dropped", -1), "learner.labels_dropped: -1; expected"),
        (_set("learner.rng", [1, 2]), "learner.rng: [1, 2]; expected a JSON object"),
        (_set("shadow", "x"), "shadow: 'x'; expected a JSON object"),
    ],
)
def test_a_metadata_value_no_node_writes_is_refused_naming_key_and_file(
    saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], change: Change, problem: str
) -> None:
    # Prepare
    config, path = _tampered(saved, tmp_path, change)

    # Execute
    err = _refusal(config, capsys)

    # Assert
    assert err.startswith(f"error: {path}: {problem}"), err
    assert err.endswith("move it away to start from a fresh model")


def _rng(update: Callable[[dict[str, Any]], None]) -> Change:
    def change(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        update(meta["learner"]["rng"])

    return change


def _pending(sender: int, rows: int = 1, values: int = 1) -> Change:
    """`rows` deltas accepted but not applied, from agent `sender`, with `values` rows of
    values."""

    def change(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        p = arrays["gossip.xhat"].shape[1]
        for name in ("sender", "round", "base_version", "epoch", "examples"):
            arrays[f"gossip.pending_{name}"] = np.full(rows, sender if name == "sender" else 1)
        arrays["gossip.pending_snapshot"] = np.zeros(rows, bool)
        arrays["gossip.pending_values"] = np.zeros((values, p), np.float32)

    return change


def _array(name: str, make: Callable[[np.ndarray], np.ndarray | None]) -> Change:
    def change(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        new = make(arrays.get(name, np.zeros(1)))
        if new is None:
            del arrays[name]
        else:
            arrays[name] = new

    return change


def _nan(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flat[3] = np.nan
    return a


@pytest.mark.parametrize(
    "change, problem",
    [
        # a right layout fingerprint over weights of another shape (a torch traceback before)
        (
            _array("learner.pop.flat", lambda a: np.zeros((1, a.shape[1] + 1), a.dtype)),
            r"array learner\.pop\.flat: shape \(1, \d+\), this model's is \(1, \d+\)",
        ),
        (_array("learner.obs", lambda a: None), r"array learner\.obs: missing"),
        (
            _array("learner.replay.size", lambda a: a.astype(np.float64)),
            r"array learner\.replay\.size: dtype float64, this model's is int64",
        ),
        (
            _array("learner.pop.spare", lambda a: np.zeros(3, np.float32)),
            r"array learner\.pop\.spare: not part of this model",
        ),
        (
            _array("gossip.xhat", lambda a: a[:2]),
            r"array gossip\.xhat: shape \(2, \d+\), this model's is \(3, \d+\)",
        ),
        (_array("gossip.xhat", _nan), r"array 'gossip\.xhat' holds NaN or infinity"),
        (
            _array("gossip.version", lambda a: a - 1),
            r"array gossip\.version: holds a value outside 0\.\.2\^62",
        ),
        (
            _pending(sender=99),
            r"array gossip\.pending_sender: agent 99 is not a neighbour of this node \(\[0, 2\]\)",
        ),
        (
            _pending(sender=0, rows=1, values=2),
            r"array gossip\.pending_values: shape \(2, \d+\), this model's is \(1, \d+\)",
        ),
        (
            _rng(lambda rng: rng.update(bit_generator="MT19937")),
            r"learner\.rng\.bit_generator: 'MT19937'; this learner's is 'PCG64'",
        ),
        (
            _rng(lambda rng: rng["state"].update(state=2**200)),
            r"learner\.rng\.state\.state: \d+\.\.\.; expected an integer from 0 to 2\^128 - 1",
        ),
        (
            _rng(lambda rng: rng.update(has_uint32=2**70)),
            r"learner\.rng: not a PCG64 state",
        ),
        # the right shape, bytes torch refuses (it said "cannot listen on ..." before)
        (
            _array("learner.pop.rng.router", lambda a: np.full_like(a, 7)),
            r"learner: Invalid mt19937 state",
        ),
    ],
)
def test_arrays_that_do_not_fit_this_model_are_refused_naming_the_array(
    saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], change: Change, problem: str
) -> None:
    import re

    # Prepare
    config, path = _tampered(saved, tmp_path, change)

    # Execute
    err = _refusal(config, capsys)

    # Assert
    assert re.match(rf"error: {re.escape(str(path))}: {problem}", err), err
    assert "cannot listen" not in err


def test_a_checkpoint_the_node_wrote_still_resumes(saved: Path, tmp_path: Path) -> None:
    # the control of the cases above: the same copy, no value changed, resumes where it was
    from swarm.node import Node, load_node_config

    config, _ = _tampered(saved, tmp_path, lambda arrays, meta: None)

    node = Node(load_node_config(config), config.parent)
    try:
        assert node.resumed_from is not None
        assert node.resumed_from["checkpoint_step"] == node.step == 5
    finally:
        node.close()


def test_swarm_node_refuses_a_hostile_checkpoint_with_exit_2_and_one_line(
    saved: Path, tmp_path: Path
) -> None:
    # Prepare: the learner's scalars are a string (a TypeError traceback before)
    config, path = _tampered(saved, tmp_path, _set("learner", "x"))

    # Execute: the real program, in its own process
    proc = subprocess.run(
        [sys.executable, "-m", "swarm.node", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )

    # Assert
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        f"error: {path}: learner: 'x'; expected a JSON object; move it away to start from a "
        "fresh model"
    )
    assert proc.stdout == ""
