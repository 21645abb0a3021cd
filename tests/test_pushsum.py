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


def test_a_dropped_share_loses_mass_and_biases_the_estimate() -> None:
    # Prepare: one node per agent, so every share crosses the (lossy) wire.
    g = _one_way_graph()
    x0 = np.random.default_rng(2).normal(size=(N, 2))  # (N, P)
    nodes = _swarm(g, x0, [[i] for i in range(N)])
    rng = np.random.default_rng(3)
    # Execute: agent 0's share to agent 1 in round 0 is lost, then 5% of all shares for 150 rounds.
    _round(nodes, 0, drop=lambda sh: (sh.sender, sh.recipient) == (0, 1))
    s, w = _totals(nodes)
    assert w == pytest.approx(N - 1 / 3)  # agent 0 split w=1 in 3: one third gone
    assert not np.allclose(s, x0.sum(axis=0))
    lost = sum(_round(nodes, r, drop=lambda sh: rng.random() < 0.05) for r in range(1, 150))
    # Assert: the agents still agree with each other, on a biased value (measured: 145 shares
    # lost, sum w down from 12 to 0.087, error 0.036 against values of spread ~3; which shares
    # are lost early sets the bias, so REFERENCES.md's 1.2e-3 is one setup's figure).
    estimates = np.vstack([nd.estimate() for nd in nodes])  # (N, P)
    assert lost > 0 and _totals(nodes)[1] < 1.0
    assert np.ptp(estimates, axis=0).max() < 1e-9
    assert np.abs(estimates - x0.mean(axis=0)).max() > 1e-2


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
