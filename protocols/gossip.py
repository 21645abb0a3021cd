"""Decentralized gossip of knowledge deltas: CHOCO-Gossip over a mixing matrix (pure logic).

One `ChocoGossip` serves one node (an AgentShard actor or a device) hosting some of the
agents. Per agent i it keeps a *public copy* xhat_i, the version of x_i that its neighbours
know. A round (Koloskova et al. 2019, Algorithm 1 with a general compressor Q):

    q_i      = Q(x_i - xhat_i)                 # the knowledge delta: learned since last share
    xhat_i  += q_i      (on the sender and on every node holding a copy of xhat_i)
    x_i     += gamma * sum_j W_ij (xhat_j - xhat_i)

With Q = identity and gamma = 1 this is plain gossip x <- W x. Each node keeps one copy of the
public vector of every agent that neighbours one of its agents; a copy starts at the common
initial weights x0 and only ever changes by received deltas, applied in version order.

Thread model: `receive` runs on gRPC server threads, `make_deltas` / `apply` on the owner's
thread; a lock guards the inbox and version counters. In sync mode the owner calls `apply`
after a barrier, and pending deltas are applied sorted by (round, sender): the result does not
depend on arrival order, so a seeded run is reproducible.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np

from protocols.compression import compress
from protocols.config import CompressionConfig
from protocols.delta import Delta, DeltaRejected, Rejection


def agent_name(index: int) -> str:
    """The wire name of agent `index` (one name per idea: used by every node and metric)."""
    return f"agent-{index}"


class ChocoGossip:
    """CHOCO-Gossip state and steps for the agents hosted by one node.

    Args:
        local: global indices of the agents this node hosts, in the row order of `x`.
        weights: the (n, n) mixing matrix of the whole swarm (symmetric, doubly stochastic).
        x0: the common initial parameters (P,), float32.
        gamma: consensus step size.
        compression: how deltas are compressed.
        layout: fingerprint of the parameter layout (rejects deltas of another model).
        owner: maps a global agent index to the node that hosts it.
    """

    def __init__(
        self,
        *,
        local: Sequence[int],
        weights: np.ndarray,
        x0: np.ndarray,
        gamma: float,
        compression: CompressionConfig,
        layout: str,
        owner: Callable[[int], str],
    ):
        self.local = list(local)
        self.gamma = float(gamma)
        self.compression = compression
        self.layout = layout
        self.num_params = int(x0.size)
        local_set = set(self.local)
        # Neighbour lists with their weights, per local agent (row order of x).
        self.neighbours: list[list[tuple[int, float]]] = []
        tracked: set[int] = set(self.local)
        for i in self.local:
            row = [(int(j), float(weights[i, j])) for j in np.flatnonzero(weights[i]) if j != i]
            self.neighbours.append(row)
            tracked.update(j for j, _ in row)
        # Public copies of every agent this node needs; all start at the common init x0.
        self.xhat: dict[int, np.ndarray] = {
            j: np.array(x0, dtype=np.float32, copy=True) for j in sorted(tracked)
        }
        self.version: dict[int, int] = dict.fromkeys(self.xhat, 0)
        # Remote senders whose deltas this node accepts, by wire name.
        self._remote = {agent_name(j): j for j in tracked - local_set}
        # Which remote nodes need agent i's delta (those hosting a neighbour of i).
        self._destinations = {
            i: sorted({owner(j) for j, _ in nbrs if j not in local_set})
            for i, nbrs in zip(self.local, self.neighbours, strict=True)
        }
        self._lock = threading.Lock()
        self._inbox: list[Delta] = []
        self._expected: dict[int, int] = dict(self.version)  # next base_version per sender

    # -- sending -------------------------------------------------------------------------------

    def make_deltas(
        self, x: np.ndarray, round_: int, examples: Sequence[int] | np.ndarray
    ) -> list[Delta]:
        """The knowledge delta of every local agent for this round (updates own public copies).

        `x` is (K, P) with one row per local agent; `examples` is labelled examples per agent.
        """
        out = []
        for row, i in enumerate(self.local):
            payload = compress(x[row] - self.xhat[i], self.compression)
            q = payload.decode()
            delta = Delta(
                sender=agent_name(i),
                round=round_,
                base_version=self.version[i],
                layout=self.layout,
                payload=payload,
                norm=float(np.linalg.norm(q.astype(np.float64))),
                examples=int(examples[row]),
            )
            self.xhat[i] += q
            self.version[i] += 1
            out.append(delta)
        return out

    def destinations(self, sender_index: int) -> list[str]:
        """Remote nodes that hold a public copy of this local agent."""
        return self._destinations[sender_index]

    def logical_recipients(self, sender_index: int) -> int:
        """Neighbours of an agent: the messages it would send as a standalone device."""
        return len(self.neighbours[self.local.index(sender_index)])

    # -- receiving -----------------------------------------------------------------------------

    def receive(self, deltas: Sequence[Delta]) -> int:
        """Accept a batch of already-decoded deltas, all or none; raises DeltaRejected."""
        with self._lock:
            expected = dict(self._expected)
            for d in deltas:
                j = self._remote.get(d.sender)
                if j is None:
                    raise DeltaRejected(
                        Rejection.UNKNOWN_SENDER, f"{d.sender!r} is not a neighbour of this node"
                    )
                if d.base_version != expected[j]:
                    raise DeltaRejected(
                        Rejection.STALE,
                        f"{d.sender} delta applies to version {d.base_version}, "
                        f"this node holds version {expected[j]}",
                    )
                expected[j] += 1
            self._expected = expected
            self._inbox.extend(deltas)
        return len(deltas)

    def apply(self, x: np.ndarray) -> int:
        """Apply pending deltas to the public copies, then one consensus step on `x` in place.

        Returns how many deltas were applied.
        """
        with self._lock:
            pending, self._inbox = self._inbox, []
        pending.sort(key=lambda d: (d.round, d.base_version, d.sender))
        for d in pending:
            j = self._remote[d.sender]
            self.xhat[j] += d.payload.decode()
            self.version[j] += 1
        for row, i in enumerate(self.local):
            if not self.neighbours[row]:
                continue
            mix = np.zeros(self.num_params, dtype=np.float64)
            for j, w in self.neighbours[row]:
                mix += w * (self.xhat[j] - self.xhat[i])
            x[row] += (self.gamma * mix).astype(np.float32)
        return len(pending)

    def known_sender(self, name: str) -> bool:
        return name in self._remote

    def received_from(self, name: str) -> int:
        """How many deltas of remote agent `name` this node has accepted so far."""
        with self._lock:
            return self._expected[self._remote[name]]
