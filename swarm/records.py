"""What crosses the Ray actor boundary, as typed records.

The World, the AgentShards and the Coordinator are separate processes; the driver (the
Runner) reads what they report and writes the run's files. Each report is one of these
dataclasses (numpy arrays and plain values inside, so Ray serialises them cheaply), never a
free-form dict: a field renamed on one side is a type error on the other.

    WorldHost.info()      -> WorldInfo      what the agents perceive and decide
    WorldHost.reset/step  -> Step           one tick's observations and feedback
    AgentShard.measure()  -> ShardMeasure   one metrics row's worth from a shard
      .traffic            -> Traffic        what its exchange sent and received
    AgentShard.checkpoint -> Receipt        what a checkpoint wrote
    Runner.run()          -> RunSummary     summary.json
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class WorldInfo:
    """What the world tells the agents about itself before the first tick."""

    task: str  # the task's name (swarm.tasks): "classify" or "rl"
    obs_dim: int
    agent_ids: list[str]
    # what a classification world's sensors deliver (agents.config.InputConfig fields)
    inputs: dict[str, Any] | None = None
    n_classes: int = 0
    classes: list[str] = field(default_factory=list)
    n_actions: int = 0

    @property
    def model_inputs(self) -> int | dict[str, Any]:
        """The model's input description: the sensors' layout, else the vector size."""
        return self.inputs or self.obs_dim


@dataclass
class Step:
    """What every shard receives each tick: all observations and the labels that arrived
    (classification worlds), or the rewards of the last actions (worlds with rewards)."""

    tick: int
    obs: np.ndarray  # (N, obs_dim) float32
    labels: np.ndarray  # (M, 3) int64 rows (agent, tick, class)
    rewards: np.ndarray | None = None  # (N,) float32: what the previous actions earned
    done: np.ndarray | None = None  # (N,) bool: the agent's episode ended; obs starts the next
    alive: np.ndarray | None = None  # (N,) bool: the agent acts this tick
    truncated: np.ndarray | None = None  # (N,) bool: its episode was cut by a time limit
    final_obs: np.ndarray | None = None  # (N, obs_dim): the last observation of those episodes


NO_LABELS = np.zeros((0, 3), np.int64)


@dataclass
class Traffic:
    """A shard's exchange counts since the run began (all zero for a shard that never
    shares): its gRPC edge's counters, the bytes its agents sent (logical: as standalone
    devices would, one copy per neighbour), the dense fp32 equivalent, rounds, and its
    message ledger (swarm.accounting.Ledger.state())."""

    counters: dict[str, int] = field(default_factory=dict)  # transport.TrafficCounters
    bytes_sent: list[int] | None = None  # per local agent
    dense_bytes: list[int] = field(default_factory=list)  # per local agent
    rounds: int = 0
    ledger: dict[str, int] = field(default_factory=dict)
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)  # outbox stats per device

    def counter(self, name: str) -> int:
        return int(self.counters.get(name, 0))

    def sent_per_agent(self, n_agents: int) -> list[int]:
        return self.bytes_sent if self.bytes_sent is not None else [0] * n_agents

    def receiver_counts(self) -> dict[str, int]:
        """What the accounting reads from a receiver (swarm.accounting.account)."""
        return self.counters


@dataclass
class ShardMeasure:
    """One shard's part of a metrics row."""

    agents: list[int]  # global indices, in the shard's order
    # Sufficient statistics for the swarm's consensus distance (mean ||x_i - xbar||^2).
    sum_x: np.ndarray  # (P,) float64: the sum of the agents' parameter vectors
    sum_sq: float  # the sum of their squared norms
    traffic: Traffic
    density: float  # selective activation on the last training step (1.0 when dense)
    # classification: balanced probe accuracy per agent, per-class accuracy (K, C; -1 where
    # a class is absent), and the isolated twins' accuracy (= probe_acc without twins)
    probe_acc: list[float] = field(default_factory=list)
    per_class: list[list[float]] = field(default_factory=list)
    probe_acc_isolated: list[float] = field(default_factory=list)
    # reinforcement learning: the learner's last update statistics
    rl: dict[str, float] = field(default_factory=dict)


@dataclass
class Receipt:
    """What one shard's checkpoint wrote."""

    shard: int
    ticks: int
    bytes: int
    probe_acc: list[float]


@dataclass
class Restored:
    """What a shard restored when it started (after a kill, or on --resume)."""

    agents: list[int]
    checkpoint_ticks: int | None = None
    probe_acc_checkpoint: list[float] | None = None
    probe_acc_restored: list[float] | None = None

    def as_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class RunInfo:
    """Wall-clock figures of a run: they differ between identical runs, so they are kept apart
    from the metrics."""

    run_dir: str
    wall_s: float
    setup_s: float
    ticks_per_s: float
    real_time_factor: float
    dashboard_url: str | None
    resumed_from_tick: int | None


@dataclass
class RunSummary:
    """summary.json: the run's final figures and how it went."""

    scenario: str
    seed: int
    accounting: dict[str, Any]
    faults: dict[str, Any]
    # whether learn/probe_acc_isolated is a measured twin (else it repeats probe_acc)
    isolated_baseline: bool
    placement: list[dict[str, Any]]
    agents: int
    shards: int
    topology: str
    mode: str
    task: str
    classes: list[str]
    metrics: dict[str, Any]  # the last metrics row with the run's final figures
    run: RunInfo
    diverged_at_tick: int | None  # the first metrics tick with non-finite weights

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSummary:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["run"] = RunInfo(**data["run"])
        return cls(**values)
