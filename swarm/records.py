"""What crosses the Ray actor boundary, as typed records.

The World, the AgentShards and the Coordinator are separate processes; the driver (the
Runner) reads what they report and writes the run's files. Each report is one of these
dataclasses (numpy arrays and plain values inside, so Ray serialises them cheaply), never a
free-form dict: a field renamed on one side is a type error on the other.

    WorldHost.info()      -> WorldInfo      what the agents perceive and decide (GroupInfo:
                                            one agent group's part of it)
    WorldHost.reset/step  -> Step           one tick's observations and feedback
    AgentShard.measure()  -> ShardMeasure   one metrics row's worth from a shard
      .traffic            -> Traffic        what its exchange sent and received
    AgentShard.checkpoint -> Receipt        what a checkpoint wrote
    Runner                -> Row            a line of metrics.jsonl
    Runner.run()          -> RunSummary     summary.json

The files a run writes are JSON documents (`JSON`); each record converts to and from its
document at the file's edge (`as_json`, `from_json`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

import numpy as np

if TYPE_CHECKING:
    from protocols.outbox import PeerStats

#: A JSON value: what summary.json, metrics.jsonl and a checkpoint's metadata hold.
JSON: TypeAlias = None | bool | int | float | str | list["JSON"] | dict[str, "JSON"]
Document: TypeAlias = dict[str, JSON]
#: A figure of a metrics row (None where there was nothing to measure, or not finite).
Figure: TypeAlias = float | None


def figures_of(doc: Document) -> dict[str, Figure]:
    """The numeric figures of a document (e.g. summary.json's `metrics`)."""
    return {
        k: v
        for k, v in doc.items()
        if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
    }


def as_int(value: JSON) -> int:
    """An integer read from a JSON document; a TypeError names what was there instead."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, found {value!r}")
    return int(value)


def as_doc(value: JSON) -> Document:
    """An object read from a JSON document; a TypeError names what was there instead."""
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, found {value!r}")
    return value


@dataclass(frozen=True)
class GroupInfo:
    """One agent group of a world with rewards (envs/pz_world.py `AgentGroup`): agents with
    one observation size and one action space, so one model layout. Its agents are the
    contiguous range first..first+count-1; it gossips only within itself."""

    name: str
    first: int  # the index of its first agent
    count: int  # its agents, over every copy of the world
    obs_dim: int  # the numbers of its observation: the first obs_dim of a Step.obs row
    n_actions: int = 0  # a Discrete(n) action space: n
    action_dim: int = 0  # a Box action space: the numbers of one action, and their bounds
    action_low: list[float] = field(default_factory=list)
    action_high: list[float] = field(default_factory=list)

    @property
    def agents(self) -> range:
        return range(self.first, self.first + self.count)


@dataclass(frozen=True)
class WorldInfo:
    """What the world tells the agents about itself before the first tick."""

    task: str  # the task's name (swarm.tasks): "classify" or "rl"
    obs_dim: int
    agent_ids: list[str]
    # what a classification world's sensors deliver (agents.config.InputConfig fields)
    inputs: Document | None = None
    n_classes: int = 0
    classes: list[str] = field(default_factory=list)
    n_actions: int = 0  # a Discrete(n) action space: n
    # a continuous (Box) action space: the numbers of one action and their bounds (a Discrete
    # space has action_dim 0 and no bounds)
    action_dim: int = 0
    action_low: list[float] = field(default_factory=list)
    action_high: list[float] = field(default_factory=list)
    # the tick at which each agent joins with a fresh model (0: there from the start)
    join_tick: list[int] = field(default_factory=list)
    # agents per independent copy of the world, whose copies can be stepped in parts
    # (WorldHost.step_part); 0: the world steps only as a whole
    per_copy: int = 0
    # the agent groups of a world with rewards, in agent order (one or more; none for a
    # world whose agents all share one layout by construction, the drone patrol). With two
    # or more, obs_dim is the widest group's, n_actions the largest n and action_dim the
    # widest action (the widths of Step.obs and of a tick's decisions); each group's own are
    # in its GroupInfo, and `for_agents` gives a shard's view.
    groups: list[GroupInfo] = field(default_factory=list)

    @property
    def model_inputs(self) -> int | Document:
        """The model's input description: the sensors' layout, else the vector size."""
        return self.inputs or self.obs_dim

    def group_of(self, agent: int) -> GroupInfo:
        """The group agent `agent` belongs to (ValueError if none: a device, say)."""
        for g in self.groups:
            if agent in g.agents:
                return g
        raise ValueError(f"agent {agent} is in none of the world's groups")

    def for_agents(self, agents: list[int]) -> WorldInfo:
        """What a shard hosting `agents` perceives and decides: in a world of two or more
        groups, its group's observation size and action space (ValueError if the agents are
        not all of one group: a shard holds one model layout); else the world's own."""
        if len(self.groups) < 2:
            return self
        g = self.group_of(agents[0])
        if not all(a in g.agents for a in agents):
            raise ValueError(
                f"agents {agents[0]}..{agents[-1]} straddle agent groups ({g.name}: agents "
                f"{g.first}..{g.first + g.count - 1}); a shard hosts one group's agents"
            )
        return dataclasses.replace(
            self,
            obs_dim=g.obs_dim,
            n_actions=g.n_actions,
            action_dim=g.action_dim,
            action_low=list(g.action_low),
            action_high=list(g.action_high),
            per_copy=0,
        )


@dataclass
class Step:
    """What every shard receives each tick: all observations and the labels that arrived
    (classification worlds), or the rewards of the last actions (worlds with rewards)."""

    tick: int
    obs: np.ndarray  # (N, obs_dim) float32; an agent of a narrower group: zeros after its own
    labels: np.ndarray  # (M, 3) int64 rows (agent, tick, class)
    rewards: np.ndarray | None = None  # (N,) float32: what the previous actions earned
    done: np.ndarray | None = None  # (N,) bool: the agent's episode ended; obs starts the next
    alive: np.ndarray | None = None  # (N,) bool: the agent acts this tick
    truncated: np.ndarray | None = None  # (N,) bool: its episode was cut by a time limit
    final_obs: np.ndarray | None = None  # (N, obs_dim): the last observation of those episodes


NO_LABELS = np.zeros((0, 3), np.int64)
Probe: TypeAlias = tuple[np.ndarray, np.ndarray]  # (windows, labels) of the held-out probe set


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
    devices: dict[str, PeerStats] = field(default_factory=dict)  # outbox stats per device

    def counter(self, name: str) -> int:
        return int(self.counters.get(name, 0))

    def sent_per_agent(self, n_agents: int) -> list[int]:
        return self.bytes_sent if self.bytes_sent is not None else [0] * n_agents


@dataclass
class Labelled:
    """The sharing agents' labelled windows since the last take (rows into the shard's
    agents), and the agents renewed (new devices) in that time."""

    renewed: list[int]
    rows: np.ndarray  # (M,) int64
    ticks: np.ndarray  # (M,) int64
    classes: np.ndarray  # (M,) int64
    windows: np.ndarray  # (M, window, obs_dim) float32


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

    def as_json(self) -> Document:
        """The restore's figures; probe accuracies only where a checkpoint was restored."""
        doc = as_doc(json_of(dataclasses.asdict(self)))
        return {k: v for k, v in doc.items() if v is not None or k == "checkpoint_ticks"}


@dataclass
class Row:
    """One metrics row (a line of metrics.jsonl): the swarm's figures after `tick` ticks."""

    tick: int
    sim_time_s: float
    figures: dict[str, Figure]  # by name: task/*, learn/*, gossip/*, rl/*
    agents: dict[str, list[float]] = field(default_factory=dict)  # per agent, in agent order

    def get(self, name: str) -> Figure:
        return self.figures.get(name)

    def value(self, name: str) -> float:
        """A figure that must be there; a KeyError or ValueError says which is missing."""
        v = self.figures[name]
        if v is None:
            raise ValueError(f"row at tick {self.tick}: {name} is not measured")
        return v

    def as_json(self) -> Document:
        agents: Document = {k: list(v) for k, v in self.agents.items()}
        return {"tick": self.tick, "sim_time_s": self.sim_time_s, **self.figures, "agents": agents}

    @classmethod
    def from_json(cls, doc: Document) -> Row:
        agents = as_doc(doc.get("agents", {}))
        rest = {k: v for k, v in doc.items() if k not in ("tick", "sim_time_s", "agents")}
        figures = figures_of(rest)
        if len(figures) != len(rest):
            bad = sorted(set(rest) - set(figures))
            raise TypeError(f"metrics row at tick {doc.get('tick')}: not figures: {bad}")
        return cls(
            tick=as_int(doc["tick"]),
            sim_time_s=as_number(doc["sim_time_s"]),
            figures=figures,
            agents={k: [as_number(x) for x in as_list(v)] for k, v in agents.items()},
        )


def as_number(value: JSON) -> float:
    """A number read from a JSON document; a TypeError names what was there instead."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, found {value!r}")
    return value


def as_list(value: JSON) -> list[JSON]:
    """A list read from a JSON document; a TypeError names what was there instead."""
    if not isinstance(value, list):
        raise TypeError(f"expected a list, found {value!r}")
    return value


def as_str(value: JSON) -> str:
    """A string read from a JSON document; a TypeError names what was there instead."""
    if not isinstance(value, str):
        raise TypeError(f"expected a string, found {value!r}")
    return value


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
    accounting: Document  # swarm.accounting.account
    faults: Document  # the kills and what they restored; the Byzantine agents
    # whether learn/probe_acc_isolated is a measured twin (else it repeats probe_acc)
    isolated_baseline: bool
    placement: list[Document]  # where each shard ran, and what it took in
    agents: int
    shards: int
    topology: str
    mode: str
    task: str
    classes: list[str]
    metrics: dict[str, Figure]  # the last metrics row with the run's final figures
    run: RunInfo
    diverged_at_tick: int | None  # the first metrics tick with non-finite weights

    def as_json(self) -> Document:
        return as_doc(json_of(dataclasses.asdict(self)))


def json_of(value: object) -> JSON:
    """A plain-data value (dataclasses.asdict output, numbers, lists) as a JSON value."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [json_of(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_of(v) for k, v in value.items()}
    raise TypeError(f"not JSON: {value!r}")
