"""Aggregation rules against hand-computed arrays, plus a contract run over every rule."""

from __future__ import annotations

import numpy as np
import pytest

from protocols.aggregation import (
    aggregate,
    clip,
    clipped_mean,
    coordinate_median,
    fedavg,
    krum,
    krum_scores,
    trim_count,
    trimmed_mean,
)
from protocols.compression import DENSE_F32, Compressed
from protocols.config import CoordinatorConfig
from protocols.delta import Delta

# Five deltas of length 3; agent-4 is an outlier. Per column, sorted:
#   col 0: 1 2 3 5 100      median 3, trimmed (k=1) mean (2+3+5)/3 = 10/3
#   col 1: -100 2 2 3 4     median 2, trimmed mean (2+2+3)/3 = 7/3
#   col 2: 0 1 2 3 6        median 2, trimmed mean (1+2+3)/3 = 2
X = np.array(
    [
        [1.0, 2.0, 3.0],
        [2.0, 3.0, 2.0],
        [5.0, 2.0, 1.0],
        [3.0, 4.0, 6.0],
        [100.0, -100.0, 0.0],
    ]
)
# Squared distances between the four honest rows:
#   d(0,1) = 3, d(0,2) = 20, d(0,3) = 17, d(1,2) = 11, d(1,3) = 18, d(2,3) = 33;
#   the outlier's nearest two: d(4,2) = 19430, d(4,0) = 20214 (then d(4,1) = 20217).
KRUM_F1_SCORES = [3 + 17, 3 + 11, 11 + 20, 17 + 18, 19430 + 20214]  # 2 = n - f - 2 nearest


def _delta(sender: str, values, examples: int = 0, version: int = 0) -> Delta:
    v = np.asarray(values, dtype=np.float32)
    payload = Compressed(DENSE_F32, v.size, v)
    return Delta(sender, 0, version, "L", payload, float(np.linalg.norm(v)), examples)


def test_fedavg_uniform_without_examples_and_weighted_with_them() -> None:
    # Prepare
    no_examples = np.zeros(5)
    weights = np.array([1, 1, 2, 0, 0])
    # Execute
    uniform = fedavg(X, no_examples)
    weighted = fedavg(X, weights)
    # Assert: (sum of rows) / 5 and (x0 + x1 + 2 x2) / 4
    assert uniform.dtype == np.float32
    assert np.allclose(uniform, [111 / 5, -89 / 5, 12 / 5])
    assert np.allclose(weighted, [13 / 4, 9 / 4, 7 / 4])


def test_fedavg_refuses_negative_or_misshapen_weights() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        fedavg(X, [1, 1, 1, 1, -1])
    with pytest.raises(ValueError, match="5 weights"):
        fedavg(X, [1, 1])


@pytest.mark.parametrize(
    ("beta", "expected"),
    [
        (0.2, [10 / 3, 7 / 3, 2.0]),  # k = 1
        (0.1, [111 / 5, -89 / 5, 12 / 5]),  # k = floor(0.5) = 0: the plain mean
        (0.4, [3.0, 2.0, 2.0]),  # k = 2: only the median is left
    ],
)
def test_trimmed_mean_cuts_floor_beta_n_from_each_end(beta: float, expected: list[float]) -> None:
    assert np.allclose(trimmed_mean(X, beta), expected)


def test_trimmed_mean_with_ties() -> None:
    # one column, sorted 1 2 2 2 9: cutting 1 and 9 leaves the tied 2s
    ties = np.array([[2.0], [2.0], [1.0], [2.0], [9.0]])
    assert np.allclose(trimmed_mean(ties, 0.2), [2.0])


def test_trim_count_is_exact_floor() -> None:
    # 0.29 * 100 = 28.999999999999996 in floating point; the rule means 29
    assert [trim_count(5, 0.2), trim_count(4, 0.2), trim_count(100, 0.29)] == [1, 0, 29]
    with pytest.raises(ValueError):
        trim_count(5, 0.5)


def test_coordinate_median_odd_and_even() -> None:
    assert np.allclose(coordinate_median(X), [3.0, 2.0, 2.0])
    # even n: the mean of the two middle values (col 0: 1 2 | 3 5 -> 2.5; col 1: 2 2 | 3 4 -> 2.5)
    assert np.allclose(coordinate_median(X[:4]), [2.5, 2.5, 2.5])


def test_krum_scores_and_choice() -> None:
    # Execute
    scores = krum_scores(X, f=1)
    # Assert
    assert np.allclose(scores, KRUM_F1_SCORES)
    assert np.array_equal(krum(X, f=1), X[1])  # lowest score: row 1
    # f = 0: the 3 nearest; scores 40, 32, 64, 68, huge -> still row 1
    assert np.allclose(krum_scores(X, f=0)[:4], [40, 32, 64, 68])
    assert np.array_equal(krum(X, f=0), X[1])


def test_multi_krum_averages_the_m_best_rows() -> None:
    # rows 1 (score 14) and 0 (score 20)
    assert np.allclose(krum(X, f=1, m=2), (X[0] + X[1]) / 2)


@pytest.mark.parametrize(("n", "f"), [(5, 2), (4, 1), (2, 0)])
def test_krum_needs_n_at_least_2f_plus_3(n: int, f: int) -> None:
    with pytest.raises(ValueError, match=r"n >= 2f \+ 3"):
        krum(np.zeros((n, 3)), f)


def test_krum_boundary_n_equals_2f_plus_3_is_allowed() -> None:
    assert krum(np.zeros((7, 3)), 2).shape == (3,)


def test_krum_tie_goes_to_the_first_sender() -> None:
    # 1-D points 0, 1, 3, 4 with f = 0 (2 nearest): scores 10, 5, 5, 10 -> rows 1 and 3 tie.
    # Sender order, not arrival order, decides: agent-a (value 3) precedes agent-b (value 1).
    cfg = CoordinatorConfig(aggregator="krum", byzantine=0)
    deltas = [_delta("agent-b", [1.0]), _delta("agent-z", [4.0]), _delta("agent-a", [3.0])]
    deltas.append(_delta("agent-0", [0.0]))
    assert np.allclose(krum_scores(np.array([[0.0], [3.0], [1.0], [4.0]]), 0), [10, 5, 5, 10])
    assert np.array_equal(aggregate(cfg, deltas, 1), [3.0])
    assert np.array_equal(aggregate(cfg, deltas[::-1], 1), [3.0])


def test_clip_scales_only_rows_above_tau() -> None:
    rows = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0], [0.0, -6.0, 8.0], [0.0, 0.0, 0.0]])
    # norms 5, 1, 10, 0 -> with tau = 2: x 2/5, kept, x 1/5, kept (no division by zero)
    assert np.allclose(
        clip(rows, 2.0), [[1.2, 1.6, 0.0], [0.0, 0.0, 1.0], [0.0, -1.2, 1.6], [0.0, 0.0, 0.0]]
    )


def test_clipped_mean_hand_computed() -> None:
    rows = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0], [0.0, -6.0, 8.0]])
    # clipped rows [1.2, 1.6, 0], [0, 0, 1], [0, -1.2, 1.6]
    assert np.allclose(clipped_mean(rows, 2.0, [0, 0, 0]), [0.4, 0.4 / 3, 2.6 / 3])
    # weights 1, 0, 3: ([1.2, 1.6, 0] + 3 [0, -1.2, 1.6]) / 4
    assert np.allclose(clipped_mean(rows, 2.0, [1, 0, 3]), [0.3, -0.5, 1.2])
    # tau above every norm: plain fedavg
    assert np.allclose(clipped_mean(rows, 100.0, [1, 0, 3]), fedavg(rows, [1, 0, 3]))


def test_aggregate_dispatches_and_orders_by_sender() -> None:
    # Prepare: X's rows as agent-0..agent-4, submitted in reverse, examples 1, 1, 2, 0, 0
    examples = [1, 1, 2, 0, 0]
    deltas = [_delta(f"agent-{i}", X[i], examples[i]) for i in reversed(range(5))]
    expected = {
        "fedavg": [13 / 4, 9 / 4, 7 / 4],
        "trimmed_mean": [10 / 3, 7 / 3, 2.0],
        "median": [3.0, 2.0, 2.0],
        "krum": X[1],
        "clipped_mean": clipped_mean(X, 1.0, examples),
    }
    for name, want in expected.items():
        cfg = CoordinatorConfig.model_validate(
            {"aggregator": name, "byzantine": 1, "clip_norm": 1.0}
        )
        # Execute
        got = aggregate(cfg, deltas, 3)
        # Assert
        assert got.dtype == np.float32 and got.shape == (3,)
        assert np.allclose(got, want), name


def test_aggregate_refuses_empty_and_wrong_shape() -> None:
    with pytest.raises(ValueError, match="empty"):
        aggregate(CoordinatorConfig(), [], 3)
    with pytest.raises(ValueError, match="shape"):
        aggregate(CoordinatorConfig(), [_delta("agent-0", [1.0, 2.0])], 3)


# ---------------------------------------------------------------- contract over every rule

RULES = [
    CoordinatorConfig(aggregator="fedavg"),
    CoordinatorConfig(aggregator="trimmed_mean", trim_fraction=0.2),
    CoordinatorConfig(aggregator="median"),
    CoordinatorConfig(aggregator="krum", byzantine=1),
    CoordinatorConfig(aggregator="clipped_mean", clip_norm=5.0),
]
ROBUST = [c for c in RULES if c.aggregator != "fedavg"]


def _random_deltas(n: int, p: int, seed: int) -> list[Delta]:
    rng = np.random.default_rng(seed)
    return [_delta(f"agent-{i}", rng.normal(size=p), int(rng.integers(0, 10))) for i in range(n)]


@pytest.mark.parametrize("cfg", RULES, ids=lambda c: c.aggregator)
def test_contract_identical_deltas_give_that_delta(cfg: CoordinatorConfig) -> None:
    v = np.array([0.5, -1.25, 2.0, 0.0], np.float32)  # norm < clip_norm: clipping keeps it
    deltas = [_delta(f"agent-{i}", v, examples=i) for i in range(7)]
    assert np.allclose(aggregate(cfg, deltas, 4), v, atol=1e-6)


@pytest.mark.parametrize("cfg", RULES, ids=lambda c: c.aggregator)
def test_contract_permutation_of_inputs_gives_the_same_result(cfg: CoordinatorConfig) -> None:
    deltas = _random_deltas(7, 50, seed=3)
    shuffled = [deltas[i] for i in np.random.default_rng(4).permutation(7)]
    assert shuffled != deltas
    assert np.array_equal(aggregate(cfg, deltas, 50), aggregate(cfg, shuffled, 50))


def _with_sign_flip_outlier(seed: int) -> tuple[list[Delta], np.ndarray]:
    rng = np.random.default_rng(seed)
    honest = 1.0 + 0.05 * rng.normal(size=(7, 20))  # (7, 20) all near the ones vector
    rows = honest.copy()
    rows[3] = -100.0 * honest[3]  # one Byzantine agent: its delta sign-flipped and x100
    deltas = [_delta(f"agent-{i}", rows[i], examples=10) for i in range(7)]
    return deltas, np.delete(honest, 3, axis=0).mean(axis=0)


@pytest.mark.parametrize("cfg", ROBUST, ids=lambda c: c.aggregator)
def test_contract_robust_rules_resist_one_huge_outlier(cfg: CoordinatorConfig) -> None:
    deltas, honest_mean = _with_sign_flip_outlier(seed=5)
    if cfg.aggregator == "clipped_mean":  # clip at the honest norm, as ClippedGossip tunes tau
        cfg = cfg.model_copy(update={"clip_norm": float(np.linalg.norm(honest_mean))})
    err = np.linalg.norm(aggregate(cfg, deltas, 20) - honest_mean)
    # clipped_mean keeps ~(6 - 1)/7 of the honest mean (error ~2/7); the others far less
    assert err < 0.5 * np.linalg.norm(honest_mean)


def test_contract_fedavg_is_dragged_by_the_outlier() -> None:
    deltas, honest_mean = _with_sign_flip_outlier(seed=5)
    err = np.linalg.norm(aggregate(CoordinatorConfig(), deltas, 20) - honest_mean)
    # (6 h - 100 h) / 7 = -13.4 h: the error is ~14 times the honest mean's norm
    assert err > 10 * np.linalg.norm(honest_mean)
