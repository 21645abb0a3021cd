"""Federated exchange through a coordinator (pure logic; the gRPC service wraps it).

Round r, FedAvg (McMahan et al. 2017) with compressed uplinks and error feedback:

    agent i:      v_i = x_i - g + e_i;  q_i = Q(v_i);  e_i = v_i - q_i;  submit q_i
    coordinator:  A = AGG({q_i : i contributed})   (fedavg: sum_i n_i q_i / sum_i n_i, n_i =
                  labelled examples behind q_i; or a robust rule, see protocols.aggregation)
    agent i:      g += A;  x_i = g

Every agent holds the same global model g (version = rounds completed); the coordinator keeps
only the deltas of the open round, so it never needs the model itself.

A round closes when every expected agent has submitted, or - so that one dead agent never
stalls the swarm - once `round_timeout_s` has passed since the round's first delta and at
least quorum = ceil(min_completion * n) agents contributed; the aggregate is then over those
who arrived. Time is read from an injectable `clock` (time.monotonic by default). There is
no background thread: an overdue round is closed by whoever looks next - `submit`,
`wait_aggregate` (its waiters wake when the round falls due) or an explicit `close_if_due()`.
A delta for a version (round) that already closed is refused STALE.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from protocols import aggregation
from protocols.compression import DENSE_F32, Compressed, compress, shared_indices
from protocols.config import CompressionConfig, CoordinatorConfig
from protocols.delta import Delta, DeltaRejected, Rejection
from protocols.gossip import agent_name

COORDINATOR = "coordinator"


# ceil(min_completion * n) must be exact for e.g. 0.3 * 10 = 3.0000000000000004.
_EPS = 1e-9


def fedavg(deltas: Sequence[Delta], num_params: int) -> np.ndarray:
    """Example-weighted mean of decoded deltas (the rule lives in protocols.aggregation)."""
    return aggregation.aggregate(CoordinatorConfig(aggregator="fedavg"), deltas, num_params)


def quorum(n: int, min_completion: float) -> int:
    """ceil(min_completion * n): contributors a round needs before it may close on timeout."""
    return max(1, math.ceil(min_completion * n - _EPS))


class FederatedClient:
    """The agent side of coordinator rounds for the agents hosted by one node."""

    def __init__(
        self,
        *,
        local: Sequence[int],
        x0: np.ndarray,
        compression: CompressionConfig,
        layout: str,
        shared_coordinates: bool = False,
    ):
        """shared_coordinates: every agent sends the round's `shared_indices` instead of its
        own top-k (what the coordinator's coordinate-wise robust rules need; see
        protocols.compression and CoordinatorConfig.compares_coordinates)."""
        self.local = list(local)
        self.layout = layout
        self.compression = compression
        self.shared_coordinates = shared_coordinates
        self.global_model = np.array(x0, dtype=np.float32, copy=True)
        self.version = 0
        self.error = np.zeros((len(self.local), x0.size), dtype=np.float32)

    def make_deltas(
        self, x: np.ndarray, round_: int, examples: Sequence[int] | np.ndarray
    ) -> list[Delta]:
        out = []
        shared = None
        if self.shared_coordinates:
            shared = shared_indices(self.global_model.size, self.compression.ratio, round_)
        for row, i in enumerate(self.local):
            v = x[row] - self.global_model + self.error[row]
            payload = compress(v, self.compression, shared)
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
    """Collects one round of deltas from the expected agents and aggregates them.

    `config` picks the aggregation rule and the timeout / minimum-completion policy (defaults:
    fedavg, 30 s, half the agents); `clock` returns seconds and is injectable for tests.
    """

    def __init__(
        self,
        *,
        agents: Sequence[str],
        num_params: int,
        layout: str,
        config: CoordinatorConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.config = config if config is not None else CoordinatorConfig()
        self.expected = set(agents)
        self.num_params = num_params
        self.layout = layout
        self.quorum = quorum(len(self.expected), self.config.min_completion)
        krum = self.config.aggregator in ("krum", "multi_krum")
        if krum and self.quorum < 2 * self.config.byzantine + 3:
            # Checked here, not at close time: a round closing on timeout must never fail.
            raise ValueError(
                f"krum with byzantine = {self.config.byzantine} needs >= "
                f"{2 * self.config.byzantine + 3} deltas per round, but a round may close with "
                f"{self.quorum} (min_completion = {self.config.min_completion} of "
                f"{len(self.expected)} agents); raise min_completion or lower byzantine"
            )
        self.version = 0
        self._clock = clock
        self._round: dict[str, Delta] = {}
        self._round_id = 0  # round number of the open round (from its first delta)
        self._opened_at: float | None = None  # clock() at the open round's first delta
        self._closed: dict[int, tuple[Delta, int]] = {}  # round -> (aggregate, contributors)
        self._contributors: dict[int, list[str]] = {}  # round -> senders, sorted
        self._cond = threading.Condition()

    def submit(self, deltas: Sequence[Delta]) -> int:
        """Accept a batch of deltas, all or none; closes the round when everyone submitted."""
        with self._cond:
            seen = set(self._round)
            for d in deltas:
                if d.sender not in self.expected:
                    raise DeltaRejected(Rejection.UNKNOWN_SENDER, f"{d.sender!r} is not a member")
                if d.base_version != self.version or d.sender in seen or d.round in self._closed:
                    raise DeltaRejected(
                        Rejection.STALE,
                        f"{d.sender} delta for round {d.round}, version {d.base_version} "
                        f"(coordinator at {self.version}"
                        f"{', already submitted' if d.sender in seen else ''}"
                        f"{', round closed' if d.round in self._closed else ''})",
                    )
                seen.add(d.sender)
            if deltas and not self._round:
                self._round_id = deltas[0].round
                self._opened_at = self._clock()
            for d in deltas:
                self._round[d.sender] = d
            if self._round and set(self._round) == self.expected:
                self._close()
            else:
                self._close_if_due()
            return len(deltas)

    def close_if_due(self) -> int | None:
        """Close the open round if it timed out with a quorum; the round closed, else None."""
        with self._cond:
            return self._close_if_due()

    def _due_in(self) -> float:
        """Seconds (by clock) until the open round may close on timeout; inf if none is open."""
        if self._opened_at is None:
            return math.inf
        return self._opened_at + self.config.round_timeout_s - self._clock()

    def _close_if_due(self) -> int | None:
        if len(self._round) < self.quorum or self._due_in() > 0:
            return None
        return self._close()

    def _close(self) -> int:
        round_ = self._round_id
        contributions = list(self._round.values())
        mean = aggregation.aggregate(self.config, contributions, self.num_params)
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
        self._contributors[round_] = sorted(self._round)
        self._round = {}
        self._opened_at = None
        self.version += 1
        self._cond.notify_all()
        return round_

    def wait_aggregate(self, round_: int, timeout_s: float) -> tuple[Delta, int] | None:
        """The aggregate of `round_` and its number of contributors once it closes; None if it
        does not close within `timeout_s`.

        A waiter closes an overdue round itself: it sleeps until either a submit notifies it or
        the open round falls due by `clock`, whichever comes first. `timeout_s` is real time
        (threading waits in real time); with timeout_s = 0 this is a non-blocking check.
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                self._close_if_due()
                if round_ in self._closed:
                    return self._closed[round_]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                due_in = self._due_in()
                # Due but short of quorum: only a submit can change that, and it notifies.
                self._cond.wait(min(remaining, due_in) if due_in > 0 else remaining)

    def contributors(self, round_: int) -> list[str] | None:
        """The agents whose deltas make up the aggregate of `round_` (sorted); None if open."""
        with self._cond:
            found = self._contributors.get(round_)
            return None if found is None else list(found)

    def missing(self, round_: int) -> list[str] | None:
        """The expected agents that did not contribute to `round_` (sorted); None if open."""
        found = self.contributors(round_)
        return None if found is None else sorted(self.expected - set(found))


__all__ = ["COORDINATOR", "CoordinatorState", "FederatedClient", "fedavg", "quorum"]
