"""Gossip graphs over agents and their mixing weights.

Graphs are networkx graphs on nodes 0..n-1 (agent indices). Mixing uses Metropolis-Hastings
weights (Xiao & Boyd 2004): W_ij = 1 / (1 + max(d_i, d_j)) on edges, W_ii = 1 - sum_j W_ij,
symmetric and doubly stochastic, so gossip keeps the mean exactly. Consensus error contracts at
least as fast as rho^t with rho = max(|lambda_2(W)|, |lambda_n(W)|).
"""

from __future__ import annotations

import math

import networkx as nx
import numpy as np

from protocols.config import GraphConfig


def build_graph(cfg: GraphConfig, n: int, seed: int) -> nx.Graph:
    """The gossip graph of `n` agents described by `cfg`, seeded where the family is random."""
    if n < 1:
        raise ValueError(f"a graph needs at least one node, got {n}")
    if n == 1:
        graph = nx.empty_graph(1)
    elif cfg.kind == "ring":
        graph = nx.cycle_graph(n) if n > 2 else nx.path_graph(n)
    elif cfg.kind == "complete":
        graph = nx.complete_graph(n)
    elif cfg.kind == "torus":
        rows = _torus_rows(n)
        grid = nx.grid_2d_graph(rows, n // rows, periodic=rows > 2 and n // rows > 2)
        graph = nx.convert_node_labels_to_integers(grid, ordering="sorted")
    elif cfg.kind == "random_regular":
        graph = nx.random_regular_graph(cfg.degree, n, seed=seed)
    elif cfg.kind == "erdos_renyi":
        graph = _connected(lambda s: nx.erdos_renyi_graph(n, cfg.p, seed=s), seed)
    elif cfg.kind == "small_world":
        k = min(cfg.degree, n - 1)
        graph = nx.connected_watts_strogatz_graph(n, max(k, 2), cfg.p, seed=seed)
    else:  # pragma: no cover - the schema admits only the kinds above
        raise ValueError(f"unknown graph kind {cfg.kind!r}")
    return graph


def _torus_rows(n: int) -> int:
    """The most square factorisation rows x cols = n (a prime n becomes a 1 x n ring)."""
    rows = int(math.isqrt(n))
    while n % rows:
        rows -= 1
    return rows


def _connected(make, seed: int, tries: int = 100) -> nx.Graph:
    # An Erdős–Rényi draw may be disconnected, and gossip on it never reaches consensus:
    # redraw with the next seed (deterministic for a given seed).
    for attempt in range(tries):
        graph = make(seed + attempt)
        if nx.is_connected(graph):
            return graph
    raise ValueError("could not draw a connected graph; raise the edge probability p")


def metropolis_weights(graph: nx.Graph) -> np.ndarray:
    """Metropolis-Hastings mixing matrix W (n, n): symmetric, doubly stochastic."""
    n = graph.number_of_nodes()
    weights = np.zeros((n, n), dtype=np.float64)
    degree = dict(graph.degree())
    for i, j in graph.edges():
        if i == j:
            continue
        w = 1.0 / (1.0 + max(degree[i], degree[j]))
        weights[i, j] = weights[j, i] = w
    weights[np.diag_indices(n)] = 1.0 - weights.sum(axis=1)
    return weights


def spectral_rho(weights: np.ndarray) -> float:
    """rho = max(|lambda_2|, |lambda_n|) of a symmetric mixing matrix (0 for one node)."""
    if weights.shape[0] < 2:
        return 0.0
    eig = np.sort(np.linalg.eigvalsh(weights))[::-1]  # descending; eig[0] == 1
    return float(max(abs(eig[1]), abs(eig[-1])))
