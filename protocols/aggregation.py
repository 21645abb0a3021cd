"""Aggregation rules of a coordinator round (pure numpy; no grpc, no torch).

Every rule maps a stack of decoded deltas X (n, P) - one row per contributing agent - and,
where it uses them, example weights w (n,) to one aggregate delta (P,):

    fedavg          sum_i w_i x_i / sum_i w_i                   (McMahan et al. 2017;
                                                                 uniform if sum_i w_i = 0)
    trimmed_mean    per coordinate: drop the k = floor(beta n) smallest and k largest
                    values, average the rest                    (Yin et al. 2018; Flower)
    median          per coordinate median                       (Yin et al. 2018)
    krum            x_i* with i* = argmin_i sum_{j in N_i} ||x_i - x_j||^2, N_i = the
                    n - f - 2 nearest others; needs n >= 2f + 3 (Blanchard et al. 2017);
                    multi-Krum averages the m best-scored rows (multi_krum: m = n - f)
    clipped_mean    sum_i w_i clip(x_i, tau) / sum_i w_i, clip(z, tau) = min(1, tau/||z||) z
                    (the clip of ClippedGossip, He et al. 2022)

With `bucket` s > 1, trimmed_mean and median run over the means of random buckets of s deltas
(Karimireddy, He, Jaggi 2022, "Byzantine-robust learning on heterogeneous datasets via
bucketing"), drawn per round from a fixed seed; with `nnm`, trimmed_mean, median, krum and
multi_krum run over each delta's nearest-neighbour mean (Allouah et al. 2023, "Fixing by
mixing": the mean of the n - f deltas nearest to it); with `nnm_tau` f is the round's count
of outliers (`outliers`, at most `byzantine`), so that without liars every row is the mean.

The coordinate-wise rules (trimmed_mean, median) and krum ignore the example weights: a
Byzantine agent could claim any number of examples, so a robust rule must not trust them.

`aggregate` is the one entry point the coordinator uses: it orders the deltas by sender
before stacking so float summation order (and Krum's tie-break) never depends on arrival
order, accumulates in float64 and returns float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from protocols.config import CoordinatorConfig
from protocols.delta import Delta

# floor(beta * n) must be exact for hand-computed cases like 0.29 * 100 = 28.999999999999996.
_EPS = 1e-9


def _as_stack(x: np.ndarray) -> np.ndarray:
    stack = np.asarray(x, dtype=np.float64)
    if stack.ndim != 2 or stack.shape[0] == 0:
        raise ValueError(f"expected a non-empty (n, P) stack of deltas, got shape {stack.shape}")
    return stack


def _normalised(w: np.ndarray | Sequence[float], n: int) -> np.ndarray:
    """Example weights summing to one; uniform when nobody reports examples."""
    weights = np.asarray(w, dtype=np.float64)
    if weights.shape != (n,):
        raise ValueError(f"expected {n} weights, got shape {weights.shape}")
    if (weights < 0).any() or not np.isfinite(weights).all():
        raise ValueError(f"example weights must be finite and >= 0, got {weights.tolist()}")
    total = weights.sum()
    if total <= 0:
        return np.full(n, 1.0 / n)
    return weights / total


def fedavg(x: np.ndarray, w: np.ndarray | Sequence[float]) -> np.ndarray:
    """Example-weighted mean of the rows of x (n, P); uniform if all weights are zero."""
    stack = _as_stack(x)
    weights = _normalised(w, stack.shape[0])
    return (weights @ stack).astype(np.float32)  # (n,) @ (n, P) -> (P,)


def trim_count(n: int, beta: float) -> int:
    """k = floor(beta * n) values cut from each end of every coordinate."""
    if not 0 <= beta < 0.5:
        raise ValueError(f"trim fraction must be in [0, 0.5), got {beta}")
    return math.floor(beta * n + _EPS)


def trimmed_mean(x: np.ndarray, beta: float) -> np.ndarray:
    """Coordinate-wise mean after cutting floor(beta * n) values from each end."""
    stack = _as_stack(x)
    n = stack.shape[0]
    k = trim_count(n, beta)  # beta < 0.5 keeps n - 2k >= 1 rows
    kept = np.sort(stack, axis=0)[k : n - k]  # (n - 2k, P)
    return kept.mean(axis=0).astype(np.float32)


def coordinate_median(x: np.ndarray) -> np.ndarray:
    """Coordinate-wise median (the mean of the two middle values when n is even)."""
    return np.median(_as_stack(x), axis=0).astype(np.float32)


def _squared_distances(stack: np.ndarray) -> np.ndarray:
    """(n, n) squared Euclidean distances between the rows of stack (n, P) float64.

    Row by row, O(n P) memory: an (n, n, P) difference tensor would not fit for real models,
    and |a|^2 + |b|^2 - 2ab loses the small distances Krum ranks by to cancellation."""
    n = stack.shape[0]
    d2 = np.empty((n, n), dtype=np.float64)
    for i in range(n):
        diff = stack - stack[i]  # (n, P)
        d2[i] = np.einsum("jp,jp->j", diff, diff)
    return d2


def krum_scores(x: np.ndarray, f: int) -> np.ndarray:
    """score_i = sum of squared distances from row i to its n - f - 2 nearest other rows."""
    stack = _as_stack(x)
    n = stack.shape[0]
    if f < 0:
        raise ValueError(f"krum: f must be >= 0, got {f}")
    if n < 2 * f + 3:
        raise ValueError(
            f"krum needs n >= 2f + 3 deltas (Blanchard et al. 2017): n = {n}, f = {f} "
            f"needs at least {2 * f + 3}"
        )
    d2 = _squared_distances(stack)
    np.fill_diagonal(d2, np.inf)  # a row is not its own neighbour
    nearest = np.sort(d2, axis=1)[:, : n - f - 2]  # (n, n - f - 2)
    return nearest.sum(axis=1)


def krum(x: np.ndarray, f: int, m: int = 1) -> np.ndarray:
    """The row with the lowest Krum score; multi-Krum (m > 1): the mean of the m best rows.

    Ties go to the earlier row, so with rows in sender order the result is deterministic.
    """
    stack = _as_stack(x)
    scores = krum_scores(stack, f)
    if not 1 <= m <= stack.shape[0]:
        raise ValueError(f"multi-krum: m must be in [1, {stack.shape[0]}], got {m}")
    best = np.argsort(scores, kind="stable")[:m]
    return stack[best].mean(axis=0).astype(np.float32)


def clip(x: np.ndarray, tau: float) -> np.ndarray:
    """Scale each row of x (n, P) down to L2 norm <= tau (rows already inside are kept)."""
    if tau <= 0:
        raise ValueError(f"clip norm must be > 0, got {tau}")
    stack = _as_stack(x)
    norms = np.linalg.norm(stack, axis=1)  # (n,)
    scale = np.minimum(1.0, tau / np.maximum(norms, np.finfo(np.float64).tiny))
    return stack * scale[:, None]


def clipped_mean(x: np.ndarray, tau: float, w: np.ndarray | Sequence[float]) -> np.ndarray:
    """Example-weighted mean of the rows of x after clipping each to norm <= tau."""
    return fedavg(clip(x, tau), w)


def stack_deltas(
    deltas: Sequence[Delta], num_params: int
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Senders, decoded rows X (n, P) float64 and examples w (n,), in sender order."""
    ordered = sorted(deltas, key=lambda d: d.sender)
    x = np.zeros((len(ordered), num_params), dtype=np.float64)
    for row, d in enumerate(ordered):
        values = d.payload.decode()
        if values.shape != (num_params,):
            raise ValueError(f"{d.sender}: delta has shape {values.shape}, expected {num_params}")
        x[row] = values
    w = np.array([d.examples for d in ordered], dtype=np.float64)
    return [d.sender for d in ordered], x, w


def aggregate(cfg: CoordinatorConfig, deltas: Sequence[Delta], num_params: int) -> np.ndarray:
    """One round's aggregate (P,) float32 by the rule `cfg.aggregator` names."""
    if not deltas:
        raise ValueError("cannot aggregate an empty round")
    _, x, w = stack_deltas(deltas, num_params)
    return aggregate_rows(cfg, x, w, round_=min(d.round for d in deltas))


#: Seeds the bucket permutation together with the round: every coordinator draws the same.
BUCKET_SEED = 0x6275636B


def bucketed(x: np.ndarray, s: int, round_: int) -> np.ndarray:
    """Means of the rows of x (n, P) in ceil(n / s) buckets of s (the last may hold fewer),
    after a permutation drawn from the round: (ceil(n / s), P) float64."""
    stack = _as_stack(x)
    n = stack.shape[0]
    order = np.random.default_rng([BUCKET_SEED, int(round_)]).permutation(n)
    return np.stack([stack[order[i : i + s]].mean(axis=0) for i in range(0, n, s)])


def nearest_neighbour_mixing(x: np.ndarray, f: int, d2: np.ndarray | None = None) -> np.ndarray:
    """Each row of x (n, P) replaced by the mean of its n - f nearest rows (itself included;
    Allouah et al. 2023): (n, P) float64. Ties go to the earlier row. `d2`: the rows' squared
    distances (`_squared_distances`), when the caller has them already."""
    stack = _as_stack(x)
    n = stack.shape[0]
    if not 0 <= f < n:
        raise ValueError(f"nnm: f must be in [0, {n}), got {f}")
    d2 = _squared_distances(stack) if d2 is None else d2
    nearest = np.argsort(d2, axis=1, kind="stable")[:, : n - f]  # (n, n - f)
    return np.stack([stack[idx].mean(axis=0) for idx in nearest])


def _outlier_count(stack: np.ndarray, f: int, tau: float, d2: np.ndarray) -> tuple[int, np.ndarray]:
    """(`outliers` of the rows of stack (n, P), each row's distance from the coordinate-wise
    median (n,)), from the rows' squared distances d2 (n, n)."""
    n = stack.shape[0]
    r = np.linalg.norm(stack - np.median(stack, axis=0), axis=1)  # (n,)
    if n < 2:
        return 0, r
    spread = float(np.median(np.sqrt(d2[np.triu_indices(n, k=1)])))  # median pair distance
    return min(f, int((r > tau * spread).sum())), r


def outliers(x: np.ndarray, f: int, tau: float) -> int:
    """How many rows of x (n, P) lie farther from the coordinate-wise median than tau times
    the median distance between two rows, at most f: the liars adaptive mixing leaves out
    (``nnm_tau``). The scale is the rows' own spread, so honest rows that differ (a minority
    zone's) are not outliers; it is the honest spread while fewer than ~29% of the rows lie
    (then most pairs are honest)."""
    stack = _as_stack(x)
    return _outlier_count(stack, f, tau, _squared_distances(stack))[0]


def without_outliers(x: np.ndarray, f: int, tau: float) -> np.ndarray:
    """The rows of x (n, P) in their order, less its `outliers` (the farthest from the
    coordinate-wise median; ties: the later row goes)."""
    stack = _as_stack(x)
    k, r = _outlier_count(stack, f, tau, _squared_distances(stack))
    if not k:
        return stack
    return stack[np.sort(np.argsort(r, kind="stable")[: stack.shape[0] - k])]


def aggregate_rows(
    cfg: CoordinatorConfig, x: np.ndarray, w: np.ndarray, *, round_: int = 0
) -> np.ndarray:
    """The rule `cfg.aggregator` names over decoded deltas x (n, P) with example weights w
    (round_: draws the buckets of `cfg.bucket`)."""
    if cfg.bucket > 1 and cfg.aggregator in ("trimmed_mean", "median"):
        x = bucketed(x, cfg.bucket, round_)
    if cfg.nnm and cfg.aggregator in ("trimmed_mean", "median", "krum", "multi_krum"):
        stack = _as_stack(x)
        d2 = _squared_distances(stack)  # once, for the outlier count and the mixing
        f = cfg.byzantine
        if cfg.nnm_tau is not None:
            f = _outlier_count(stack, cfg.byzantine, cfg.nnm_tau, d2)[0]
        x = nearest_neighbour_mixing(stack, f, d2)
    if cfg.aggregator == "fedavg":
        return fedavg(x, w)
    if cfg.aggregator == "trimmed_mean":
        return trimmed_mean(x, cfg.trim_fraction)
    if cfg.aggregator == "median":
        return coordinate_median(x)
    if cfg.aggregator == "krum":
        return krum(x, cfg.byzantine)
    if cfg.aggregator == "multi_krum":  # the n - f best-scored rows (Blanchard et al. 2017)
        return krum(x, cfg.byzantine, m=max(1, x.shape[0] - cfg.byzantine))
    if cfg.aggregator == "clipped_mean":
        return clipped_mean(x, cfg.clip_norm, w)
    raise ValueError(f"unknown aggregator {cfg.aggregator!r}")


__all__ = [
    "BUCKET_SEED",
    "aggregate",
    "bucketed",
    "aggregate_rows",
    "clip",
    "clipped_mean",
    "coordinate_median",
    "fedavg",
    "krum",
    "krum_scores",
    "nearest_neighbour_mixing",
    "outliers",
    "without_outliers",
    "stack_deltas",
    "trim_count",
    "trimmed_mean",
]
