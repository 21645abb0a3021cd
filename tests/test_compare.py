"""`swarm compare`: the same scenario and seeds under every way of sharing, one table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from swarm.compare import MODES, compare, mode_scenario
from swarm.scenario import Scenario, load_scenario

TINY = Path(__file__).parent / "data" / "tiny.yaml"


def test_mode_scenarios_differ_only_in_how_they_share() -> None:
    sc = load_scenario(TINY)
    for mode in MODES:
        m = mode_scenario(sc, mode, seed=11)
        assert (m.gossip.topology, m.seed, m.baseline.isolated) == (mode, 11, False)
        assert m.world == sc.world and m.model == sc.model and m.learning == sc.learning
    assert mode_scenario(sc, "centralized", 0).n_shards == 1
    # sightings travel between gossip neighbours: the other modes run without them (validate
    # would refuse them there), the decentralized one keeps the scenario's
    data = sc.model_dump(mode="json")
    data["gossip"]["sightings"] = {"per_round": 3}
    relaying = Scenario.model_validate(data)
    per_round = {m: mode_scenario(relaying, m, 0).gossip.sightings.per_round for m in MODES}
    assert per_round == {m: 3 if m == "decentralized" else 0 for m in MODES}
    with pytest.raises(ValueError, match="unknown mode"):
        mode_scenario(sc, "telepathy", 0)
    data = sc.model_dump(mode="json")
    data["gossip"]["topology"] = "centralized"
    with pytest.raises(ValueError, match="per_shard >= agents.count"):
        Scenario.model_validate(data)


def test_compare_runs_each_mode_and_writes_table_and_plots(ray_local, tmp_path: Path) -> None:
    sc = load_scenario(TINY)
    result = compare(sc, tmp_path, modes=("isolated", "centralized"), seeds=[3, 4])
    runs = json.loads((tmp_path / "compare.json").read_text())
    assert sorted((r["mode"], r["seed"]) for r in runs) == [
        ("centralized", 3), ("centralized", 4), ("isolated", 3), ("isolated", 4),
    ]  # fmt: skip
    for r in runs:
        m = r["metrics"]
        assert m["gossip/bytes_sent"] == 0  # neither mode uses the network
        if r["mode"] == "centralized":  # one model: every agent holds the same weights
            assert m["learn/consensus_distance"] == pytest.approx(0.0, abs=1e-9)
        else:
            assert m["learn/consensus_distance"] > 0
    table = (tmp_path / "compare.md").read_text()
    assert result.table == table
    assert "| isolated |" in table and "| centralized |" in table and " ± " in table
    for name in ("compare_curves.png", "compare_bytes.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def test_the_table_puts_what_the_swarm_did_beside_what_it_knows(tmp_path: Path) -> None:
    """compare.md from given runs (no Ray): the task score and violations per mode, and a
    verdict per sharing mode on whether sharing won the task."""
    from swarm.compare import CompareResult, ModeRun, write_results

    def run(mode: str, seed: int, acc: float, score: float, violations: float) -> ModeRun:
        metrics = {
            "learn/probe_acc": acc,
            "task/score": score,
            "task/altitude_violations": violations,
            "gossip/bytes_sent": 2**20,
            "gossip/dense_bytes": 2**25,
            "gossip/compression_ratio": 32.0,
        }
        curve = [(0.0, 0.1), (1.0, acc)]
        return ModeRun(mode, seed, "", "classify", metrics, 1.0, curve, [(0.0, 0.0), (1.0, score)])

    runs = [
        run("isolated", 1, 0.40, 0.70, 9),
        run("isolated", 2, 0.42, 0.72, 11),
        run("decentralized", 1, 0.80, 0.85, 3),
        run("decentralized", 2, 0.82, 0.87, 1),
        run("centralized", 1, 0.84, 0.68, 4),
        run("centralized", 2, 0.86, 0.70, 4),
    ]
    table = write_results(CompareResult(tmp_path, runs), load_scenario(TINY))
    knows, did = [line for line in table.splitlines() if line.startswith("| mode |")]
    assert "probe accuracy" in knows
    assert "task score" in did and "altitude violations" in did
    assert "| decentralized | 0.810 ± 0.014 | 1.000 ± 0.000 | 32.000 ± 0.000 |" in table
    assert "| decentralized | 0.860 ± 0.014 | 2.000 ± 1.414 |" in table  # what it did
    # the goals of what the swarm did: +0.15 over isolated, 95% of centralized
    assert "isolated + 0.150 (goal >= +0.15): **met**; 124.6% of centralized" in table
    assert (
        "- decentralized vs isolated in the task: score +0.150; sharing **won** the task" in table
    )
    assert "- centralized vs isolated in the task: score -0.020; sharing **did not win**" in table
    assert (tmp_path / "compare.md").read_text() == table
    # and what it did as it went: the task score over time, a picture
    assert (tmp_path / "compare_task.png").stat().st_size > 10_000


def test_a_figure_some_runs_lack_is_summarised_with_their_count() -> None:
    from swarm.compare import _stats

    assert _stats([0.5, None, None], "never") == "0.500 (2 of 3: never)"
    assert _stats([None, None], "never") == "never"
    assert _stats([1.0, 3.0]) == "2.000 ± 1.414"


def test_compare_runs_a_world_with_rewards_on_its_team_return(ray_local, tmp_path: Path) -> None:
    # a PettingZoo world: the headline is the team return, every mode learns, only the
    # decentralized one sends bytes
    data = load_scenario(Path(__file__).parents[1] / "scenarios" / "spread.yaml").model_dump(
        mode="json"
    )
    data.update(ticks=40)
    data["agents"] = {"count": 6, "per_shard": 3}
    data["world"].update(copies=2, kwargs={"N": 3, "max_cycles": 10})
    data["rl"]["rollout"] = 10
    data["metrics"]["interval"] = 20
    data["ray"]["dashboard"] = False
    sc = Scenario.model_validate(data)
    result = compare(sc, tmp_path, modes=("isolated", "decentralized", "centralized"), seeds=[1])
    runs = {r["mode"]: r for r in json.loads((tmp_path / "compare.json").read_text())}
    assert set(runs) == {"isolated", "decentralized", "centralized"}
    for mode, r in runs.items():
        m = r["metrics"]
        assert m["rl/episodes"] == 8 and m["rl/team_return_last"] < 0
        assert (m["gossip/bytes_sent"] > 0) == (mode == "decentralized")
    table = (tmp_path / "compare.md").read_text()
    assert result.table == table and "team return" in table
    assert (tmp_path / "compare_curves.png").stat().st_size > 10_000
