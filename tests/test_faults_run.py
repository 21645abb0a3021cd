"""Faults on a real Ray runtime: a killed shard, lossy links and partitions, Byzantine agents,
and an interrupted run resumed to the same result (issue 8). Every run's message accounting
is checked by the conftest fixture `runs_account_for_every_message`.

The runs cost ~2.7 s of actor start-up each plus ~18 ms a tick, so the tests share them: each
of SCENARIOS is run once per module (`runs`), by the first test that asks for it and inside
that test, so that the conftest's check sees it; besides those, the lossy run is run again and
cut short, and resumed twice. Learned figures depend on the CPU's kernels (MKL's GEMM path
changes the last bits, and learning amplifies them): each threshold on one was measured under
three kernel families (ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE; ATEN_CPU_CAPABILITY=avx2
MKL_CBWR=AVX2; and native, AVX-512 here; Ray's actors inherit the driver's environment) and
states its property with a margin over the measured range, quoted as "lo..hi"."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from swarm import checkpoint
from swarm.resume import tick_dir
from swarm.runner import RunError, Runner, RunResult
from swarm.scenario import Scenario, load_scenario

pytestmark = pytest.mark.slow

PATROL = Path(__file__).parents[1] / "scenarios" / "drone_patrol.yaml"

#: The lossy, clean and isolated runs end here: by then isolated agents have drifted 5x
#: farther apart than sharing ones (and the gap widens: 10x at 240 ticks).
LOSSY_TICKS = 120
#: The lossy run's partition cuts the ring in two halves (agents 0-5 | 6-11) in these ticks.
PARTITION = (60, 100)
#: The coordinator runs end here: multi-Krum's honest agents under attack have passed
#: fault-free FedAvg (they catch it up between 80 and 100 ticks), FedAvg's are about at chance.
BYZANTINE_TICKS = 120


def _patrol(ticks: int, **sections: Any) -> dict[str, Any]:
    """The shipped drone patrol (12 drones, 3 shards), shorter, without the isolated twins,
    and without checkpoints unless `sections` asks (the shipped file saves every 100 ticks).
    Its drones keep their zones and share only weights, as when the figures in this file's
    comments were measured: these tests are about faults, not re-tasking
    (tests/test_retasking.py) or sightings (which swarm validate refuses under message faults
    and liars)."""
    data = load_scenario(PATROL).model_dump(mode="json")
    data.update(ticks=ticks, ray={"dashboard": False, "num_cpus": 2})
    data["gossip"]["sightings"]["per_round"] = 0
    data["world"].update(rotation_s=None, arrivals=[], departures=[{"agent": 11, "at_s": 200.0}])
    data["baseline"]["isolated"] = False
    data["checkpoint"] = {"every_ticks": 0}
    for key, value in sections.items():
        data[key] = value
    return data


def _coordinator(aggregator: str, faults: dict[str, Any] | None = None) -> dict[str, Any]:
    data = _patrol(BYZANTINE_TICKS)
    data["gossip"]["topology"] = "coordinator"
    data["gossip"]["coordinator"] = {
        "aggregator": aggregator,
        "byzantine": 2,
        "min_completion": 0.75,
    }
    if faults:
        data["faults"] = faults
    return data


ATTACK = {"byzantine": {"fraction": 0.2, "attack": "sign_flip", "scale": 10.0}}

#: Each run the tests share, by name: a fresh scenario dict for it.
SCENARIOS: dict[str, Callable[[], dict[str, Any]]] = {
    # checkpoints every 50 ticks; shard 1 dies 10 ticks after the one at 100. Delayed messages
    # too: those the killed process held die with it (dropped), and the ones held at the
    # checkpoint are not sent twice (the accounting must add up)
    "killed": lambda: _patrol(
        160,
        checkpoint={"every_ticks": 50},
        faults={"kill": [{"shard": 1, "at_tick": 110}], "messages": {"delay": 0.3}},
    ),
    "clean": lambda: _patrol(LOSSY_TICKS),
    # 20% loss, duplicates, messages held two rounds, and the partition. Checkpoints every 25
    # ticks for the resume tests: the one at 75 (inside the partition) holds no delayed
    # message, the last, at 100, holds one (the fault plan decides them from the seed alone)
    "lossy": lambda: _patrol(
        LOSSY_TICKS,
        checkpoint={"every_ticks": 25},
        faults={
            "messages": {"drop": 0.2, "duplicate": 0.05, "delay": 0.05, "delay_rounds": 2},
            "partitions": [{"from_tick": PARTITION[0], "to_tick": PARTITION[1], "split": 2}],
        },
    ),
    "isolated": lambda: _patrol(LOSSY_TICKS, gossip={"topology": "isolated"}),
    "fedavg": lambda: _coordinator("fedavg"),
    "multi_krum_attacked": lambda: _coordinator("multi_krum", ATTACK),
    "fedavg_attacked": lambda: _coordinator("fedavg", ATTACK),
}


def _run(data: dict[str, Any], run_dir: Path, **kwargs: Any) -> RunResult:
    run_dir.mkdir(parents=True, exist_ok=True)
    return Runner(Scenario.model_validate(data), run_dir, **kwargs).run()


@pytest.fixture(scope="module")
def runs(ray_local, tmp_path_factory) -> Callable[[str], RunResult]:
    """runs(name): the finished run of SCENARIOS[name], made on first use, in that test."""
    root = tmp_path_factory.mktemp("faults_run")
    done: dict[str, RunResult] = {}

    def get(name: str) -> RunResult:
        if name not in done:
            done[name] = _run(SCENARIOS[name](), root / name)
        return done[name]

    return get


def _chance(result: RunResult) -> float:
    """Probe accuracy of a guess: the probe is balanced over the event classes."""
    return 1.0 / len(result.summary["classes"])


def test_a_killed_shard_restarts_from_its_checkpoint(runs) -> None:
    result = runs("killed")
    (kill,) = result.summary["faults"]["kills"]
    assert kill["shard"] == 1 and kill["tick"] == 110
    assert kill["agents"] == [4, 5, 6, 7]
    # Ray restarted the actor, which restored its agents from the checkpoint at tick 100 ...
    assert kill["checkpoint_ticks"] == 100
    before, after = np.array(kill["probe_acc_checkpoint"]), np.array(kill["probe_acc_restored"])
    # ... learned ones (chance is 0.2 on 5 balanced classes; their mean: 0.347..0.350), and
    # right after the restore they score exactly what they scored at the checkpoint: the same
    # weights on the same probe with the same kernels, every agent's figure bit-equal.
    chance = _chance(result)
    assert before.mean() > chance + 0.1
    np.testing.assert_array_equal(after, before)
    # the run completed, and the restored shard took part again: its new epoch went out as
    # snapshots, the neighbours' deltas it could not place were refused and answered with
    # snapshots, ...
    rows = result.rows
    assert rows[-1]["tick"] == 160
    accounting = result.summary["accounting"]
    assert accounting["rejected"] > 0 and accounting["snapshots"] > 0
    # ... and its agents kept learning with the others: 50 ticks later their mean is well past
    # where the restore left it (+0.215..+0.218; learning alone, shard 1's agents gain 0.035
    # from tick 100 to 160 in the isolated run) and level with the other shards' agents'
    # (-0.013..-0.008), every one of them clearly above chance (their lowest: 0.500..0.507).
    acc = np.array(rows[-1]["agents"]["learn/probe_acc"])
    restored, others = acc[4:8], np.delete(acc, range(4, 8))
    assert restored.mean() > after.mean() + 0.1
    assert restored.mean() > others.mean() - 0.1
    assert restored.min() > chance + 0.15


def test_lossy_links_and_a_partition_still_reach_consensus(runs) -> None:
    clean, lossy, alone = runs("clean"), runs("lossy"), runs("isolated")

    accounting = lossy.summary["accounting"]
    sent = accounting["sent"]
    # every kind of fault happened, in about the asked proportions, and was accounted for
    assert accounting["dropped"] - accounting["dropped_partition"] > 0.1 * sent
    assert accounting["duplicated"] > 0 and accounting["received"]["duplicates"] > 0
    assert accounting["delayed"] > 0
    # the cut crosses the ring between agents 5 and 6, inside shard 1, and between 11 and 0,
    # across shards: it cut one message each way in every gossip round from its first tick,
    # and none once it healed
    rounds = len(range(*PARTITION, SCENARIOS["lossy"]()["gossip"]["interval"]))
    assert accounting["dropped_partition"] == 2 * rounds
    # lost messages leave gaps: refused, then healed with snapshots
    assert accounting["rejected"] > 0 and accounting["snapshots"] > 0
    assert clean.summary["accounting"]["dropped"] == 0

    def distance(result: RunResult) -> float:
        return float(result.summary["metrics"]["learn/consensus_distance"])

    # Learning agents never agree exactly; gossip keeps them close. Through 20% loss and a
    # healed partition they end about as close as without faults (0.985..0.987 of the clean
    # distance), and far closer than agents that never share (0.188..0.189 of theirs). A gap
    # left unhealed would cut its link for good, and the swarm drift apart like isolated
    # agents. (These figures cannot tell a partition that heals from one that does not: each
    # half patrols every zone, and they stay together, 1.02 of the clean distance and the
    # same accuracy if it never heals; the count of cut messages above can: 26, not 16.)
    assert distance(lossy) < 1.25 * distance(clean)
    assert distance(lossy) < 0.3 * distance(alone)
    # and they learn about as well (lossy - clean probe accuracy: -0.011..-0.009)
    m_clean, m_lossy = clean.summary["metrics"], lossy.summary["metrics"]
    assert m_lossy["learn/probe_acc"] > m_clean["learn/probe_acc"] - 0.05


def test_byzantine_agents_against_robust_aggregation(runs) -> None:
    clean, robust = runs("fedavg"), runs("multi_krum_attacked")
    plain = runs("fedavg_attacked")
    liars = robust.summary["faults"]["byzantine"]
    assert len(liars) == 2  # 20% of 12, rounded
    assert robust.summary["accounting"]["corrupted"] > 0

    def honest(result: RunResult) -> float:
        return float(result.summary["metrics"]["learn/probe_acc_honest"])

    fault_free = clean.summary["metrics"]["learn/probe_acc"]
    # multi-Krum leaves the liars out: the honest agents learn as well as without them
    # (robust - fault-free: +0.107..+0.120; averaging only the updates closest to each other,
    # it learns faster than FedAvg here) ...
    assert honest(robust) > fault_free - 0.05
    # ... while FedAvg takes their flipped updates in, and the honest agents unlearn to about
    # chance (plain: 0.167..0.253; fault-free - plain: 0.353..0.440, robust - plain:
    # 0.460..0.547)
    assert honest(plain) < fault_free - 0.2  # the attack is real
    assert honest(plain) < honest(robust) - 0.3


def _held(run_dir: Path, ticks: int, shards: int) -> list[Any]:
    """The messages a delay fault held back, as the shards saved them in a checkpoint."""
    held: list[Any] = []
    for shard in range(shards):
        _, meta = checkpoint.load(tick_dir(run_dir / "checkpoints", ticks) / f"shard-{shard}.npz")
        held += meta["exchange"]["held"]
    return held


def _resume(run_dir: Path) -> RunResult:
    saved = yaml.safe_load((run_dir / "scenario.yaml").read_text())
    return Runner(Scenario.model_validate(saved), run_dir, resume=True).run()


def _same_run(resumed: RunResult, whole: RunResult) -> None:
    """The same arithmetic on the same machine: equal to the last bit."""
    assert resumed.summary["metrics"] == whole.summary["metrics"]
    assert resumed.summary["accounting"] == whole.summary["accounting"]
    lines = (resumed.run_dir / "metrics.jsonl").read_text().splitlines()
    assert lines == (whole.run_dir / "metrics.jsonl").read_text().splitlines()


def test_an_interrupted_run_resumes_to_the_same_result(runs, tmp_path: Path) -> None:
    # the lossy run, interrupted once its checkpoint at tick 75 is complete (the rows up to it
    # written, and every shard's file and the world's), before the one at 100
    whole = runs("lossy")

    def interrupt(tick: int) -> None:
        if tick >= 85:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(SCENARIOS["lossy"](), tmp_path / "cut", on_tick=interrupt)
    marker = json.loads((tmp_path / "cut" / "checkpoints" / "latest.json").read_text())
    assert marker["ticks"] == 75

    resumed = _resume(tmp_path / "cut")
    assert resumed.summary["run"]["resumed_from_tick"] == 75
    # from inside the partition on, with gaps to heal and lost, duplicated and delayed
    # messages: the same faults at the same rounds, the same run
    _same_run(resumed, whole)


#: A library bug found while making these tests truthful (issue 15); the test below runs into
#: it until it is fixed, then checks the resume.
HELD_SIGNED_WITH_THE_OLD_KEY = (
    "messages held back at a checkpoint are saved signed with the HMAC key of the interrupted "
    "run; a resumed run without gossip.key_file has a key of its own, and the receiver refuses "
    "them (UNAUTHENTICATED bad_signature). With a key_file the resume equals the whole run."
)


def test_a_resumed_run_sends_the_messages_held_at_its_checkpoint(runs, tmp_path: Path) -> None:
    # the lossy run's last checkpoint, at tick 100, holds a message a delay fault held back
    # (agent 4's of round 100, due two rounds later); resumed from there, a copy of the run
    # must end as it did
    from ray.exceptions import RayTaskError

    whole = runs("lossy")
    assert _held(whole.run_dir, 100, whole.summary["shards"])
    shutil.copytree(whole.run_dir, tmp_path / "copy")
    try:
        resumed = _resume(tmp_path / "copy")
    except RayTaskError as exc:
        if "bad_signature" in str(exc):
            pytest.xfail(HELD_SIGNED_WITH_THE_OLD_KEY)
        raise
    assert resumed.summary["run"]["resumed_from_tick"] == 100
    _same_run(resumed, whole)


def test_resume_refuses_a_run_without_checkpoints(runs) -> None:
    finished = runs("clean")  # any finished run without checkpoints
    with pytest.raises(RunError, match="no complete checkpoint"):
        Runner(Scenario.model_validate(SCENARIOS["clean"]()), finished.run_dir, resume=True).run()
