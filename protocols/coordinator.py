"""Federated exchange through a coordinator (pure logic; the gRPC service wraps it).

Round r, FedAvg (McMahan et al. 2017) with compressed uplinks and error feedback:

    agent i:      v_i = x_i - g + e_i;  q_i = Q(v_i);  e_i = v_i - q_i;  submit q_i
    coordinator:  A = sum_i n_i q_i / sum_i n_i   (n_i = labelled examples behind q_i;
                  uniform if nobody reports examples)
    agent i:      g += A;  x_i = g

Every agent holds the same global model g (version = rounds completed); the coordinator keeps
only the deltas of the open round, so it never needs the model itself.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from protocols.compression import DENSE_F32, Compressed, compress
from protocols.config import CompressionConfig
from protocols.delta import Delta, DeltaRejected, Rejection
from protocols.gossip import agent_name

COORDINATOR = "coordinator"


def fedavg(deltas: Sequence[Delta], num_params: int) -> np.ndarray:
    """Example-weighted mean of decoded deltas, in sender order (float64 accumulate)."""
    total = np.zeros(num_params, dtype=np.float64)
    ordered = sorted(deltas, key=lambda d: d.sender)
    weights = np.array([d.examples for d in ordered], dtype=np.float64)
    if weights.sum() <= 0:
        weights = np.ones(len(ordered))
    for w, d in zip(weights, ordered, strict=True):
        total += w * d.payload.decode()
    return (total / weights.sum()).astype(np.float32)


class FederatedClient:
    """The agent side of coordinator rounds for the agents hosted by one node."""

    def __init__(
        self, *, local: Sequence[int], x0: np.ndarray, compression: CompressionConfig, layout: str
    ):
        self.local = list(local)
        self.layout = layout
        self.compression = compression
        self.global_model = np.array(x0, dtype=np.float32, copy=True)
        self.version = 0
        self.error = np.zeros((len(self.local), x0.size), dtype=np.float32)

    def make_deltas(
        self, x: np.ndarray, round_: int, examples: Sequence[int] | np.ndarray
    ) -> list[Delta]:
        out = []
        for row, i in enumerate(self.local):
            v = x[row] - self.global_model + self.error[row]
            payload = compress(v, self.compression)
            q = payload.decode()
            self.error[row] = v - q
            out.append(
                Delta(
                    sender=agent_name(i),
                    round=round_,
                    base_version=self.version,
                    layout=self.layout,
                    payload=payload,
                    norm=float(np.linalg.norm(q.astype(np.float64))),
                    examples=int(examples[row]),
                )
            )
        return out

    def apply_aggregate(self, x: np.ndarray, aggregate: Delta) -> None:
        """Move to the new global model; every local row becomes it."""
        if aggregate.base_version != self.version:
            raise DeltaRejected(
                Rejection.STALE,
                f"aggregate for version {aggregate.base_version}, this node is at {self.version}",
            )
        self.global_model += aggregate.payload.decode()
        self.version += 1
        x[:] = self.global_model


class CoordinatorState:
    """Collects one round of deltas from the expected agents and aggregates them."""

    def __init__(self, *, agents: Sequence[str], num_params: int, layout: str):
        self.expected = set(agents)
        self.num_params = num_params
        self.layout = layout
        self.version = 0
        self._round: dict[str, Delta] = {}
        self._closed: dict[int, tuple[Delta, int]] = {}  # round -> (aggregate, contributors)
        self._cond = threading.Condition()

    def submit(self, deltas: Sequence[Delta]) -> int:
        """Accept a batch of deltas, all or none; closes the round when everyone submitted."""
        with self._cond:
            seen = set(self._round)
            for d in deltas:
                if d.sender not in self.expected:
                    raise DeltaRejected(Rejection.UNKNOWN_SENDER, f"{d.sender!r} is not a member")
                if d.base_version != self.version or d.sender in seen:
                    raise DeltaRejected(
                        Rejection.STALE,
                        f"{d.sender} delta for version {d.base_version} (coordinator at "
                        f"{self.version}{', already submitted' if d.sender in seen else ''})",
                    )
                seen.add(d.sender)
            for d in deltas:
                self._round[d.sender] = d
            if set(self._round) == self.expected:
                self._close(deltas[0].round if deltas else 0)
            return len(deltas)

    def _close(self, round_: int) -> None:
        contributions = list(self._round.values())
        mean = fedavg(contributions, self.num_params)
        aggregate = Delta(
            sender=COORDINATOR,
            round=round_,
            base_version=self.version,
            layout=self.layout,
            payload=Compressed(DENSE_F32, self.num_params, mean),
            norm=float(np.linalg.norm(mean.astype(np.float64))),
            examples=sum(d.examples for d in contributions),
        )
        self._closed[round_] = (aggregate, len(contributions))
        self._round = {}
        self.version += 1
        self._cond.notify_all()

    def wait_aggregate(self, round_: int, timeout_s: float) -> tuple[Delta, int] | None:
        """The aggregate of `round_` once it closes; None if it does not close in time."""
        with self._cond:
            self._cond.wait_for(lambda: round_ in self._closed, timeout=timeout_s)
            return self._closed.get(round_)


__all__ = ["COORDINATOR", "CoordinatorState", "FederatedClient", "fedavg"]
