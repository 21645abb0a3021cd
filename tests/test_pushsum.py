"""Push-sum (Kempe et al. 2003) against theory: conservation, convergence, and loss."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
from float_bounds import U64

from protocols.delta import DeltaRejected, Rejection
from protocols.pushsum import PushShare, PushSumNode, push_targets, pushsum_matrix

N = 12


def _one_way_graph(n: int = N) -> nx.DiGraph:
    """A one-way ring i -> i+1 plus one-way chords i -> i+5 from even i: strongly connected,
    and no link has a link back (so nothing can rely on symmetric exchange)."""
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    g.add_edges_from((i, (i + 1) % n) for i in range(n))
    g.add_edges_from((i, (i + 5) % n) for i in range(0, n, 2))
    return g


def _swarm(graph: nx.DiGraph, x0: np.ndarray, hosts: list[list[int]], k: int = 0):
    return [PushSumNode(local=h, graph=graph, x0=x0[h], peers_per_round=k, seed=7) for h in hosts]


def _round(nodes: list[PushSumNode], round_: int, drop=None) -> int:
    """One synchronous round: every node sends, shares are routed, every node applies."""
    owner = {i: nd for nd in nodes for i in nd.local}
    dropped = 0
    for share in [sh for nd in nodes for sh in nd.make_shares(round_)]:
        if drop is not None and drop(share):
            dropped += 1
            continue
        owner[share.recipient].receive([share])
    for nd in nodes:
        nd.apply()
    return dropped


def _totals(nodes: list[PushSumNode]) -> tuple[np.ndarray, float]:
    return sum(nd.s.sum(axis=0) for nd in nodes), float(sum(nd.w.sum() for nd in nodes))


def test_graph_has_one_way_links_only() -> None:
    g = _one_way_graph()
    assert nx.is_strongly_connected(g)
    assert not any(g.has_edge(j, i) for i, j in g.edges)


def test_pushsum_matrix_is_column_stochastic_by_hand() -> None:
    # Agent 0 pushes to 1 and 5: it keeps 1/3 and gives 1/3 to each; agent 1 pushes to 2 only.
    m = pushsum_matrix(_one_way_graph())
    assert m[[0, 1, 5], 0] == pytest.approx([1 / 3] * 3) and m[:, 0].sum() == pytest.approx(1)
    assert m[[1, 2], 1] == pytest.approx([0.5, 0.5])
    assert np.allclose(m.sum(axis=0), 1)
    assert not np.allclose(m.sum(axis=1), 1)  # not doubly stochastic: why w is needed


@pytest.mark.numerics
@pytest.mark.parametrize("k", [0, 1], ids=["all_out_neighbours", "one_random_peer"])
def test_sums_conserved_every_round_and_estimates_reach_the_mean(k: int) -> None:
    # Prepare: 12 agents on 3 nodes (co-hosted and remote shares both occur).
    g = _one_way_graph()
    x0 = np.random.default_rng(0).normal(size=(N, 4))  # (N, P)
    nodes = _swarm(g, x0, [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]], k)
    s_total, w_total = x0.sum(axis=0), float(N)
    for r in range(150):
        # Execute
        _round(nodes, r)
        # Assert: no share lost, so both sums hold to float rounding, every round: each round
        # splits and adds N shares in float64, at most N u64 |s| (|s| stays within the total
        # mass, sum |x0| over the agents) more per round (tests/float_bounds.py)
        s, w = _totals(nodes)
        atol = (r + 1) * N * U64 * np.abs(x0).sum(axis=0).max()
        np.testing.assert_allclose(s, s_total, rtol=0, atol=atol)
        assert w == pytest.approx(w_total)
    estimates = np.vstack([nd.estimate() for nd in nodes])  # (N, P)
    assert np.abs(estimates - x0.mean(axis=0)).max() < 1e-6


@pytest.mark.numerics
def test_node_rounds_equal_the_matrix_iteration() -> None:
    # The distributed node classes compute s <- M(r) s, w <- M(r) w with random peers.
    g = _one_way_graph()
    x0 = np.random.default_rng(1).normal(size=(N, 3))  # (N, P)
    nodes = _swarm(g, x0, [list(range(N))], k=1)
    s, w = x0.copy(), np.ones(N)
    for r in range(20):
        _round(nodes, r)
        m = pushsum_matrix(g, peers_per_round=1, seed=7, round_=r)
        s, w = m @ s, m @ w
    assert np.allclose(nodes[0].s, s) and np.allclose(nodes[0].w, w)


def test_random_peers_are_seeded_distinct_and_vary_by_round() -> None:
    cands = [3, 5, 8, 9]
    draws = [push_targets(cands, 2, seed=7, agent=1, round_=r) for r in range(20)]
    assert draws == [push_targets(cands, 2, seed=7, agent=1, round_=r) for r in range(20)]
    assert all(len(set(d)) == 2 and set(d) <= set(cands) for d in draws)
    assert len({tuple(d) for d in draws}) > 1
    assert push_targets(cands, 0, 7, 1, 0) == cands == push_targets(cands, 9, 7, 1, 0)


def _lossy(drop, lost: list[PushShare]):
    """A drop rule that also records every share it drops (their mass is what must go)."""

    def rule(share: PushShare) -> bool:
        if drop(share):
            lost.append(share)
            return True
        return False

    return rule


def _consensus_error_bound(graph: nx.DiGraph, rounds: int) -> float:
    """How far any estimate can be from sum s / sum w after `rounds` loss-free rounds of the
    all-out-neighbours matrix M, whatever the state (s, w > 0) they start from.

    With A = M^rounds = v (1 + eps_ij) (v the Perron vector of the column-stochastic M, sum 1),
    estimate_i = sum_j A_ij w_j e_j / sum_j A_ij w_j with e_j = s_j / w_j, and the target
    sum_j w_j e_j / sum_j w_j: both are convex combinations of the e_j whose weights differ by
    a factor within [(1 - eps) / (1 + eps), (1 + eps) / (1 - eps)], so they differ by at most
    2 eps / (1 - eps) * ptp(e). Every e_j is a convex combination of the x0 (shares only split,
    add or vanish), so ptp(e) <= ptp(x0), which the caller multiplies in with `_rounding`.
    """
    m = pushsum_matrix(graph)
    vals, vecs = np.linalg.eig(m)
    v = np.real(vecs[:, np.argmax(vals.real)])
    v /= v.sum()
    eps = float(np.abs(np.linalg.matrix_power(m, rounds) / v[:, None] - 1).max())
    return 2 * eps / (1 - eps)


def _rounding(rounds: int, x0: np.ndarray, nodes: list[PushSumNode]) -> float:
    """Float64 rounding of an estimate after `rounds` rounds: s and w gain at most N u64 of
    the total mass (sum |x0|, and N for w) per round, as in the conservation test, and
    s_i / w_i divides that error by w_i."""
    w_min = min(float(nd.w.min()) for nd in nodes)
    return rounds * N * U64 * (np.abs(x0).sum() + N * np.abs(x0).max()) / w_min


def test_one_dropped_share_loses_its_mass_and_moves_the_consensus_by_a_computable_bias() -> None:
    # Prepare: one node per agent, so every share crosses the (lossy) wire.
    g = _one_way_graph()
    x0 = np.random.default_rng(2).normal(size=(N, 2))  # (N, P)
    nodes = _swarm(g, x0, [[i] for i in range(N)])
    mass = np.abs(x0).sum()  # every |s| and sum |s| stay within it
    # Execute: round 0 loses agent 0's share to agent 1 and nothing else; then 100 clean rounds.
    lost: list[PushShare] = []
    _round(nodes, 0, drop=_lossy(lambda sh: (sh.sender, sh.recipient) == (0, 1), lost))
    s, w = _totals(nodes)
    # Assert: agent 0 split (x0[0], 1) in 3 (itself, agents 1 and 5): one third is gone.
    assert len(lost) == 1 and lost[0].w == 1 / 3
    assert w == pytest.approx(N - 1 / 3, rel=0, abs=N * N * U64)
    np.testing.assert_allclose(s, x0.sum(0) - x0[0] / 3, rtol=0, atol=N * U64 * mass)
    for r in range(1, 101):
        _round(nodes, r)
    # ... and every agent converges to the mean of what is left, not to the mean of x0:
    # (sum x0 - x0[0] / 3) / (N - 1/3) = mean + (mean - x0[0]) / (3 N - 1).
    mean = x0.mean(0)  # (P,)
    biased = mean + (mean - x0[0]) / (3 * N - 1)  # (P,)
    estimates = np.vstack([nd.estimate() for nd in nodes])  # (N, P)
    tol = _consensus_error_bound(g, 100) * np.ptp(x0, axis=0) + _rounding(101, x0, nodes)  # (P,)
    assert (np.abs(estimates - biased) <= tol).all(), (estimates - biased, tol)
    # x0[0] is not the mean, so the bias stands far above the tolerance
    assert (np.abs(biased - mean) > 100 * tol).all(), (biased - mean, tol)


def test_random_drops_lose_exactly_the_dropped_mass_and_agents_agree_on_what_is_left() -> None:
    # Prepare: one node per agent; 5% of all shares dropped, whichever the draw hits.
    g = _one_way_graph()
    x0 = np.random.default_rng(2).normal(size=(N, 2))  # (N, P)
    nodes = _swarm(g, x0, [[i] for i in range(N)])
    mass = np.abs(x0).sum()
    rng = np.random.default_rng(3)
    lost: list[PushShare] = []
    drop = _lossy(lambda sh: rng.random() < 0.05, lost)
    for r in range(60):
        # Execute
        _round(nodes, r, drop=drop)
        # Assert: after every round the sums are short by exactly what was dropped (to the
        # conservation test's rounding), whichever shares the draw hit.
        s, w = _totals(nodes)
        assert w == pytest.approx(N - sum(sh.w for sh in lost), rel=0, abs=(r + 1) * N * U64 * N)
        gone = sum((sh.s for sh in lost), np.zeros(2))  # (P,)
        np.testing.assert_allclose(s, x0.sum(0) - gone, rtol=0, atol=(r + 1) * N * U64 * mass)
    # Every share carries w > 0, so mass is lost iff a share was: 60 rounds x 18 shares, none
    # of them dropped at 5% has probability 0.95^1080 < 1e-23.
    assert lost and w < N
    # After 100 loss-free rounds every agent holds the mean of what is left, s / w of the sums.
    left = s / w  # (P,)
    for r in range(60, 160):
        _round(nodes, r)
    estimates = np.vstack([nd.estimate() for nd in nodes])  # (N, P)
    tol = _consensus_error_bound(g, 100) * np.ptp(x0, axis=0) + _rounding(160, x0, nodes)
    assert (np.abs(estimates - left) <= tol).all(), (estimates - left, tol)


def test_receive_rejects_what_would_break_conservation() -> None:
    g = _one_way_graph()
    node = PushSumNode(local=[1], graph=g, x0=np.zeros((1, 2)))
    share = PushShare(sender=0, recipient=1, round=0, s=np.ones(2), w=0.5)
    node.receive([share])
    cases = [
        (share, Rejection.STALE),  # a duplicate would add mass twice
        (PushShare(2, 1, 0, np.ones(2), 0.5), Rejection.UNKNOWN_SENDER),  # no link 2 -> 1
        (PushShare(0, 1, 1, np.ones(3), 0.5), Rejection.WRONG_SHAPE),
        (PushShare(0, 1, 2, np.array([np.nan, 0]), 0.5), Rejection.NON_FINITE),
        (PushShare(0, 1, 3, np.ones(2), 0.0), Rejection.MALFORMED),
    ]
    for bad, reason in cases:
        with pytest.raises(DeltaRejected) as err:
            node.receive([PushShare(0, 1, 9, np.ones(2), 0.5), bad])  # all or none
        assert err.value.reason is reason
    assert node.apply() == 1  # only the first share; the batches above left no trace
    assert node.w[0] == pytest.approx(1.5) and np.allclose(node.s[0], 1)
