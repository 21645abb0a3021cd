"""Faults on a real Ray runtime: a killed shard, lossy links and partitions, Byzantine agents,
and an interrupted run resumed to the same result (issue 8). Every run's message accounting
is checked by the conftest fixture `runs_account_for_every_message`."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from swarm.runner import Runner, RunResult
from swarm.scenario import Scenario, load_scenario

PATROL = Path(__file__).parents[1] / "scenarios" / "drone_patrol.yaml"


def _patrol(ticks: int, **sections: Any) -> dict[str, Any]:
    """The shipped drone patrol (12 drones, 3 shards), shorter, without the isolated twins."""
    data = load_scenario(PATROL).model_dump(mode="json")
    data.update(ticks=ticks, ray={"dashboard": False, "num_cpus": 2})
    data["baseline"]["isolated"] = False
    for key, value in sections.items():
        data[key] = value
    return data


def _run(data: dict[str, Any], run_dir: Path, **kwargs: Any) -> RunResult:
    run_dir.mkdir(parents=True, exist_ok=True)
    return Runner(Scenario.model_validate(data), run_dir, **kwargs).run()


def test_a_killed_shard_restarts_from_its_checkpoint(ray_local, tmp_path: Path) -> None:
    data = _patrol(
        180,
        checkpoint={"every_ticks": 50},
        # delayed messages too: those the killed process held die with it (dropped), and
        # the ones held at the checkpoint are not sent twice (the accounting must add up)
        faults={"kill": [{"shard": 1, "at_tick": 130}], "messages": {"delay": 0.3}},
    )
    result = _run(data, tmp_path / "run")
    (kill,) = result.summary["faults"]["kills"]
    assert kill["shard"] == 1 and kill["tick"] == 130
    assert kill["agents"] == [4, 5, 6, 7]
    # Ray restarted the actor, which restored its agents from the checkpoint at tick 100 ...
    assert kill["checkpoint_ticks"] == 100
    before, after = np.array(kill["probe_acc_checkpoint"]), np.array(kill["probe_acc_restored"])
    # ... learned ones (a fresh model scores ~0.2 on 5 balanced classes), and right after the
    # restore they score what they scored at the checkpoint: within 2 points, every agent.
    assert before.mean() > 0.3
    assert np.abs(after - before).max() <= 0.02
    # the run completed, and the restored shard took part again: its new epoch went out as
    # snapshots, the neighbours' deltas it could not place were refused and answered with
    # snapshots, and its agents ended no worse off than the others
    rows = result.rows
    assert rows[-1]["tick"] == 180
    accounting = result.summary["accounting"]
    assert accounting["rejected"] > 0 and accounting["snapshots"] > 0
    acc = np.array(rows[-1]["agents"]["learn/probe_acc"])
    assert acc[4:8].mean() > 0.5 and acc.min() > 0.4


def test_lossy_links_and_a_partition_still_reach_consensus(ray_local, tmp_path: Path) -> None:
    clean = _run(_patrol(240), tmp_path / "clean")
    faults = {
        "messages": {"drop": 0.2, "duplicate": 0.05, "delay": 0.05, "delay_rounds": 2},
        "partitions": [{"from_tick": 60, "to_tick": 120, "split": 2}],
    }
    lossy = _run(_patrol(240, faults=faults), tmp_path / "lossy")
    alone = _run(_patrol(240, gossip={"topology": "isolated"}), tmp_path / "isolated")

    accounting = lossy.summary["accounting"]
    sent = accounting["sent"]
    # every kind of fault happened, in about the asked proportions, and was accounted for
    assert accounting["dropped"] - accounting["dropped_partition"] > 0.1 * sent
    assert accounting["dropped_partition"] > 0
    assert accounting["duplicated"] > 0 and accounting["received"]["duplicates"] > 0
    assert accounting["delayed"] > 0
    # lost messages leave gaps: refused, then healed with snapshots
    assert accounting["rejected"] > 0 and accounting["snapshots"] > 0
    assert clean.summary["accounting"]["dropped"] == 0

    def distance(result: RunResult) -> float:
        return float(result.summary["metrics"]["learn/consensus_distance"])

    # Learning agents never agree exactly; gossip keeps them close. Through 20% loss and a
    # healed partition they end about as close as without faults, and far closer than
    # agents that never share.
    assert distance(lossy) < 2.0 * distance(clean)
    assert distance(lossy) < 0.2 * distance(alone)
    m_clean, m_lossy = clean.summary["metrics"], lossy.summary["metrics"]
    assert m_lossy["learn/probe_acc"] > m_clean["learn/probe_acc"] - 0.1


def test_byzantine_agents_against_robust_aggregation(ray_local, tmp_path: Path) -> None:
    attack = {"byzantine": {"fraction": 0.2, "attack": "sign_flip", "scale": 10.0}}

    def coordinator(aggregator: str, faults: dict[str, Any] | None) -> dict[str, Any]:
        data = _patrol(240)
        data["gossip"]["topology"] = "coordinator"
        data["gossip"]["coordinator"] = {
            "aggregator": aggregator,
            "byzantine": 2,
            "min_completion": 0.75,
        }
        if faults:
            data["faults"] = faults
        return data

    clean = _run(coordinator("fedavg", None), tmp_path / "clean")
    robust = _run(coordinator("multi_krum", attack), tmp_path / "robust")
    plain = _run(coordinator("fedavg", attack), tmp_path / "plain")
    liars = robust.summary["faults"]["byzantine"]
    assert len(liars) == 2  # 20% of 12, rounded
    assert robust.summary["accounting"]["corrupted"] > 0

    def honest(result: RunResult) -> float:
        return float(result.summary["metrics"]["learn/probe_acc_honest"])

    fault_free = clean.summary["metrics"]["learn/probe_acc"]
    assert abs(honest(robust) - fault_free) <= 0.05
    assert honest(plain) < fault_free - 0.05  # the attack is real
    assert honest(plain) < honest(robust) - 0.2


def test_an_interrupted_run_resumes_to_the_same_result(ray_local, tmp_path: Path) -> None:
    data = _patrol(
        120,
        checkpoint={"every_ticks": 50},
        faults={"messages": {"drop": 0.2, "delay": 0.1, "duplicate": 0.05}},
    )
    whole = _run(copy.deepcopy(data), tmp_path / "whole")

    def interrupt(tick: int) -> None:
        if tick >= 80:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(copy.deepcopy(data), tmp_path / "cut", on_tick=interrupt)
    marker = json.loads((tmp_path / "cut" / "checkpoints" / "latest.json").read_text())
    assert marker["ticks"] == 50

    saved = yaml.safe_load((tmp_path / "cut" / "scenario.yaml").read_text())
    resumed = Runner(Scenario.model_validate(saved), tmp_path / "cut", resume=True).run()
    assert resumed.summary["run"]["resumed_from_tick"] == 50
    assert resumed.summary["metrics"] == whole.summary["metrics"]
    assert resumed.summary["accounting"] == whole.summary["accounting"]
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert lines == (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    # messages a delay fault held back at the checkpoint were part of what it saved
    assert whole.summary["accounting"]["delayed"] > 0


def test_resume_refuses_a_run_without_checkpoints(ray_local, tmp_path: Path) -> None:
    from swarm.runner import RunError

    result = _run(_patrol(20), tmp_path / "run")
    with pytest.raises(RunError, match="no complete checkpoint"):
        Runner(Scenario.model_validate(_patrol(20)), result.run_dir, resume=True).run()
