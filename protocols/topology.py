"""Gossip graphs over agents and their mixing weights.

Graphs are networkx graphs on nodes 0..n-1 (agent indices). Mixing uses Metropolis-Hastings
weights (Xiao & Boyd 2004): W_ij = 1 / (1 + max(d_i, d_j)) on edges, W_ii = 1 - sum_j W_ij,
symmetric and doubly stochastic, so gossip keeps the mean exactly. Consensus error contracts at
least as fast as rho^t with rho = max(|lambda_2(W)|, |lambda_n(W)|).

Kinds (`GraphConfig.kind`): ring, torus, random_regular, erdos_renyi, small_world, complete,
star (agent 0 is the hub), file (an edge list on disk, validated) and proximity (agents within
radio range). A proximity graph depends on where the drones are: `build_graph` needs their
`positions`, and the runner rebuilds the graph (and its weights) as they move. Unlike every
other kind it may be disconnected: gossip then mixes within each component only, and rho is 1
(W has eigenvalue 1 once per component), so `mixing_summary` reports no convergence rate.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from protocols.config import GraphConfig

CONSENSUS_TOL = 1e-3
"""Relative consensus error of `mixing_summary`'s predicted round count (REFERENCES.md)."""


def build_graph(
    cfg: GraphConfig, n: int, seed: int, positions: np.ndarray | None = None
) -> nx.Graph:
    """The gossip graph of `n` agents described by `cfg`, seeded where the family is random.

    `positions` (n, 2) or (n, 3) in metres is required by kind proximity and ignored by the
    others; the runner calls this again with the new positions whenever the drones have moved.
    """
    if n < 1:
        raise ValueError(f"a graph needs at least one node, got {n}")
    if cfg.kind == "proximity":
        if positions is None:
            raise ValueError("graph kind proximity needs the agents' positions (n, 2|3)")
        return proximity_graph(_positions(positions, n), cfg.radio_range_m)
    if cfg.kind == "file":
        if cfg.path is None:
            raise ValueError("graph kind file needs `path`, an edge list with one 'i j' per line")
        return read_edge_list(cfg.path, n)
    if n == 1:
        graph = nx.empty_graph(1)
    elif cfg.kind == "ring":
        graph = nx.cycle_graph(n) if n > 2 else nx.path_graph(n)
    elif cfg.kind == "complete":
        graph = nx.complete_graph(n)
    elif cfg.kind == "star":
        graph = nx.star_graph(n - 1)  # node 0 is the hub, joined to 1..n-1
    elif cfg.kind == "torus":
        rows = _torus_rows(n)
        grid = nx.grid_2d_graph(rows, n // rows, periodic=rows > 2 and n // rows > 2)
        graph = nx.convert_node_labels_to_integers(grid, ordering="sorted")
    elif cfg.kind == "exponential":
        graph = exponential_graph(n)
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


def build_graph_in_groups(
    cfg: GraphConfig, groups: Sequence[tuple[int, int]], seed: int
) -> nx.Graph:
    """One graph of `cfg`'s kind per group of agents (first index, count), on that group's
    agents, and their union on nodes 0..n-1: agents of different groups (different model
    layouts) are never neighbours. One group of every agent, (0, n), is `build_graph`'s
    graph itself. Each group's is seeded with `seed` (kinds that draw)."""
    n = sum(count for _, count in groups)
    graph = nx.empty_graph(n)
    for first, count in groups:
        part = build_graph(cfg, count, seed)
        graph.add_edges_from((first + int(i), first + int(j)) for i, j in part.edges())
    return graph


def exponential_graph(n: int) -> nx.Graph:
    """Agent i is joined to i + 2^k (mod n) for every 2^k < n: degree about 2 log2(n), and a
    spectral gap that shrinks only slowly with n (Ying et al. 2021, "Exponential Graph is
    Provably Efficient for Decentralized Deep Training": rho 0.43 at 12 agents against the
    ring's 0.91). Deterministic, no seed."""
    graph = nx.empty_graph(n)
    hop = 1
    while hop < n:
        graph.add_edges_from((i, (i + hop) % n) for i in range(n) if (i + hop) % n != i)
        hop *= 2
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


def read_edge_list(path: str | Path, n: int) -> nx.Graph:
    """The connected graph on agents 0..n-1 whose edges are listed in `path` (`parse_edge_list`
    of its text)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"{path}: cannot read the edge list: {e.strerror or e}") from e
    return parse_edge_list(text, n, path)


def parse_edge_list(text: str, n: int, path: str | Path) -> nx.Graph:
    """The connected graph on agents 0..n-1 whose edges `text` (read from `path`) lists.

    One undirected edge 'i j' per line; '#' starts a comment; blank lines are skipped; an edge
    listed twice (or as 'i j' and 'j i') counts once. Every error names the file and the line,
    and never quotes the line (a file that is no edge list, ../../etc/passwd, stays unshown):
    at most an index of up to 12 digits is named.
    """
    graph = nx.empty_graph(n)
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{path}:{lineno}"
        fields = line.split()
        if len(fields) != 2:
            raise ValueError(
                f"{where}: not an edge: expected two agent indices 'i j', got {len(fields)} fields"
            )
        if not all(re.fullmatch(r"[+-]?[0-9]{1,12}", f) for f in fields):
            raise ValueError(f"{where}: not an edge: agent indices must be integers (<= 12 digits)")
        i, j = int(fields[0]), int(fields[1])
        for k in (i, j):
            if not 0 <= k < n:
                raise ValueError(f"{where}: agent index {k} out of range 0..{n - 1}")
        if i == j:
            raise ValueError(f"{where}: self loop {i} {j} (an agent always keeps its own share)")
        graph.add_edge(i, j)
    if n > 1 and not nx.is_connected(graph):
        # Gossip on a disconnected graph never reaches consensus; name what is cut off.
        parts = sorted(nx.connected_components(graph), key=min)
        cut = sorted(parts[1])
        raise ValueError(
            f"{path}:{max(1, len(text.splitlines()))}: the graph is disconnected "
            f"({len(parts)} components); agents {cut[:8]}{' ...' if len(cut) > 8 else ''} "
            "are not reachable from agent 0"
        )
    return graph


def _positions(positions: np.ndarray, n: int) -> np.ndarray:
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[0] != n or pos.shape[1] not in (2, 3):
        raise ValueError(f"positions must be ({n}, 2) or ({n}, 3), got {pos.shape}")
    return pos


def proximity_graph(positions: np.ndarray, radio_range_m: float) -> nx.Graph:
    """Agents i != j are joined iff ||p_i - p_j|| <= radio_range_m; may be disconnected.

    `positions` is (n, 2) or (n, 3) in metres.
    """
    pos = _positions(positions, len(positions))
    diff = pos[:, None, :] - pos[None, :, :]  # (n, n, D)
    dist = np.sqrt((diff**2).sum(axis=-1))  # (n, n)
    i, j = np.nonzero(np.triu(dist <= radio_range_m, k=1))  # each pair once, no self loops
    graph = nx.empty_graph(pos.shape[0])
    graph.add_edges_from(zip(i.tolist(), j.tolist(), strict=True))
    return graph


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
    """rho = max(|lambda_2|, |lambda_n|) of a symmetric mixing matrix (0 for one node).

    1 on a disconnected graph: there the eigenvalue 1 repeats once per component.
    """
    if weights.shape[0] < 2:
        return 0.0
    eig = np.sort(np.linalg.eigvalsh(weights))[::-1]  # descending; eig[0] == 1
    return float(max(abs(eig[1]), abs(eig[-1])))


def rounds_to_consensus(rho: float, tol: float = CONSENSUS_TOL) -> int | None:
    """Rounds t after which the bound rho^t <= tol: ceil(log tol / log rho); None if rho >= 1."""
    if rho >= 1.0 - 1e-12:
        return None
    if rho <= 0.0:
        return 1  # exact averaging (complete graph): one step
    return math.ceil(math.log(tol) / math.log(rho))


def mixing_summary(
    graph: nx.Graph, groups: Sequence[tuple[int, int]] | None = None
) -> dict[str, Any]:
    """How fast gossip mixes on `graph` under MH weights, for the log at the start of a run.

    Keys: nodes, edges, connected, components, degree_min, degree_mean, degree_max, rho,
    rounds_to_1e-3 (the rho^t bound's prediction; None when rho is 1, i.e. disconnected).

    `groups` (first index, count), two or more: the graph joins agents within each group only
    (`build_graph_in_groups`), and each group agrees on a model of its own. Then rho is the
    slowest group's (W is block-diagonal: each block's own second eigenvalue bounds that
    group's agreement), `connected` says whether every group's graph is, and the other keys
    are over the whole graph.
    """
    out = _degree_figures(graph)
    if groups is not None and len(groups) > 1:
        parts = [
            mixing_summary(nx.convert_node_labels_to_integers(graph.subgraph(range(f, f + c))))
            for f, c in groups
        ]
        rho = max(float(p["rho"]) for p in parts)
        out["connected"] = all(p["connected"] for p in parts)
    else:
        rho = spectral_rho(metropolis_weights(graph))
    out["rho"] = rho
    out["rounds_to_1e-3"] = rounds_to_consensus(rho)
    return out


def _degree_figures(graph: nx.Graph) -> dict[str, Any]:
    n = graph.number_of_nodes()
    degrees = np.array([d for _, d in graph.degree()], dtype=np.float64)  # (n,)
    components = nx.number_connected_components(graph) if n else 0
    return {
        "nodes": n,
        "edges": graph.number_of_edges(),
        "connected": components == 1,
        "components": components,
        "degree_min": int(degrees.min()) if n else 0,
        "degree_mean": float(degrees.mean()) if n else 0.0,
        "degree_max": int(degrees.max()) if n else 0,
    }


def graph_from_edges(n: int, edges: list[tuple[int, int]]) -> nx.Graph:
    """The graph on nodes 0..n-1 with exactly these edges (as the Runner hands them out)."""
    graph = nx.empty_graph(n)
    graph.add_edges_from(edges)
    return graph
