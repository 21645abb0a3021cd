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

Rounds are numbered as versions (a client at version v submits and asks for round v). The
aggregates of the last `keep_rounds` closed rounds are kept (CoordinatorConfig); older ones are
dropped, so memory stays bounded however long the swarm runs. A request for a round is answered
by what the round is now (`wait_aggregate`):

    kept        its aggregate, at once
    open        (the round at the current version, or the one whose deltas are arriving)
                its aggregate once it closes; the caller bounds the wait
    dropped     a snapshot: the sum S of every aggregate since version 0, as a dense delta
                with `snapshot` set and base_version = the current version
    otherwise   refused: RoundNotOpen (a round that has not begun)

Why a snapshot rather than a refusal: every client holds g = x0 + (its aggregates, in order),
x0 being the model it started from (the swarm's common init), so x0 + S is the global model at
the current version whoever asks; a client that fell further behind than the window (a device
away for long, a shard restored from an old checkpoint) catches up in one step instead of being
stranded. S is summed in float64, so x0 + S equals the per-round float32 sums to float32
rounding, not bit for bit; clients inside the window apply the very aggregates as before. A
coordinator that resumed at a later version (a resumed run) has no sum from version 0: it
refuses a dropped round STALE instead, and the client has to restart from a checkpoint within
the window.
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
from protocols.gossip import Limits, agent_name

COORDINATOR = "coordinator"


class RoundNotOpen(Exception):
    """An aggregate was asked for a round that has not begun: neither closed, kept or open."""


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
        self.x0 = self.global_model.copy()  # the model at version 0: what snapshots add to
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
        """Move to the new global model; every local row becomes it.

        An aggregate moves version v to v + 1 and must be for v. A coordinator's snapshot (the
        answer for a round it no longer keeps, see the module docstring) holds the sum of every
        aggregate since version 0: the global model is then x0 + that sum, at its base_version,
        which must be ahead of this client.
        """
        if aggregate.snapshot:
            if aggregate.base_version <= self.version:
                raise DeltaRejected(
                    Rejection.STALE,
                    f"snapshot at version {aggregate.base_version}, this node is at {self.version}",
                )
            total = aggregate.payload.decode().astype(np.float64)
            self.global_model[:] = self.x0.astype(np.float64) + total
            self.version = aggregate.base_version
            x[:] = self.global_model
            return
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

    `config` picks the aggregation rule, the timeout / minimum-completion policy (defaults:
    fedavg, 30 s, half the agents) and how many closed rounds are kept (`keep_rounds`);
    `clock` returns seconds and is injectable for tests. `start_version`: the version it opens
    at (a resumed run's coordinator opens at its checkpoint's round; it then makes no
    snapshots, having no sum from version 0). `limits`: the norm and value limits a submitted
    delta must keep (`gossip.limits`, `Limits.from_scale`); None: none.
    """

    def __init__(
        self,
        *,
        agents: Sequence[str],
        num_params: int,
        layout: str,
        config: CoordinatorConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        start_version: int = 0,
        limits: Limits | None = None,
    ):
        self.config = config if config is not None else CoordinatorConfig()
        self.limits = limits or Limits()
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
        self.version = start_version
        self._clock = clock
        self._round: dict[str, Delta] = {}
        self._round_id = 0  # round number of the open round (from its first delta)
        self._opened_at: float | None = None  # clock() at the open round's first delta
        # The last keep_rounds closed rounds, oldest first (dicts keep insertion order).
        self._closed: dict[int, tuple[Delta, int]] = {}  # round -> (aggregate, contributors)
        self._contributors: dict[int, list[str]] = {}  # round -> senders, sorted
        self._dropped_through = -1  # the latest round dropped from the window
        # The sum of every aggregate since version 0 (float64: summed over thousands of rounds,
        # float32 would lose the small late aggregates); None when this state opened later.
        self._total: np.ndarray | None = (
            np.zeros(num_params, np.float64) if start_version == 0 else None
        )
        self._cond = threading.Condition()

    def submit(self, deltas: Sequence[Delta]) -> int:
        """Accept a batch of deltas, all or none; closes the round when everyone submitted."""
        with self._cond:
            seen = set(self._round)
            for d in deltas:
                if d.sender not in self.expected:
                    raise DeltaRejected(Rejection.UNKNOWN_SENDER, f"{d.sender!r} is not a member")
                self.limits.check_magnitude(d)  # a key holder's huge delta (OUT_OF_BOUNDS)
                closed = d.round in self._closed or d.round <= self._dropped_through
                if d.base_version != self.version or d.sender in seen or closed:
                    raise DeltaRejected(
                        Rejection.STALE,
                        f"{d.sender} delta for round {d.round}, version {d.base_version} "
                        f"(coordinator at {self.version}"
                        f"{', already submitted' if d.sender in seen else ''}"
                        f"{', round closed' if closed else ''})",
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
        if self._total is not None:
            self._total += mean.astype(np.float64)
        while len(self._closed) > self.config.keep_rounds:
            oldest = next(iter(self._closed))
            del self._closed[oldest], self._contributors[oldest]
            self._dropped_through = max(self._dropped_through, oldest)
        self._round = {}
        self._opened_at = None
        self.version += 1
        self._cond.notify_all()
        return round_

    def wait_aggregate(self, round_: int, timeout_s: float) -> tuple[Delta, int] | None:
        """The aggregate of `round_` and its number of contributors once it closes; None if it
        does not close within `timeout_s`. For a round no longer kept, a snapshot (module
        docstring) and 0 contributors, at once.

        Only the open round is waited for: a round that has not begun raises RoundNotOpen, and
        a dropped round of a state with no snapshot (it opened at a later version) raises
        DeltaRejected STALE, both at once. A waiter closes an overdue round itself: it sleeps
        until either a submit notifies it or the open round falls due by `clock`, whichever
        comes first. `timeout_s` is real time (threading waits in real time); with timeout_s =
        0 this is a non-blocking check (what a caller that rations waiting asks first).
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                self._close_if_due()
                if round_ in self._closed:
                    return self._closed[round_]
                open_ = round_ == self.version or (bool(self._round) and round_ == self._round_id)
                if not open_ and round_ < self.version:
                    return self._snapshot(round_)
                if not open_:
                    raise RoundNotOpen(
                        f"round {round_} has not begun: the coordinator is at version "
                        f"{self.version} and keeps rounds {self._kept_range()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                due_in = self._due_in()
                # Due but short of quorum: only a submit can change that, and it notifies.
                self._cond.wait(min(remaining, due_in) if due_in > 0 else remaining)

    def _kept_range(self) -> str:
        if not self._closed:
            return "(none yet)"
        return f"{next(iter(self._closed))}..{next(reversed(self._closed))}"

    def _snapshot(self, round_: int) -> tuple[Delta, int]:
        """The answer for `round_`, no longer kept: the sum of every aggregate since version 0
        as a snapshot at the current version, 0 contributors; raises DeltaRejected STALE when
        this state has no such sum."""
        if self._total is None or not self._closed:
            raise DeltaRejected(
                Rejection.STALE,
                f"round {round_} is no longer kept (rounds {self._kept_range()} are) and this "
                "coordinator, resumed at a later version, holds no snapshot from version 0: "
                "restore from a checkpoint within gossip.coordinator.keep_rounds rounds",
            )
        total = self._total.astype(np.float32)
        snapshot = Delta(
            sender=COORDINATOR,
            round=next(reversed(self._closed)),  # the last round it holds
            base_version=self.version,
            layout=self.layout,
            payload=Compressed(DENSE_F32, self.num_params, total),
            norm=float(np.linalg.norm(total.astype(np.float64))),
            snapshot=True,
        )
        return snapshot, 0

    def kept_rounds(self) -> list[int]:
        """The closed rounds whose aggregates are kept, oldest first (at most keep_rounds)."""
        with self._cond:
            return list(self._closed)

    def contributors(self, round_: int) -> list[str] | None:
        """The agents whose deltas make up the aggregate of `round_` (sorted); None if open or
        no longer kept."""
        with self._cond:
            found = self._contributors.get(round_)
            return None if found is None else list(found)

    def missing(self, round_: int) -> list[str] | None:
        """The expected agents that did not contribute to `round_` (sorted); None if open."""
        found = self.contributors(round_)
        return None if found is None else sorted(self.expected - set(found))


__all__ = ["COORDINATOR", "CoordinatorState", "FederatedClient", "RoundNotOpen", "fedavg", "quorum"]
