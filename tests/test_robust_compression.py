"""Robust coordinator rules with the shipped compression (top-k + int8).

A coordinate-wise rule compares the agents' values coordinate by coordinate. With each agent's
own top-k most coordinates are zero in most rows, so the median is zero and the global model
never moves (issue 17: 19% probe accuracy for a whole run). Under the robust rules the agents
send the round's shared coordinates (protocols.compression.shared_indices) instead.
"""

from __future__ import annotations

import numpy as np
import pytest

from protocols import aggregation
from protocols.compression import compress, shared_indices
from protocols.config import CompressionConfig, CoordinatorConfig
from protocols.coordinator import FederatedClient

P = 4096
TOPK = CompressionConfig(kind="topk_int8", ratio=0.08)


def test_shared_indices_are_a_function_of_the_round_alone() -> None:
    a, b = shared_indices(P, 0.08, 7), shared_indices(P, 0.08, 7)
    assert np.array_equal(a, b)
    assert a.dtype == np.uint32 and a.size == int(np.ceil(0.08 * P))
    assert np.all(np.diff(a.astype(np.int64)) > 0)  # strictly increasing, as the wire needs
    assert int(a[-1]) < P
    other = shared_indices(P, 0.08, 8)
    assert len(np.intersect1d(a, other)) < a.size // 2  # another round, other coordinates
    assert np.array_equal(shared_indices(10, 1.0, 3), np.arange(10, dtype=np.uint32))


def test_compress_sends_the_given_coordinates_with_the_same_encoding() -> None:
    v = np.random.default_rng(0).normal(size=P).astype(np.float32)
    idx = shared_indices(P, 0.08, 1)
    own, shared = compress(v, TOPK), compress(v, TOPK, idx)
    assert shared.encoding == own.encoding and shared.values.size == own.values.size
    assert np.array_equal(shared.indices, idx)
    # int8 of the chosen values: each within half a quantisation step of the truth
    assert np.max(np.abs(shared.decode()[idx] - v[idx])) <= shared.scale / 2 + 1e-7
    assert not np.any(shared.decode()[np.setdiff1d(np.arange(P), idx)])


def _round(shared: bool, n: int = 15, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """One coordinator round of n agents whose updates differ mostly by their own noise (as
    agents on different data do): (decoded deltas (n, P), the true updates (n, P), the largest
    int8 step of any agent)."""
    rng = np.random.default_rng(seed)
    common = 0.2 * rng.normal(size=P)
    x0 = np.zeros(P, np.float32)
    rows, truth, step = [], [], 0.0
    for i in range(n):
        client = FederatedClient(
            local=[i], x0=x0, compression=TOPK, layout="L", shared_coordinates=shared
        )
        x = (common + rng.normal(size=P)).astype(np.float32)[None]
        (delta,) = client.make_deltas(x, 0, [1])
        rows.append(delta.payload.decode())
        truth.append(x[0])
        step = max(step, delta.payload.scale)
    return np.stack(rows), np.stack(truth), step


def test_only_shared_coordinates_give_a_coordinate_wise_rule_values_to_compare() -> None:
    own, _, _ = _round(shared=False)
    shared, _, _ = _round(shared=True)
    # the share of coordinates a majority of the agents sent a value for
    majority = own.shape[0] // 2 + 1
    own_sent = np.count_nonzero(own, axis=0)  # (P,) agents that sent each coordinate
    assert np.mean(own_sent[own_sent > 0] >= majority) < 0.05
    sent = shared_indices(P, TOPK.ratio, 0)
    assert not np.any(np.delete(shared, sent, axis=1))  # every agent sent those coordinates
    # ... and a value for nearly every one of them (int8 rounds the smallest to zero)
    assert np.mean(np.count_nonzero(shared[:, sent], axis=0) >= majority) > 0.95


@pytest.mark.parametrize("rule", ["median", "trimmed_mean"])
def test_coordinate_wise_rules_over_shared_coordinates_are_the_rule_over_the_true_values(
    rule: str,
) -> None:
    shared, truth, step = _round(shared=True)
    sent = shared_indices(P, TOPK.ratio, 0)
    cfg = CoordinatorConfig(aggregator=rule)
    agg = aggregation.aggregate_rows(cfg, shared, np.ones(len(shared)))
    exact = aggregation.aggregate_rows(cfg, truth[:, sent], np.ones(len(truth)))
    # each value moved by at most half an int8 step of its agent; an order statistic (and a
    # mean of order statistics) moves by at most the largest such move
    assert np.max(np.abs(agg[sent] - exact)) <= step / 2 * (1 + 1e-5)
    assert not np.any(np.delete(agg, sent))  # nothing where nobody sent anything
    with_own, _, _ = _round(shared=False)
    # each agent's own top-k: the rule finds almost nothing to agree on
    moved = np.linalg.norm(aggregation.aggregate_rows(cfg, with_own, np.ones(len(with_own))))
    assert moved < 0.25 * np.linalg.norm(agg)


def test_the_robust_rules_ask_for_shared_coordinates_and_the_means_do_not() -> None:
    for rule in ("trimmed_mean", "median", "krum", "multi_krum"):
        assert CoordinatorConfig(aggregator=rule).compares_coordinates
    for rule in ("fedavg", "clipped_mean"):
        assert not CoordinatorConfig(aggregator=rule).compares_coordinates


def test_buckets_average_random_groups_drawn_from_the_round() -> None:
    from protocols.config import CoordinatorConfig

    x = np.random.default_rng(0).normal(size=(7, 5))
    b = aggregation.bucketed(x, 2, round_=3)
    assert b.shape == (4, 5)  # 3 buckets of 2 and one of 1
    # the buckets are a partition: their sizes weight back to the overall mean
    np.testing.assert_allclose((b[:3].sum(0) * 2 + b[3]) / 7, x.mean(0), atol=1e-12)
    np.testing.assert_array_equal(b, aggregation.bucketed(x, 2, round_=3))  # same round, same
    assert not np.array_equal(b, aggregation.bucketed(x, 2, round_=4))
    cfg = CoordinatorConfig(aggregator="median", bucket=2)
    np.testing.assert_allclose(
        aggregation.aggregate_rows(cfg, x, np.ones(7), round_=3), np.median(b, axis=0), atol=1e-6
    )
    with pytest.raises(ValueError, match="buckets are for trimmed_mean and median"):
        CoordinatorConfig(aggregator="fedavg", bucket=2)


def test_nearest_neighbour_mixing_averages_each_row_with_its_nearest() -> None:
    from protocols.config import CoordinatorConfig

    honest = np.array([[1.0, 0.0], [1.2, 0.1], [0.8, -0.1], [1.0, 0.2]])
    liar = np.array([[-10.0, 0.0]])
    x = np.concatenate([honest, liar])
    mixed = aggregation.nearest_neighbour_mixing(x, f=1)
    # every honest row's 4 nearest are the 4 honest rows: their mean
    np.testing.assert_allclose(mixed[:4], np.tile(honest.mean(0), (4, 1)), atol=1e-12)
    # the liar's 4 nearest: itself and the 3 honest rows closest to it (x = 0.8, 1.0, 1.0)
    np.testing.assert_allclose(mixed[4], (liar[0] + honest[[2, 0, 3]].sum(0)) / 4, atol=1e-12)
    cfg = CoordinatorConfig(aggregator="median", nnm=True, byzantine=1)
    got = aggregation.aggregate_rows(cfg, x, np.ones(5))
    np.testing.assert_allclose(got, honest.mean(0), atol=1e-6)  # 4 of 5 mixed rows agree
    krum = CoordinatorConfig(aggregator="krum", nnm=True, byzantine=1)
    np.testing.assert_allclose(
        aggregation.aggregate_rows(krum, x, np.ones(5)), honest.mean(0), atol=1e-6
    )  # Krum picks one of the 4 identical mixed honest rows
    with pytest.raises(ValueError, match="set byzantine"):
        CoordinatorConfig(aggregator="median", nnm=True)
    with pytest.raises(ValueError, match="fedavg would ignore it"):
        CoordinatorConfig(aggregator="fedavg", nnm=True, byzantine=1)
    with pytest.raises(ValueError, match="not both"):
        CoordinatorConfig(aggregator="median", nnm=True, byzantine=1, bucket=2)


def test_adaptive_mixing_leaves_out_only_the_rounds_outliers() -> None:
    # Prepare: two honest groups that learn different things (two zones), f = 2.
    rng = np.random.default_rng(0)
    a = np.array([1.0, 0.0, 0.0]) + 0.1 * rng.standard_normal((5, 3))
    b = np.array([0.0, 1.0, 0.0]) + 0.1 * rng.standard_normal((3, 3))
    honest = np.concatenate([a, b])
    liars = -10 * honest[:2]  # sign-flipped, scaled
    fixed = CoordinatorConfig(aggregator="median", nnm=True, byzantine=2)
    for rule in ("median", "trimmed_mean", "krum", "multi_krum"):
        adaptive = CoordinatorConfig(aggregator=rule, nnm=True, byzantine=2, nnm_tau=3.0)
        # Execute / Assert: without liars nothing is an outlier and every rule returns the
        # plain mean of the honest deltas (every mixed row is that mean) ...
        assert aggregation.outliers(honest, 2, 3.0) == 0
        got = aggregation.aggregate_rows(adaptive, honest, np.ones(8))
        np.testing.assert_allclose(got, honest.mean(0), atol=1e-12)
        # ... with them, the liars are the outliers, left out as fixed-f mixing does.
        x = np.concatenate([honest, liars])
        assert aggregation.outliers(x, 2, 3.0) == 2
        np.testing.assert_allclose(
            aggregation.aggregate_rows(adaptive, x, np.ones(10)),
            aggregation.aggregate_rows(
                fixed.model_copy(update={"aggregator": rule}), x, np.ones(10)
            ),
            atol=1e-12,
        )
    # Fixed f leaves out the 2 farthest even without liars: the minority group's pull shrinks.
    biased = aggregation.aggregate_rows(fixed, honest, np.ones(8))
    assert biased[1] < honest.mean(0)[1] - 0.05
    # at most f outliers, however many rows are far
    assert aggregation.outliers(np.concatenate([honest, liars, liars]), 2, 3.0) == 2
    # without_outliers cuts the flagged rows whole and keeps the others in their order
    x = np.concatenate([honest[:3], liars[:1], honest[3:], liars[1:]])
    assert np.array_equal(aggregation.without_outliers(x, 2, 3.0), honest)
    assert np.array_equal(aggregation.without_outliers(x, 1, 3.0)[:3], honest[:3])
    assert aggregation.without_outliers(x, 1, 3.0).shape == (9, 3)  # only the farther liar cut
    assert np.array_equal(aggregation.without_outliers(honest, 2, 3.0), honest)
    with pytest.raises(ValueError, match="set nnm too"):
        CoordinatorConfig(aggregator="median", byzantine=2, nnm_tau=3.0)
