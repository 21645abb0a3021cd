"""bench/rl_bench.py: its score and its two parts on a small world (the figures themselves are
in BENCHMARKS.md)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))

import rl_bench  # noqa: E402

from swarm.scenario import Scenario, load_scenario  # noqa: E402


def test_the_score_weighs_each_late_interval_by_its_episodes() -> None:
    # budget 1000: the last 10% is past 900; rows at 800 (too early), 950 (3 episodes, -10)
    # and 1000 (1 episode, -30): (3 * -10 + 1 * -30) / 4 = -15
    curve = [(800, -50.0, 8), (950, -10.0, 3), (1000, -30.0, 1)]
    assert rl_bench.final_of(curve, 1000) == -15.0
    with pytest.raises(SystemExit, match="no episode ended in the last 10%"):
        rl_bench.final_of([(800, -50.0, 8), (1000, -1.0, 0)], 1000)
    assert rl_bench.normalised(-20.0, rand=-30.0, greedy=-10.0) == 0.5


def _small() -> Scenario:
    data = load_scenario(rl_bench.SCENARIO).model_dump(mode="json")
    data["agents"] = {"count": 6, "per_shard": 3}
    data["world"].update(copies=2, kwargs={"N": 3, "max_cycles": 10})
    data["rl"].update(rollout=10, update_lag=4)  # the scenario runs updates on a thread
    data["metrics"]["interval"] = 20
    return Scenario.model_validate(data)


@pytest.mark.slow
def test_both_parts_run_on_a_small_world(ray_local) -> None:
    base = _small()
    raws, rows = rl_bench.throughput(base, ticks=40)
    assert len(raws) == 2 and all(r > 0 for r in raws)
    assert len(rows) == 5 and all(r.ticks_per_s > 0 for r in rows)
    assert "MiB gossip" in rows[0].note and rows[1].note == ""  # only gossip sends
    info = {"date": "d", "wall": 1.0, "cores": 2, "cpu": "c", "torch": "t", "python": "p"}
    text = rl_bench.report_throughput(info, base, 40, raws, rows)
    assert text.startswith(rl_bench.SECTION_SPEED) and "Goal (issue 19)" in text
    # learning: 400 env steps = 200 ticks of 2 copies; 40 ten-step episodes
    run = rl_bench.learn_ours(base, "gossip", seed=1, steps=400)
    assert run.env_steps == 400 and run.bytes_sent > 0
    assert math.isfinite(run.final) and run.final < 0
    assert [s for s, _ in run.curve] == sorted(s for s, _ in run.curve)
