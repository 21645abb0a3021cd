"""The examples run as a newcomer would run them, and still do what they say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_one_round_learns_and_gossip_pulls_the_models_together():
    # Prepare: the in-process loop (examples/one_round.py), short: 100 ticks, 20 gossip rounds.
    pytest.importorskip("pybullet")
    # Act
    run = subprocess.run(
        [sys.executable, "examples/one_round.py", "--ticks", "100"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Assert: it ran to the end, every merge shrank the spread between the models, and the
    # swarm ends well above chance (0.2, balanced over 5 classes) and above where it started.
    assert run.returncode == 0, run.stderr
    (start,) = re.findall(r"probe accuracy ([\d.]+) at start", run.stdout)
    (final,) = re.findall(r"final probe accuracy ([\d.]+)", run.stdout)
    rounds = re.findall(r"spread ([\d.e+-]+) -> ([\d.e+-]+) in the last round", run.stdout)
    assert len(rounds) == 5, run.stdout  # printed at ticks 20, 40, ... 100
    for before, after in rounds:
        assert float(after) < float(before), run.stdout
    assert float(final) > max(0.35, float(start) + 0.2), run.stdout
