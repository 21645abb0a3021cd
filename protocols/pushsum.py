"""Push-sum averaging over one-way links (Kempe, Dobra & Gehrke 2003), pure logic.

Every agent i holds a pair (s_i, w_i), s_i a vector (P,) and w_i a scalar, starting at
(x_i, 1). In a round each agent splits its pair into equal parts, keeps one and pushes one to
each of its targets: all out-neighbours, or (epidemic variant, `peers_per_round` = k > 0) k of
them drawn at random, seeded per (seed, agent, round) so a run is reproducible however agents
are spread over nodes. Each agent then adds up what it kept and what it received. The round is
s <- M s, w <- M w with M column-stochastic (column i is how agent i splits), so

    sum_i s_i and sum_i w_i are conserved exactly while no share is lost,

and on a strongly connected graph the estimate s_i / w_i converges to the mean of the x_i.
Links need not be symmetric: nothing is ever sent back. A lost share takes its mass with it
(sum s and sum w both drop, the estimate is biased; REFERENCES.md measures 1.2e-3 error at 5%
drops) -- recovering losses is the transport's job, not this module's.

`PushSumNode` has the shape of `protocols.gossip.ChocoGossip`: `make_shares` per round,
`receive` on server threads, `apply` on the owner's thread, sorted by (round, sender) so the
floating-point sum, and thus a seeded run, does not depend on arrival order. On the wire a
share is a dense `swarm.v1.KnowledgeDelta` whose `push_weight` carries w.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np

from protocols.delta import DeltaRejected, Rejection


@dataclass(frozen=True)
class PushShare:
    """One agent's push to another for one round: a part (s, w) of its pair."""

    sender: int
    recipient: int
    round: int
    s: np.ndarray
    """(P,) float64."""
    w: float


def out_neighbours(graph: nx.Graph | nx.DiGraph, i: int) -> list[int]:
    """Agents that `i` can push to: successors in a DiGraph, neighbours in an undirected graph."""
    return sorted(int(j) for j in graph.adj[i] if j != i)


def push_targets(
    candidates: Sequence[int], peers_per_round: int, seed: int, agent: int, round_: int
) -> list[int]:
    """Whom `agent` pushes to in `round_`: all candidates if peers_per_round is 0 (or at least
    their number), else that many distinct candidates drawn uniformly, seeded by
    (seed, agent, round) so the draw does not depend on which node hosts the agent."""
    if peers_per_round == 0 or peers_per_round >= len(candidates):
        return list(candidates)
    rng = np.random.default_rng([seed, agent, round_])
    picked = rng.choice(len(candidates), size=peers_per_round, replace=False)
    return sorted(candidates[k] for k in picked)


def pushsum_matrix(
    graph: nx.Graph | nx.DiGraph, peers_per_round: int = 0, seed: int = 0, round_: int = 0
) -> np.ndarray:
    """The column-stochastic matrix M (n, n) of one round: M[j, i] is the part i gives j.

    Agent i with m targets gives 1 / (1 + m) to itself and to each target.
    """
    n = graph.number_of_nodes()
    m = np.zeros((n, n), dtype=np.float64)
    for i in range(n):
        targets = push_targets(out_neighbours(graph, i), peers_per_round, seed, i, round_)
        part = 1.0 / (1 + len(targets))
        m[i, i] = part
        m[targets, i] = part
    return m


class PushSumNode:
    """Push-sum state and steps for the agents hosted by one node.

    Args:
        local: global indices of the agents this node hosts, in the row order of `x0`.
        graph: who may push to whom (DiGraph: one-way links; Graph: both ways), nodes 0..n-1.
        x0: the initial values of the local agents (K, P); w starts at 1.
        peers_per_round: 0 pushes to every out-neighbour; k > 0 to k random ones per round.
        seed: seeds the peer draws.
    """

    def __init__(
        self,
        *,
        local: Sequence[int],
        graph: nx.Graph | nx.DiGraph,
        x0: np.ndarray,
        peers_per_round: int = 0,
        seed: int = 0,
    ):
        self.local = [int(i) for i in local]
        x0 = np.asarray(x0, dtype=np.float64)
        if x0.ndim != 2 or x0.shape[0] != len(self.local):
            raise ValueError(f"x0 must be ({len(self.local)}, P), got {x0.shape}")
        self.num_params = int(x0.shape[1])
        self.peers_per_round = int(peers_per_round)
        self.seed = int(seed)
        self._row = {i: row for row, i in enumerate(self.local)}
        self.s = x0.copy()  # (K, P)
        self.w = np.ones(len(self.local), dtype=np.float64)  # (K,)
        self._out = {i: out_neighbours(graph, i) for i in self.local}
        # Who may push to each local agent (anyone whose out-edges reach it).
        directed = graph if graph.is_directed() else graph.to_directed()
        self._in = {i: {int(j) for j in directed.predecessors(i) if j != i} for i in self.local}
        self._lock = threading.Lock()
        self._inbox: list[PushShare] = []
        self._seen: set[tuple[int, int, int]] = set()  # (sender, recipient, round) accepted

    # -- sending -------------------------------------------------------------------------------

    def make_shares(self, round_: int) -> list[PushShare]:
        """Split every local pair for this round; returns the shares for agents hosted elsewhere.

        Each agent keeps one part; parts for co-hosted agents go straight to the inbox. Until
        `apply`, the returned shares are mass in flight: route each to `owner(share.recipient)`.
        """
        remote: list[PushShare] = []
        local: list[PushShare] = []
        for row, i in enumerate(self.local):
            targets = push_targets(self._out[i], self.peers_per_round, self.seed, i, round_)
            if not targets:
                continue
            part = 1.0 / (1 + len(targets))
            s, w = self.s[row] * part, float(self.w[row] * part)  # (P,), scalar
            self.s[row] = s
            self.w[row] = w
            for j in targets:
                share = PushShare(i, j, round_, s.copy(), w)
                (local if j in self._row else remote).append(share)
        self.receive(local)
        return remote

    # -- receiving -----------------------------------------------------------------------------

    def receive(self, shares: Sequence[PushShare]) -> int:
        """Accept a batch of shares, all or none; raises DeltaRejected."""
        with self._lock:
            seen = set()
            for sh in shares:
                key = (sh.sender, sh.recipient, sh.round)
                if sh.recipient not in self._row:
                    raise DeltaRejected(
                        Rejection.UNKNOWN_SENDER, f"agent {sh.recipient} is not hosted here"
                    )
                if sh.sender not in self._in[sh.recipient]:
                    raise DeltaRejected(
                        Rejection.UNKNOWN_SENDER,
                        f"agent {sh.sender} has no link to agent {sh.recipient}",
                    )
                if key in self._seen or key in seen:
                    # Applying a share twice would create mass out of nothing.
                    raise DeltaRejected(
                        Rejection.STALE,
                        f"duplicate share {sh.sender}->{sh.recipient} of round {sh.round}",
                    )
                if sh.s.shape != (self.num_params,):
                    raise DeltaRejected(
                        Rejection.WRONG_SHAPE,
                        f"s has shape {sh.s.shape}, expected ({self.num_params},)",
                    )
                if not (np.isfinite(sh.w) and np.isfinite(sh.s).all()):
                    raise DeltaRejected(Rejection.NON_FINITE, f"share from agent {sh.sender}")
                if not sh.w > 0:
                    raise DeltaRejected(Rejection.MALFORMED, f"push weight {sh.w} is not positive")
                seen.add(key)
            self._seen |= seen
            self._inbox.extend(shares)
        return len(shares)

    def apply(self) -> int:
        """Add the pending shares to the local pairs; returns how many were applied."""
        with self._lock:
            pending, self._inbox = self._inbox, []
        pending.sort(key=lambda sh: (sh.round, sh.sender, sh.recipient))
        for sh in pending:
            row = self._row[sh.recipient]
            self.s[row] += sh.s
            self.w[row] += sh.w
        return len(pending)

    def estimate(self) -> np.ndarray:
        """The current estimates s_i / w_i of the mean, one row per local agent (K, P)."""
        return self.s / self.w[:, None]
