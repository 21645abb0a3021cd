"""A standard PettingZoo env (MPE2 simple_spread) under the Runner: Yan agents act from reward,
learn online and gossip deltas over gRPC, exactly like the drone patrol's agents."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from swarm.runner import RunError, Runner, new_run_dir
from swarm.scenario import Scenario, ScenarioError, load_scenario, parse_scenario

SPREAD = Path(__file__).parents[1] / "scenarios" / "spread.yaml"

pytest.importorskip("mpe2")


def _small(**world: object) -> Scenario:
    data = load_scenario(SPREAD).model_dump(mode="json")
    data["ticks"] = 60
    data["agents"] = {"count": 6, "per_shard": 3}
    data["world"].update({"copies": 2, "kwargs": {"N": 3, "max_cycles": 10}, **world})
    data["rl"]["rollout"] = 10
    data["metrics"]["interval"] = 20
    data["ray"]["dashboard"] = False
    return Scenario.model_validate(data)


def test_spread_scenario_validates() -> None:
    sc = load_scenario(SPREAD)
    assert sc.world.kind == "pettingzoo"
    assert sc.agents.count == 3 * sc.world.copies * 1  # 3 agents per copy of simple_spread


def test_pettingzoo_world_runs_learns_and_gossips(ray_local, tmp_path: Path) -> None:
    sc = _small()
    result = Runner(sc, new_run_dir(tmp_path, sc)).run()
    summary, rows = result.summary, result.rows
    assert summary["task"] == "rl"
    m = summary["metrics"]
    # 60 ticks of 10-step episodes, 2 copies: 12 episodes, every one recorded
    assert m["rl/episodes"] == 12
    assert all(r["rl/team_return"] is not None and r["rl/team_return"] < 0 for r in rows)
    assert m["gossip/deltas_accepted"] > 0 and m["gossip/deltas_rejected"] == 0
    assert m["gossip/bytes_sent"] > 0
    # the policies moved (PPO updates every 10 ticks) yet gossip keeps them close
    assert rows[-1]["rl/entropy"] is not None
    assert rows[-1]["learn/consensus_distance"] > 0
    files = {p.name for p in result.run_dir.iterdir()}
    assert {"metrics.jsonl", "summary.json", "team_return.png", "bytes.png"} <= files
    assert "trajectories.png" not in files  # no map for a generic env
    assert json.loads((result.run_dir / "summary.json").read_text())["task"] == "rl"


def test_agent_count_mismatch_is_a_clean_run_error(ray_local, tmp_path: Path) -> None:
    data = _small().model_dump(mode="json")
    data["agents"]["count"] = 5
    sc = Scenario.model_validate(data)
    with pytest.raises(RunError, match=r"agents.count is 5.*agents.count: 6"):
        Runner(sc, new_run_dir(tmp_path, sc)).run()


def test_bad_env_path_and_world_keys_name_the_line() -> None:
    text = SPREAD.read_text()
    lines = text.splitlines()
    copies_line = next(i for i, t in enumerate(lines, 1) if t.strip().startswith("copies:"))
    env_line = next(i for i, t in enumerate(lines, 1) if t.strip().startswith("env:"))
    with pytest.raises(ScenarioError) as err:
        parse_scenario(text.replace("copies: 4", "copiez: 4"), "spread.yaml")
    assert f"spread.yaml:{copies_line}: world.copiez: unknown key (did you mean 'copies'?)" in str(
        err.value
    )
    with pytest.raises(ScenarioError) as err:
        parse_scenario(text.replace("mpe2.simple_spread_v3", "mpe2.no_such_env_v9"), "spread.yaml")
    # mpe2 is installed: the message names its release instead of asking to install it
    assert (
        f"spread.yaml:{env_line}: world.env: module 'mpe2.no_such_env_v9' is not in the "
        "installed mpe2 " in str(err.value)
    )
    with pytest.raises(ScenarioError, match="expected 'package.module:callable'"):
        parse_scenario(text.replace(":parallel_env", ""), "spread.yaml")


def test_centralized_mode_trains_one_policy(ray_local, tmp_path: Path) -> None:
    # gossip.topology centralized (swarm compare's upper bound): all agents in one shard, one
    # policy trained on everyone's experience, so every agent holds the same weights.
    data = _small().model_dump(mode="json")
    data["gossip"]["topology"] = "centralized"
    data["agents"]["per_shard"] = 6
    sc = Scenario.model_validate(data)
    m = Runner(sc, new_run_dir(tmp_path, sc)).run().summary["metrics"]
    assert m["learn/consensus_distance"] == pytest.approx(0.0, abs=1e-9)
    assert m["gossip/bytes_sent"] == 0 and m["rl/episodes"] == 12


def test_stepping_each_shards_copies_as_it_acts_gives_the_same_run(ray_local, tmp_path) -> None:
    # world.pipeline (the default): the world steps shard 0's copy while shard 1 acts, and the
    # other way round; taking turns (one whole step per tick) must give the very same run.
    runs = {}
    for pipeline in (True, False):
        sc = _small(pipeline=pipeline)
        runs[pipeline] = Runner(sc, new_run_dir(tmp_path, sc)).run()
    assert runs[True].summary["metrics"]["rl/episodes"] == 12
    assert runs[True].rows == runs[False].rows  # every figure, every agent's


def test_an_update_beside_acting_runs_and_repeats_exactly(ray_local, tmp_path) -> None:
    # rl.update_lag: each PPO update on a thread beside the next 4 ticks of acting; the run is
    # a function of its seed all the same, and it learns and gossips as the plain one does.
    data = _small().model_dump(mode="json")
    data["rl"]["update_lag"] = 4
    sc = Scenario.model_validate(data)
    first, second = (Runner(sc, new_run_dir(tmp_path, sc)).run() for _ in range(2))
    assert first.rows == second.rows
    m = first.summary["metrics"]
    assert m["rl/episodes"] == 12 and m["gossip/deltas_accepted"] > 0
    assert first.rows[-1]["rl/entropy"] is not None


# ---- continuous actions -------------------------------------------------------------------------

SPREAD_CONTINUOUS = SPREAD.with_name("spread_continuous.yaml")


def _small_continuous() -> Scenario:
    """spread_continuous.yaml made tiny: 2 copies of 3 agents in 2 shards, 10-step episodes."""
    data = load_scenario(SPREAD_CONTINUOUS).model_dump(mode="json")
    data["ticks"] = 60
    data["agents"] = {"count": 6, "per_shard": 3}
    data["world"].update(
        {"copies": 2, "kwargs": {"N": 3, "max_cycles": 10, "continuous_actions": True}}
    )
    data["rl"]["rollout"] = 10
    data["metrics"]["interval"] = 20
    data["ray"]["dashboard"] = False
    return Scenario.model_validate(data)


def test_the_world_host_steps_and_replays_continuous_decisions_as_float32() -> None:
    # Prepare: the world actor's class, in this process; 2 copies stepped in two parts
    from swarm.shard import WorldHost

    host = WorldHost(_small_continuous().model_dump(mode="json"))
    info = host.info()
    assert (info.action_dim, info.n_actions) == (5, 0)
    assert info.action_low == [0.0] * 5 and info.action_high == [1.0] * 5
    host.reset()
    rng = np.random.default_rng(0)
    # Execute: 3 ticks of draws around the box (some outside: the world clips them)
    for _ in range(3):
        acts = rng.normal(0.5, 0.5, (6, 5)).astype(np.float32)
        host.step_part(0, acts[:3])
        last = host.step_part(3, acts[3:])
    # Assert: recorded as drawn, float32 (N, d); replaying them rebuilds the same world
    decisions = np.stack(host.decisions)
    assert decisions.dtype == np.float32 and decisions.shape == (3, 6, 5)
    assert (decisions < 0).any() and (decisions > 1).any()
    again = WorldHost(_small_continuous().model_dump(mode="json")).replay(decisions)
    np.testing.assert_array_equal(again.obs, last.obs)


@pytest.mark.slow
def test_a_continuous_pettingzoo_world_runs_learns_and_gossips(ray_local, tmp_path) -> None:
    sc = _small_continuous()
    result = Runner(sc, new_run_dir(tmp_path, sc)).run()
    m, rows = result.summary["metrics"], result.rows
    assert result.summary["task"] == "rl"
    # 60 ticks of 10-step episodes, 2 copies: 12 episodes, every one recorded
    assert m["rl/episodes"] == 12
    assert all(r["rl/team_return"] is not None and r["rl/team_return"] < 0 for r in rows)
    assert m["gossip/deltas_accepted"] > 0 and m["gossip/deltas_rejected"] == 0
    # a Gaussian's entropy (5 numbers), reported after the PPO updates
    assert rows[-1]["rl/entropy"] is not None and np.isfinite(rows[-1]["rl/entropy"])
    assert rows[-1]["learn/consensus_distance"] > 0


# ---- agent groups -------------------------------------------------------------------------------

TAG = SPREAD.with_name("tag.yaml")


def _small_tag() -> Scenario:
    """tag.yaml made tiny: 2 copies of 3 predators and 1 prey, so groups of 6 and 2 agents,
    2 per shard (3 predator shards, 1 prey shard), 10-step episodes, a ring per group."""
    data = load_scenario(TAG).model_dump(mode="json")
    data["ticks"] = 60
    data["agents"] = {"count": 8, "per_shard": 2}
    data["world"].update({"copies": 2})
    data["world"]["kwargs"]["max_cycles"] = 10
    data["rl"]["rollout"] = 10
    data["gossip"].update({"interval": 5, "graph": {"kind": "ring"}})
    data["metrics"]["interval"] = 20
    data["ray"]["dashboard"] = False
    return Scenario.model_validate(data)


@pytest.mark.slow
def test_a_world_of_agent_groups_runs_each_group_gossiping_within_itself(
    ray_local, tmp_path: Path
) -> None:
    # Prepare: predators (agents 0-5: shards 0-2) and prey (agents 6-7: shard 3)
    sc = _small_tag()
    # Execute
    result = Runner(sc, new_run_dir(tmp_path, sc)).run()
    m, rows = result.summary["metrics"], result.rows
    # Assert: 60 ticks of 10-step episodes, 2 copies: 12 episodes, each side's return kept
    assert m["rl/episodes"] == 12
    for row in rows:
        assert row["rl/return/adversary"] is not None and row["rl/return/agent"] is not None
    assert {"rl/return_first/adversary", "rl/return_last/agent"} <= set(m)
    # gossip within each group: the ring of 6 predators crosses their 3 shards; the 2 prey
    # share a shard, so nothing reached it, and no delta anywhere was refused (one of the
    # other group's layout would be)
    assert m["gossip/deltas_accepted"] > 0 and m["gossip/deltas_rejected"] == 0
    accepted = [p["deltas_accepted"] for p in result.summary["placement"]]
    assert all(a > 0 for a in accepted[:3]) and accepted[3] == 0
    graph = json.loads((result.run_dir / "graph.json").read_text())
    assert graph["groups"] == [
        {"name": "adversary", "first": 0, "count": 6},
        {"name": "agent", "first": 6, "count": 2},
    ]
    assert all((i < 6) == (j < 6) for i, j in graph["edges"])
    # each group's policies moved and its gossip holds them together: a finite distance
    assert 0 < rows[-1]["learn/consensus_distance"] < float("inf")
    assert rows[-1]["rl/entropy"] is not None


def test_without_learning_no_gossip_round_runs_and_nothing_is_sent(ray_local, tmp_path) -> None:
    # rl.enabled false: the weights never change, so every delta would be zero
    data = _small().model_dump(mode="json")
    data["rl"]["enabled"] = False
    sc = Scenario.model_validate(data)
    assert sc.gossip.topology == "decentralized" and not sc.shares and _small().shares
    result = Runner(sc, new_run_dir(tmp_path, sc)).run()
    m = result.summary["metrics"]
    assert m["rl/episodes"] == 12
    assert m["gossip/bytes_sent"] == 0 and m["gossip/rounds"] == 0
