"""Fault injection plan: determinism, observed rates, partitions, Byzantine agents, configs."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydantic
import pytest

from protocols.compression import DENSE_F32, Compressed, compress
from protocols.config import CompressionConfig
from protocols.delta import Delta
from protocols.faults import (
    DELIVER,
    Byzantine,
    Fate,
    FaultPlan,
    FaultsConfig,
    KillShard,
    MessageFaults,
    Partition,
    corrupt_delta,
)
from protocols.gossip import agent_name
from protocols.wire import from_proto, to_proto

LOSSY = FaultsConfig(messages=MessageFaults(drop=0.1, duplicate=0.05, delay=0.15, delay_rounds=3))
RECEIVERS = ["shard-0", "shard-1", "device-7"]


def _fates(plan: FaultPlan, order: list[tuple[int, int, str, int]]) -> dict:
    return {key: plan.fate(*key) for key in order}


def _keys(rounds: int, senders: int) -> list[tuple[int, int, str, int]]:
    return [
        (r, s, recv, a)
        for r in range(rounds)
        for s in range(senders)
        for recv in RECEIVERS
        for a in range(2)
    ]


# -- messages ------------------------------------------------------------------------------------


def test_fate_is_a_pure_function_of_its_arguments() -> None:
    keys = _keys(20, 8)
    first = _fates(FaultPlan(LOSSY, 8, seed=5), keys)
    again = _fates(FaultPlan(LOSSY, 8, seed=5), list(reversed(keys)))  # another plan, order
    assert first == again
    other_seed = _fates(FaultPlan(LOSSY, 8, seed=6), keys)
    assert sum(first[k] != other_seed[k] for k in keys) > len(keys) // 10
    # The faults seed overrides the scenario seed.
    pinned = LOSSY.model_copy(update={"seed": 5})
    assert _fates(FaultPlan(pinned, 8, seed=99), keys) == first


def test_fate_is_the_same_in_another_process() -> None:
    """A receiver's name enters the key by CRC-32, never by Python's salted hash()."""
    keys = _keys(3, 4)
    here = [FaultPlan(LOSSY, 4, seed=11).fate(*k).kind for k in keys]
    code = (
        "from protocols.faults import FaultPlan, FaultsConfig, MessageFaults\n"
        "cfg = FaultsConfig(messages=MessageFaults(drop=0.1, duplicate=0.05, delay=0.15,"
        " delay_rounds=3))\n"
        f"keys = {keys!r}\n"
        "print(' '.join(FaultPlan(cfg, 4, seed=11).fate(*k).kind for k in keys))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == here


def _within(count: int, n: int, p: float) -> bool:
    """count within 6 binomial standard deviations of n p (two-sided, about 2e-9 under the
    normal approximation; the draws are seeded, so this either always or never holds)."""
    return abs(count - n * p) <= 6 * math.sqrt(n * p * (1 - p))


def test_observed_fault_rates_match_the_config() -> None:
    plan = FaultPlan(LOSSY, 50, seed=0)
    fates = [plan.fate(r, s, recv) for r in range(100) for s in range(50) for recv in RECEIVERS]
    n = len(fates)  # 15000 messages
    kinds = [f.kind for f in fates]
    for kind, p in [("drop", 0.1), ("duplicate", 0.05), ("delay", 0.15), ("deliver", 0.7)]:
        assert _within(kinds.count(kind), n, p), (kind, kinds.count(kind), n * p)
    assert {f.rounds for f in fates if f.kind == "delay"} == {3}
    assert {f.rounds for f in fates if f.kind != "delay"} == {0}


def test_a_resend_gets_a_fate_of_its_own() -> None:
    plan = FaultPlan(FaultsConfig(messages=MessageFaults(drop=0.5)), 10, seed=1)
    keys = [(r, s, "shard-0") for r in range(200) for s in range(10)]  # 2000 messages
    both = sum(
        plan.fate(*k, attempt=0).kind == plan.fate(*k, attempt=1).kind == "drop" for k in keys
    )
    assert _within(both, len(keys), 0.25)  # independent draws: 0.5 * 0.5


def test_no_faults_deliver_everything() -> None:
    cfg = FaultsConfig()
    assert not cfg.active
    plan = FaultPlan(cfg, 4, seed=0)
    assert all(plan.fate(r, s, "x") == DELIVER for r in range(10) for s in range(4))
    assert plan.byzantine == frozenset()
    assert plan.kills_at(1) == []
    assert not plan.partitioned(0, 0, 3)
    assert Fate("deliver", 0) == DELIVER


@pytest.mark.parametrize(
    "cfg",
    [
        FaultsConfig(messages=MessageFaults(delay=0.01)),
        FaultsConfig(partitions=[Partition(from_tick=0, to_tick=1, split=2)]),
        FaultsConfig(kill=[KillShard(shard=0, at_tick=1)]),
        FaultsConfig(byzantine=Byzantine(agents=[1])),
        FaultsConfig(byzantine=Byzantine(fraction=0.1)),
    ],
    ids=["messages", "partitions", "kill", "byzantine_agents", "byzantine_fraction"],
)
def test_any_section_makes_the_config_active(cfg: FaultsConfig) -> None:
    assert cfg.active


# -- partitions and kills ------------------------------------------------------------------------


def test_partition_by_groups_leaves_the_unlisted_agents_a_group_of_their_own() -> None:
    cfg = FaultsConfig(partitions=[Partition(from_tick=10, to_tick=20, groups=[[0, 1], [2, 3]])])
    plan = FaultPlan(cfg, 6, seed=0)
    assert plan.partitioned(10, 0, 2) and plan.partitioned(19, 3, 1)
    assert plan.partitioned(15, 0, 4) and plan.partitioned(15, 2, 5)  # 4, 5: the third group
    assert not plan.partitioned(15, 0, 1) and not plan.partitioned(15, 4, 5)
    assert not plan.partitioned(9, 0, 2) and not plan.partitioned(20, 0, 2)  # [from, to)


def test_partition_by_split_cuts_contiguous_blocks() -> None:
    cfg = FaultsConfig(
        partitions=[
            Partition(from_tick=0, to_tick=5, split=3),
            Partition(from_tick=3, to_tick=8, groups=[[6]]),
        ]
    )
    plan = FaultPlan(cfg, 7, seed=0)
    side = [[b for b in range(7) if not plan.partitioned(0, a, b)] for a in range(7)]
    assert side == [[0, 1, 2]] * 3 + [[3, 4]] * 2 + [[5, 6]] * 2  # numpy.array_split sizes
    assert plan.partitioned(4, 5, 6) and plan.partitioned(7, 5, 6)  # the second one, alone
    assert not plan.partitioned(7, 0, 5)


def test_kills_at_lists_each_shard_once() -> None:
    cfg = FaultsConfig(
        kill=[
            KillShard(shard=2, at_tick=5),
            KillShard(shard=0, at_tick=5),
            KillShard(shard=2, at_tick=5),
            KillShard(shard=1, at_tick=9),
        ]
    )
    plan = FaultPlan(cfg, 3, seed=0)
    assert plan.kills_at(5) == [0, 2]
    assert plan.kills_at(9) == [1]
    assert plan.kills_at(6) == []


# -- Byzantine agents ----------------------------------------------------------------------------


def test_byzantine_agents_listed_or_chosen_with_the_seed() -> None:
    assert FaultPlan(
        FaultsConfig(byzantine=Byzantine(agents=[4, 1])), 5, seed=0
    ).byzantine == frozenset({1, 4})
    by_fraction = FaultsConfig(byzantine=Byzantine(fraction=0.2))
    chosen = [FaultPlan(by_fraction, 10, seed=s).byzantine for s in range(8)]
    assert all(len(c) == 2 and c <= set(range(10)) for c in chosen)
    assert chosen[3] == FaultPlan(by_fraction, 10, seed=3).byzantine  # reproducible
    assert len(set(chosen)) > 1  # and the seed matters
    half_up = FaultsConfig(byzantine=Byzantine(fraction=0.25))  # 2.5 agents
    assert len(FaultPlan(half_up, 10, seed=0).byzantine) == 3
    assert FaultPlan(FaultsConfig(byzantine=Byzantine(fraction=0.04)), 10, 0).byzantine == set()


def _plan(**byzantine) -> FaultPlan:
    return FaultPlan(FaultsConfig(byzantine=Byzantine(agents=[1], **byzantine)), 4, seed=7)


def test_corrupt_attacks() -> None:
    q = np.linspace(-1, 1, 10_000)  # float64 in: float32 out
    flipped = _plan(attack="sign_flip", scale=3.0).corrupt(1, 0, q)
    assert flipped.dtype == np.float32 and flipped.shape == q.shape
    assert np.allclose(flipped, -3.0 * q, rtol=1e-6)
    assert np.allclose(_plan(attack="scale").corrupt(1, 0, q), 10.0 * q, rtol=1e-6)  # default
    noisy = _plan(attack="noise", noise_std=2.0)
    z = noisy.corrupt(1, 4, q)
    assert z.dtype == np.float32 and z.shape == q.shape
    assert abs(float(z.mean())) < 6 * 2.0 / 100  # 6 standard errors of 10^4 draws
    assert abs(float(z.std()) - 2.0) < 0.1
    assert np.array_equal(z, noisy.corrupt(1, 4, np.zeros_like(q)))  # independent of q
    assert np.array_equal(z, _plan(attack="noise", noise_std=2.0).corrupt(1, 4, q))  # seeded
    assert not np.array_equal(z, noisy.corrupt(1, 5, q))  # another round
    assert not np.array_equal(z, noisy.corrupt(2, 4, q))  # another agent


def _delta(sender: int, values: np.ndarray, cfg: CompressionConfig, **kw) -> Delta:
    payload = compress(values, cfg)
    norm = float(np.linalg.norm(payload.decode().astype(np.float64)))
    return Delta(agent_name(sender), 6, 3, "L", payload, norm, examples=9, epoch=2, **kw)


@pytest.mark.parametrize("kind", ["none", "topk", "int8", "topk_int8"])
def test_corrupt_delta_recompresses_and_keeps_the_header(kind: str) -> None:
    cfg = CompressionConfig(kind=kind, ratio=0.25)
    plan = FaultPlan(FaultsConfig(byzantine=Byzantine(agents=[1])), 4, seed=0)  # -10 q
    values = np.random.default_rng(0).normal(size=64).astype(np.float32)
    honest = _delta(0, values, cfg)
    assert corrupt_delta(honest, plan, cfg) is honest
    lie = _delta(1, values, cfg)
    bad = corrupt_delta(lie, plan, cfg)
    header = ("sender", "round", "base_version", "layout", "examples", "epoch", "snapshot")
    assert [getattr(bad, f) for f in header] == [getattr(lie, f) for f in header]
    assert bad.payload.encoding == lie.payload.encoding
    q, got = lie.payload.decode(), bad.payload.decode()
    tol = 10 * np.abs(q).max() / 127 if "int8" in kind else 1e-5  # one int8 step of -10 q
    assert np.abs(got - (-10.0 * q)).max() <= tol
    assert bad.norm == float(np.linalg.norm(got.astype(np.float64)))
    key = b"k" * 32  # the receivers' wire checks (signature, norm) accept the lie
    back = from_proto(to_proto(bad, key), key=key, num_params=64, layout="L")
    assert np.array_equal(back.payload.decode(), got)


def test_corrupt_delta_leaves_snapshots_truthful() -> None:
    plan = FaultPlan(FaultsConfig(byzantine=Byzantine(agents=[1])), 4, seed=0)
    values = np.ones(8, np.float32)
    snap = Delta(agent_name(1), 0, 4, "L", Compressed(DENSE_F32, 8, values), 8**0.5, snapshot=True)
    assert corrupt_delta(snap, plan, CompressionConfig()) is snap


# -- config validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: MessageFaults(drop=0.5, duplicate=0.3, delay=0.3), "must be <= 1"),
        (lambda: MessageFaults(drop=1.5), "less than or equal to 1"),
        (lambda: MessageFaults(delay=0.1, delay_rounds=0), "greater than or equal to 1"),
        (lambda: MessageFaults(dorp=0.1), "dorp"),
        (lambda: Partition(from_tick=0, to_tick=5, groups=[[0]], split=2), "exactly one"),
        (lambda: Partition(from_tick=0, to_tick=5), "exactly one"),
        (lambda: Partition(from_tick=5, to_tick=5, split=2), "must be > from_tick"),
        (lambda: Partition(from_tick=0, to_tick=5, split=1), "greater than or equal to 2"),
        (lambda: Partition(from_tick=0, to_tick=5, groups=[[0, 1], [1]]), "two groups"),
        (lambda: KillShard(shard=0, at_tick=0), "greater than or equal to 1"),
        (lambda: Byzantine(agents=[1], fraction=0.1), "not both"),
        (lambda: Byzantine(fraction=0.6), "less than or equal to 0.5"),
        (lambda: Byzantine(agents=[2, 2]), "distinct"),
        (lambda: Byzantine(attack="flip"), "sign_flip"),
        (lambda: Byzantine(noise_std=0), "greater than 0"),
        (lambda: FaultsConfig(seed="3"), "valid integer"),
    ],
)
def test_invalid_configs_are_refused(make, words: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=words):
        make()


@pytest.mark.parametrize(
    ("cfg", "words"),
    [
        (FaultsConfig(byzantine=Byzantine(agents=[0, 4])), r"agents \[4\] are out of range"),
        (
            FaultsConfig(partitions=[Partition(from_tick=0, to_tick=2, groups=[[1], [9]])]),
            r"partitions\[0\]: agent 9 is out of range",
        ),
        (
            FaultsConfig(partitions=[Partition(from_tick=0, to_tick=2, split=5)]),
            "split 5 is more blocks than 4 agents",
        ),
    ],
)
def test_plan_refuses_agents_out_of_range(cfg: FaultsConfig, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        FaultPlan(cfg, 4, seed=0)
