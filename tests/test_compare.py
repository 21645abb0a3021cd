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
