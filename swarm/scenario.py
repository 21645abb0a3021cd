"""Scenario files: a strict typed schema and a loader whose errors name file, key path and line.

A scenario is YAML. Every section is a strict pydantic model (`swarm._config.Section`): an
unknown or misspelled key, a wrong type or an impossible value is an error. `load_scenario`
turns pydantic's errors into one readable paragraph per problem::

    scenarios/bad.yaml:4: agents.cout: unknown key (did you mean 'count'?)

`ScenarioError` carries that text; the CLI prints it and exits 2 without a traceback.

A scenario may come from someone else, so reading one is bounded: the file's size, how deep its
YAML nests, how far its aliases expand and which modules `world.env` may name; duplicate keys
are refused; and `load_scenario(..., check_files=True)` (`swarm validate`, `swarm run`) checks
every file it names is a readable regular file of sane size, never echoing what is in one.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, TypeVar

import yaml
from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails

from agents.config import LearnConfig, ModelConfig, RLConfig
from envs.drone_patrol.config import DronePatrolConfig
from envs.pz_config import PettingZooConfig
from protocols.config import GossipConfig
from protocols.coordinator import quorum
from protocols.faults import FaultPlan, FaultsConfig
from swarm._config import MAX_AGENT_INDEX, MAX_TICK, Section
from swarm.addresses import is_loopback
from swarm.exchange import exchange_for
from swarm.records import GroupInfo, WorldInfo
from swarm.tasks import task_of_world

if TYPE_CHECKING:
    import networkx as nx

#: World kinds by their `kind` value; a world section without `kind` is a drone patrol.
WORLDS: dict[str, type[Section]] = {
    "drone_patrol": DronePatrolConfig,
    "pettingzoo": PettingZooConfig,
}


def _world_kind(value: object) -> str | None:
    """The world kind of a raw world section (a mapping) or of a built one."""
    if isinstance(value, dict):
        kind = value.get("kind", "drone_patrol")
        return kind if kind in WORLDS else None
    return getattr(value, "kind", None)


WorldConfig = Annotated[
    Annotated[DronePatrolConfig, Tag("drone_patrol")]
    | Annotated[PettingZooConfig, Tag("pettingzoo")],
    Discriminator(
        _world_kind,
        custom_error_type="world_kind",
        custom_error_message="world.kind must be one of: " + ", ".join(WORLDS),
    ),
]


_V = TypeVar("_V")


def _per_shard(value: _V) -> _V:
    """`value` itself if it is a valid agents.per_shard, which pydantic then validates."""
    if value == "auto" or (
        isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 100_000
    ):
        return value
    raise ValueError("must be 'auto' or a whole number from 1 to 100000")


class AgentsConfig(Section):
    """How many agents, and how they are packed into Ray actors."""

    count: int = Field(12, ge=1, le=100_000)
    """Number of agents (drones), each with its own model."""
    per_shard: Annotated[int | Literal["auto"], BeforeValidator(_per_shard)] = 4
    """Agents hosted by one AgentShard actor (their models are stacked and batched); 'auto'
    sizes the shards from the agent count and the CPUs of the Ray cluster (`auto_per_shard`)."""


class MetricsConfig(Section):
    """What is measured during a run, and how often."""

    interval: int = Field(20, ge=1, le=MAX_TICK)
    """Ticks between two metric records (probe accuracy, bytes, task figures); at most
    MAX_TICK (2^40), the longest run (a longer interval gives the final record only)."""
    probe_per_class: int = Field(30, ge=1, le=10_000)
    """Held-out probe windows per event class, used to score every agent's model."""


class BaselineConfig(Section):
    """The comparison that shows what sharing bought."""

    isolated: bool = True
    """Fly an isolated twin of the swarm beside it: every agent's twin learns alone, never
    sharing, in a twin world of its own (the same seed and events, flown on the twins' own
    decisions, labelled from the twins' own reports), and the run reports the twins' probe
    accuracy and task figures (`<figure>_isolated`) next to the sharing swarm's. Worlds with
    rewards have no twins: compare with a run of gossip.topology: isolated instead."""


class RayConfig(Section):
    """The embedded Ray runtime (ignored for settings an existing cluster fixes)."""

    num_cpus: int | None = Field(None, ge=1, le=1024)
    """CPUs the embedded Ray may use (default: all); at most 1,024, twice the hardware threads
    of the largest two-socket servers: with agents.per_shard auto a run starts a shard actor
    per CPU (~350 MB each, `auto_per_shard`), so a made-up count would start thousands."""
    dashboard: bool = True
    """Start the Ray dashboard and print its URL."""
    object_store_mb: int = Field(256, ge=64, le=65_536)
    """Object store size of the embedded Ray; runs pass small arrays only (a tick's
    observations and deltas: a few MB at agents.count's cap). 64 is Ray's smallest useful
    store; 65,536 (64 GiB) bounds what a scenario may ask a machine to set aside in shared
    memory (Ray only finds out at start, after seconds, that it cannot)."""
    task_events_kept: int = Field(10_000, ge=100, le=1_000_000)
    """Task events (one per actor call: ~5 a tick for a 3-shard run) the embedded Ray's GCS
    keeps for the dashboard's task list and `ray list tasks`; older ones are dropped. Each
    costs ~3 KB of GCS memory, so Ray's own cap (100,000) lets a long run's GCS grow by ~300
    MB (BENCHMARKS.md, Soak); 10,000 bounds it to ~30 MB and still holds the last ~30 minutes
    of a real-time run's calls. Raise it to keep more history, up to 1,000,000 (~3 GB of GCS
    memory; 100 at least, a few ticks' worth)."""


class CheckpointConfig(Section):
    """Durable checkpoints of a run (runs/<id>/checkpoints, swarm/resume.py)."""

    every_ticks: int = Field(0, ge=0, le=MAX_TICK)
    """Save every agent (model, optimizer, memories, RNG, gossip state) and the world's
    replay log every this many ticks (0: never). A shard that dies restarts from the last one,
    and `swarm run --resume runs/<id>` continues an interrupted run from it. A multiple of
    gossip.interval: a checkpoint sits between two gossip rounds. At most MAX_TICK (2^40),
    the longest run."""


class ExternalPeer(Section):
    """An agent that runs on a device (`swarm-node`), not in the simulation."""

    agent: int = Field(ge=0, le=MAX_AGENT_INDEX)
    """Its agent index: external agents follow the simulated ones (agents.count, count + 1,
    ...), so the gossip graph spans agents.count + len(external_peers) agents (at most
    MAX_AGENT_INDEX, 200,000)."""
    address: str = Field(pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}$")
    """HOST:PORT where its gossip server listens."""


#: Largest seed: torch's generators take seeds below 2**64 and the run adds to the seed
#: (probe set: seed + 1_000_003, an agent's membership: seed + its index, `swarm compare`:
#: seed + i), so 2**32 - 1, numpy's legacy seed range, keeps every derived seed in range.
MAX_SEED = 2**32 - 1


class Scenario(Section):
    """One runnable scenario: world, agents, their minds, and how they share knowledge."""

    name: str = Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9_.-]+$")
    """Short identifier; part of the run directory name."""
    seed: int = Field(0, ge=0, le=MAX_SEED)
    """Seeds the world, the models and every sampler; same seed + sync gossip = same results."""
    ticks: int = Field(400, ge=1, le=MAX_TICK)
    """Length of the run in ticks, at most MAX_TICK (2^40: ~35 years of 1 ms ticks)."""
    agents: AgentsConfig = AgentsConfig()
    world: WorldConfig = DronePatrolConfig()
    """The world: a drone patrol (kind: drone_patrol) or any PettingZoo ParallelEnv
    (kind: pettingzoo)."""
    model: ModelConfig = ModelConfig()
    learning: LearnConfig = LearnConfig()
    rl: RLConfig = RLConfig()
    """Online actor-critic, for worlds that give rewards (kind: pettingzoo)."""
    gossip: GossipConfig = GossipConfig()
    metrics: MetricsConfig = MetricsConfig()
    baseline: BaselineConfig = BaselineConfig()
    ray: RayConfig = RayConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    faults: FaultsConfig = FaultsConfig()
    """Faults injected on purpose, seeded and reproducible: lost, delayed and duplicated
    messages, partitions, killed shards, Byzantine agents (protocols/faults.py)."""
    external_peers: list[ExternalPeer] = []
    """Device nodes (`swarm-node`) that gossip with the simulated agents over the same protocol;
    needs gossip.key_file (the devices must share the HMAC key) and decentralized gossip."""

    @model_validator(mode="after")
    def _fits(self) -> Scenario:
        if self.external_peers:
            want = list(range(self.agents.count, self.agents.count + len(self.external_peers)))
            got = [p.agent for p in self.external_peers]
            if sorted(got) != want:
                raise ValueError(
                    f"external_peers: agents must be {want} (the indices after the "
                    f"{self.agents.count} simulated agents, each once); got {got}"
                )
            if not exchange_for(self.gossip.topology).takes_devices:
                raise ValueError("external_peers: devices join decentralized gossip only")
            if self.gossip.graph.kind == "proximity":
                raise ValueError("external_peers: a proximity graph needs every agent's position")
            remote = [p.address for p in self.external_peers if not is_loopback(p.address)]
            if remote and (self.gossip.tls.mode != "mtls" or not self.gossip.tls.cert_dir):
                raise ValueError(
                    f"external_peers: {remote[0]} is on a network; set gossip.tls to mode mtls "
                    "with a cert_dir holding ca.pem and the shards' certificates (`swarm certs "
                    "DIR --node shard-0=THIS_HOST ...`), the CA the devices trust"
                )
            if not self.gossip.key_file:
                raise ValueError(
                    "external_peers: set gossip.key_file, the HMAC key the devices share "
                    "(a run otherwise makes a secret key of its own)"
                )
        self._check_faults()
        self._check_coordinator()
        self._check_robust_degrees()
        self._check_sightings()
        n = self.total_agents
        if self.gossip.graph.kind == "random_regular" and (
            self.gossip.graph.degree >= n or (self.gossip.graph.degree * n) % 2
        ):
            raise ValueError(
                "gossip.graph: a random_regular graph needs degree < the number of agents "
                f"(agents.count plus external_peers) and degree * that number even (got degree "
                f"{self.gossip.graph.degree}, {n} agents)"
            )
        if (
            exchange_for(self.gossip.topology).pooled
            and self.agents.per_shard != "auto"
            and self.agents.per_shard < self.agents.count
        ):
            raise ValueError(
                "gossip.topology: centralized trains one model on every agent's data in one "
                f"shard: set agents.per_shard >= agents.count ({self.agents.count})"
            )
        if self.gossip.graph.kind == "proximity" and self.world.kind != "drone_patrol":
            raise ValueError(
                "gossip.graph: a proximity graph needs positions; only the drone_patrol world "
                "has them"
            )
        return self

    def _check_robust_degrees(self) -> None:
        """A robust consensus step ranks or trims the neighbours' copies, so every agent needs
        enough neighbours: checked on the graph the run will build (a proximity graph, made
        from the drones' start positions, is checked when the run starts; a graph file with
        the other files a scenario names, `load_scenario(..., check_files=True)`, since
        validating the schema reads no file)."""
        graph = self.gossip.graph
        if not self.checks_degrees or graph.kind in ("proximity", "file"):
            return
        if graph.kind == "random_regular" and (graph.degree * self.total_agents) % 2:
            return  # refused below, with its own reason
        # networkx only when a robust step asks: `swarm validate` stays quick otherwise
        from protocols.topology import build_graph

        if problem := self.too_few_neighbours(build_graph(graph, self.total_agents, self.seed)):
            raise ValueError(f"gossip.robust: {problem}")

    @property
    def checks_degrees(self) -> bool:
        """Whether the gossip graph must give every agent a least number of neighbours."""
        return bool(
            self.gossip.robust.neighbours_needed()
            and exchange_for(self.gossip.topology).needs_graph
        )

    def too_few_neighbours(self, built: nx.Graph) -> str | None:
        """Why the robust step cannot run on `built` (None if it can)."""
        need = self.gossip.robust.neighbours_needed()
        least = min((int(d) for _, d in built.degree()), default=0)
        if least >= need:
            return None
        return (
            f"{self.gossip.robust.kind} with byzantine = {self.gossip.robust.byzantine} needs "
            f"every agent to have >= {need} neighbours; the {self.gossip.graph.kind} graph of "
            f"{self.total_agents} agents gives some only {least} (use a denser graph or a "
            "smaller byzantine)"
        )

    def _check_sightings(self) -> None:
        """Sightings travel peer to peer beside the deltas, carrying labels: every combination
        they cannot serve honestly is refused here, with the reason."""
        if not self.gossip.sightings.per_round:
            return
        why = ""
        if self.gossip.topology != "decentralized":
            why = (
                f"they travel between gossip neighbours; gossip.topology {self.gossip.topology} "
                "has none"
            )
        elif not task_of_world(self.world.kind).labelled:
            why = f"the {self.world.kind} world labels nothing its agents could relay"
        elif self.gossip.robust.kind != "none" or self.faults.byzantine.active:
            why = (
                "a sighting carries a label that no robust rule screens: a lying agent's would "
                "go straight into its neighbours' replay (set per_round 0 under "
                "gossip.robust or faults.byzantine)"
            )
        elif self.faults.messages.active or self.faults.partitions:
            why = "message faults and partitions act on deltas only; sightings would pass them"
        elif self.external_peers:
            why = "swarm-node devices (external_peers) do not relay sightings yet"
        if why:
            raise ValueError(f"gossip.sightings: {why}")

    def _check_coordinator(self) -> None:
        c = self.gossip.coordinator
        least = quorum(self.total_agents, c.min_completion)
        if (
            exchange_for(self.gossip.topology).needs_coordinator
            and c.aggregator in ("krum", "multi_krum")
            and least < 2 * c.byzantine + 3
        ):
            raise ValueError(
                f"gossip.coordinator: {c.aggregator} with byzantine = {c.byzantine} needs >= "
                f"{2 * c.byzantine + 3} deltas per round, but a round may close with {least} "
                f"(min_completion {c.min_completion} of {self.total_agents} agents); raise "
                "min_completion or lower byzantine"
            )

    def _check_faults(self) -> None:
        every, f = self.checkpoint.every_ticks, self.faults
        sharing = exchange_for(self.gossip.topology).rounds
        if every and sharing and every % self.gossip.interval:
            raise ValueError(
                f"checkpoint.every_ticks: {every} is not a multiple of gossip.interval "
                f"({self.gossip.interval}); a checkpoint sits between two gossip rounds"
            )
        if not task_of_world(self.world.kind).checkpoints and (every or f.kill):
            raise ValueError(
                "checkpoint / faults.kill: checkpoints are implemented for classification "
                "worlds (drone_patrol) only, not yet for worlds with rewards"
            )
        if f.kill and not every:
            raise ValueError(
                "faults.kill: a killed shard restores its agents from their last checkpoint; "
                "set checkpoint.every_ticks"
            )
        for k in f.kill:
            if k.at_tick >= self.ticks:
                raise ValueError(
                    f"faults.kill: at_tick {k.at_tick} is not before the end ({self.ticks})"
                )
            if self.agents.per_shard != "auto" and k.shard >= self.n_shards:
                raise ValueError(
                    f"faults.kill: shard {k.shard} does not exist ({self.n_shards} shards)"
                )
        if (f.messages.active or f.partitions) and not exchange_for(
            self.gossip.topology
        ).message_faults:
            key = "faults.messages" if f.messages.active else "faults.partitions"
            raise ValueError(
                f"{key}: these faults act on peer-to-peer messages; they need gossip.topology "
                f"decentralized (not {self.gossip.topology})"
            )
        if f.byzantine.active and not sharing:
            raise ValueError("faults.byzantine: Byzantine agents lie in what they share")
        if f.byzantine.active or f.partitions:
            FaultPlan(f, self.total_agents, self.seed)  # agents out of range, ...

    @property
    def per_shard(self) -> int:
        """Agents per shard; 'auto' resolved against this machine's CPUs (the Runner resolves
        it against the Ray cluster's with `with_shards` before a run)."""
        if self.agents.per_shard == "auto":
            return auto_per_shard(self.agents.count, float(os.cpu_count() or 1))
        return self.agents.per_shard

    @property
    def n_shards(self) -> int:
        return -(-self.agents.count // self.per_shard)

    def with_shards(self, cpus: float) -> Scenario:
        """This scenario with agents.per_shard resolved for a cluster of `cpus` CPUs."""
        if self.agents.per_shard != "auto":
            return self
        if exchange_for(self.gossip.topology).pooled:
            per = self.agents.count
        else:
            per = auto_per_shard(self.agents.count, cpus)
        return self.model_copy(update={"agents": self.agents.model_copy(update={"per_shard": per})})

    @property
    def shares(self) -> bool:
        """Whether gossip rounds run: the topology exchanges, and the weights can change. A
        world with rewards run with rl.enabled false (the no-learning baseline) keeps its
        initial weights, so every delta would be zero: no round runs and nothing is sent."""
        if not exchange_for(self.gossip.topology).rounds:
            return False
        return self.rl.enabled or task_of_world(self.world.kind).name != "rl"

    @property
    def isolated_twins(self) -> bool:
        """Whether every agent has an isolated twin (the baseline): asked for, and meaningful
        only where the agents share (isolated and centralized runs are their own baseline)."""
        return self.baseline.isolated and exchange_for(self.gossip.topology).rounds

    @property
    def total_agents(self) -> int:
        """Agents in the gossip graph: the simulated ones plus the external devices."""
        return self.agents.count + len(self.external_peers)


#: Most agents one shard hosts when sized automatically: the stacked population's speed-up
#: over a loop levels off by K = 256-1024 (BENCHMARKS.md, models figure 3), while a shard's
#: step time, and so the tick's, grows with K.
AUTO_MAX_PER_SHARD = 512


def auto_per_shard(count: int, cpus: float) -> int:
    """Agents per shard for `count` agents on `cpus` CPUs.

    Agents of one shard are stacked and stepped as one batch, so few large shards are cheapest
    per agent; more shards than CPUs only add actors (~350 MB and ~1.4 s to start each) that
    wait for a core. So: one shard per CPU, more only to keep shards under AUTO_MAX_PER_SHARD.
    """
    shards = max(1, min(count, int(cpus)))
    shards = max(shards, -(-count // AUTO_MAX_PER_SHARD))
    return -(-count // shards)


def groups_problem(sc: Scenario, info: WorldInfo) -> str | None:
    """Why `sc` cannot run a world of these agent groups (None if it can, or if the world has
    one group), naming the key to change and a value that works. Each group has a model
    layout of its own (envs/pz_world.py), so a shard hosts one group's agents, gossip joins
    agents of one group only (a graph per group, `build_graph_in_groups`), and what trains or
    aggregates one model for every agent has nothing to work on. Known only once the world is
    built: `swarm validate` and `swarm run` build it before anything starts."""
    groups = info.groups
    if len(groups) < 2:
        return None
    sizes = ", ".join(f"{g.name} {g.count}" for g in groups)
    exchange = exchange_for(sc.gossip.topology)
    if exchange.needs_coordinator or exchange.pooled:
        what = (
            "one coordinator aggregates one model"
            if exchange.needs_coordinator
            else "one shard trains one pooled model for every agent"
        )
        return (
            f"gossip.topology: {sc.gossip.topology}: {what}, and the world's agent groups "
            f"({sizes} agents) have a model layout each; use decentralized or isolated"
        )
    if sc.external_peers:
        return (
            f"external_peers: the world's agent groups ({sizes} agents) have a model layout "
            "each, and a device's agent would belong to none"
        )
    common = math.gcd(*(g.count for g in groups))
    fits = [d for d in range(common, 0, -1) if common % d == 0]
    shown = [str(d) for d in fits[:6]]
    choices = (
        shown[0]
        if len(shown) == 1
        else ", ".join(shown[:-1])
        + (f" or {shown[-1]}" if len(fits) <= 6 else f", {shown[-1]}, ...")
    )
    per = sc.agents.per_shard
    if per == "auto" or common % per:
        said = "auto is not sized for them" if per == "auto" else f"{per} does not divide them"
        return (
            f"agents.per_shard: a shard hosts agents of one group (one model layout), and the "
            f"world's agent groups have {sizes} agents; {said}: use one that divides "
            f"{common}: {choices}"
        )
    if exchange.needs_graph:
        return _group_graph_problem(sc, groups, sizes)
    return None


def _group_graph_problem(sc: Scenario, groups: list[GroupInfo], sizes: str) -> str | None:
    """Why the gossip graph cannot be built per agent group (None if it can)."""
    cfg = sc.gossip.graph
    if cfg.kind == "file":
        return (
            f"gossip.graph: a file lists one graph over every agent; the world's agent groups "
            f"({sizes} agents) gossip within themselves, on one graph of a kind each (ring, "
            "exponential, ...)"
        )
    for g in groups:
        if (
            cfg.kind == "random_regular"
            and g.count > 1
            and (cfg.degree >= g.count or (cfg.degree * g.count) % 2)
        ):
            return (
                f"gossip.graph: a random_regular graph is built per agent group, and group "
                f"{g.name!r} has {g.count} agents: the degree ({cfg.degree}) must be below that "
                "and degree times that even"
            )
    from protocols.topology import build_graph_in_groups  # networkx: only for a world's check

    try:
        graph = build_graph_in_groups(cfg, [(g.first, g.count) for g in groups], sc.seed)
    except ValueError as exc:
        return f"gossip.graph: {exc}"
    if sc.checks_degrees and (problem := sc.too_few_neighbours(graph)):
        return f"gossip.robust: {problem}"
    return None


class ScenarioError(Exception):
    """A scenario file that cannot be used; `str()` is the message for the user."""


# ---------------------------------------------------------------------------------------------
# Bounds on what a file may make the loader do

#: Largest scenario or node config read, in bytes: 50 times the largest shipped scenario
#: (scenarios/swarm_scale.yaml, 4.7 KB). PyYAML parses in pure Python, ~100 KB/s of small
#: values on a busy 2-core machine, so even a file at the cap loads in seconds.
MAX_SCENARIO_BYTES = 256 * 1024
#: Largest YAML document with every alias followed, in nodes plus characters of its scalars.
#: A file without aliases spells out what it holds, about a node or a character a byte, so
#: none that MAX_SCENARIO_BYTES lets through comes near this; an alias bomb does (nine anchors
#: of nine aliases each, nine lines long, expand to 9**9 = 387 million values: ~1 GB and ten
#: seconds of pydantic before this bound).
MAX_YAML_SIZE = 2 * MAX_SCENARIO_BYTES
#: Deepest nesting of YAML collections: the shipped scenarios nest 5 deep. PyYAML composes
#: and constructs recursively and runs out of Python's stack (1,000 frames) some hundreds of
#: levels down, with a RecursionError traceback.
MAX_YAML_DEPTH = 64
#: Shortest HMAC key (gossip.key_file, a node's key_file): HMAC-SHA256's output length, the
#: least RFC 2104 (section 3) recommends.
MIN_KEY_BYTES = 32
#: Largest gossip.key_file (or a node's key_file): a key is raw bytes, 32 or more; HMAC hashes
#: one longer than SHA-256's 64-byte block down to 32 bytes anyway, so this only keeps a wrong
#: file (a disk image, a log) from being read whole.
MAX_KEY_BYTES = 64 * 1024
#: Largest file in gossip.tls.cert_dir: `swarm certs` writes PEM certificates of ~0.7 KB and
#: P-256 keys of ~0.2 KB; an RSA-4096 key is ~3.3 KB.
MAX_PEM_BYTES = 64 * 1024
#: Largest gossip.graph.path edge list: agents.count's cap (100,000) on the exponential graph
#: (degree ~2 log2 n = 34) is ~1.7 million lines of up to 13 bytes, ~22 MB.
MAX_GRAPH_BYTES = 64 * 2**20
#: Packages whose modules `world.env` may name. Validating a scenario imports the module's
#: parent packages (importlib.util.find_spec) and a run calls the callable with world.kwargs, so
#: an arbitrary `world.env` would run arbitrary code from a scenario file. More packages (a
#: PettingZoo env of one's own) are allowed by naming them, comma-separated, in the
#: environment variable ENV_PACKAGES_VAR of whoever validates and runs.
ENV_PACKAGES = ("pettingzoo", "mpe2", "envs")  # envs: this project's own (drone_patrol_v0)
ENV_PACKAGES_VAR = "SWARM_ENV_PACKAGES"


def file_problem(path: Path, limit: int | None) -> str | None:
    """Why `path` is not a file to read (None if it is one): it must be a non-empty regular
    file (not a directory, device, FIFO or socket; /proc's files say they are empty) of at
    most `limit` bytes (None: any size, for a file read a line at a time). Says nothing of
    what the file holds."""
    try:
        info = path.stat()  # follows links: a link to /dev/zero is a device
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"
    if stat.S_ISDIR(info.st_mode):
        return "is a directory, not a file"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file (a device, FIFO or socket)"
    if limit is not None and info.st_size > limit:
        return f"is {info.st_size:,} bytes, more than the {limit:,} allowed"
    if info.st_size == 0:
        return "is empty"
    if not os.access(path, os.R_OK):
        return "cannot be read: permission denied"
    return None


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of a file `file_problem` passed; OSError if it grew past `limit` since."""
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(0, f"more than {limit:,} bytes")
    return data


def read_key_file(path: Path) -> bytes:
    """The swarm's shared HMAC key from `path` (gossip.key_file, a node's key_file): a regular
    file of MIN_KEY_BYTES to MAX_KEY_BYTES bytes, read bounded (/dev/zero or a FIFO is refused
    unread). Raises ValueError saying what is wrong, starting with the path."""
    if problem := file_problem(path, MAX_KEY_BYTES):
        raise ValueError(f"{path} {problem}")
    try:
        key = read_bounded(path, MAX_KEY_BYTES)
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror}") from None
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"{path}: {len(key)} bytes; the key needs {MIN_KEY_BYTES} or more")
    return key


# ---------------------------------------------------------------------------------------------
# YAML with line numbers


@dataclass
class _Open:
    """A YAML collection being parsed (`_screen`)."""

    anchor: str | None
    size: int = 1
    """Nodes plus scalar characters within it so far, itself included, aliases followed."""
    depth: int = 1
    """Levels of collections within it so far, itself included, aliases followed."""


def _screen(text: str, path: Path) -> None:
    """Refuse a document nested deeper than MAX_YAML_DEPTH, or larger than MAX_YAML_SIZE with
    its aliases followed, before any of it is built: one pass over the parser's events (an
    iterative state machine), sizing each anchor once."""
    anchored: dict[str, tuple[int, int]] = {}  # anchor -> (size, depth) of its node
    stack: list[_Open] = []
    total = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            stack.append(_Open(event.anchor))
            total += 1
            reach = len(stack)
        elif isinstance(event, yaml.ScalarEvent):
            size = 1 + len(event.value)
            if event.anchor:
                anchored[event.anchor] = (size, 0)
            total += size
            if stack:
                stack[-1].size += size
            reach = len(stack)
        elif isinstance(event, yaml.AliasEvent):
            # an unknown anchor is left to the composer, which names it
            size, depth = anchored.get(event.anchor or "", (1, 0))
            total += size
            if stack:
                stack[-1].size += size
                stack[-1].depth = max(stack[-1].depth, depth + 1)
            reach = len(stack) + depth
        elif isinstance(event, yaml.CollectionEndEvent):
            done = stack.pop()
            if done.anchor:
                anchored[done.anchor] = (done.size, done.depth)
            if stack:
                stack[-1].size += done.size
                stack[-1].depth = max(stack[-1].depth, done.depth + 1)
            continue
        else:
            continue  # stream and document marks
        line = event.start_mark.line + 1 if event.start_mark else 1
        if reach > MAX_YAML_DEPTH:
            raise ScenarioError(
                f"{path}:{line}: YAML nested deeper than {MAX_YAML_DEPTH} levels (the most "
                "a scenario may nest)"
            )
        if total > MAX_YAML_SIZE:
            raise ScenarioError(
                f"{path}:{line}: YAML that grows past {MAX_YAML_SIZE:,} nodes and characters "
                "with its aliases followed (the most a scenario may hold); write the values "
                "out instead of repeating aliases"
            )


def _refuse_duplicate_keys(root: yaml.Node, path: Path) -> None:
    """A key given twice in one mapping is an error (YAML would silently keep the last)."""
    seen: set[int] = set()  # nodes an alias reaches again are checked once
    todo: list[tuple[yaml.Node, tuple[int | str, ...]]] = [(root, ())]
    found: list[tuple[int, str]] = []
    while todo:
        node, loc = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode):
                    todo += [(key, loc), (value, loc)]
                    continue
                line = key.start_mark.line + 1
                if (key.tag, key.value) in first:
                    found.append(
                        (
                            line,
                            f"{path}:{line}: {_dotted((*loc, key.value))}: duplicate key "
                            f"(first given on line {first[key.tag, key.value]})",
                        )
                    )
                else:
                    first[key.tag, key.value] = line
                todo.append((value, (*loc, key.value)))
        elif isinstance(node, yaml.SequenceNode):
            todo += [(item, (*loc, i)) for i, item in enumerate(node.value)]
    if found:
        raise ScenarioError(min(found)[1])


def _compose(text: str, path: Path) -> tuple[object, yaml.Node | None]:
    """The YAML's data (any YAML value: a mapping, once checked) and its node tree."""
    loader = yaml.SafeLoader(text)
    try:
        _screen(text, path)
        node = loader.get_single_node()
        if node is None:
            return None, None
        _refuse_duplicate_keys(node, path)
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ScenarioError(f"{where}: not valid YAML: {problem}") from None
    finally:
        loader.dispose()
    return data, node


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the deepest YAML node on `loc` (the key itself where it exists)."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(part):
                    line, node = key.start_mark.line + 1, value
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _fields_at(model: type[Section], loc: tuple[int | str, ...]) -> list[str]:
    """Field names of the section that holds the last key of `loc` (for 'did you mean')."""
    current: object = model  # a section class, or some other annotation
    parts = list(loc[:-1])
    while parts:
        part = parts.pop(0)
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        current = fields[part].annotation
        if current is not None and part == "world" and fields is Scenario.model_fields:
            # the world is a tagged union: the next part of a raw loc is its tag
            current = WORLDS.get(str(parts.pop(0)) if parts else "drone_patrol")
    fields = getattr(current, "model_fields", None)
    return list(fields) if fields else []


def _describe(err: ErrorDetails, model: type[Section] | None = None) -> str:
    loc = tuple(err["loc"])
    if err["type"] == "extra_forbidden":
        known = _fields_at(model or Scenario, loc)
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        choices = f"; known keys here: {', '.join(known)}" if known and not close else ""
        return f"unknown key{hint}{choices}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if "input" in err and err["type"] != "missing" and not isinstance(err["input"], dict | list):
        msg += f" (got {err['input']!r})"
    return msg


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _clean_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    # pydantic adds pseudo-parts for tagged unions (the world's kind, '[key]' tags) and
    # literal dict keys; drop them.
    if len(loc) > 1 and loc[0] == "world" and loc[1] in WORLDS:
        loc = loc[:1] + loc[2:]
    return tuple(p for p in loc if not (isinstance(p, str) and p.startswith("[")))


_M = TypeVar("_M", bound=Section)
#: "faults.kill: ..." at the start of a whole-scenario check's message: the key it is about.
_KEY_PREFIX = re.compile(r"^([a-z_]+(?:\.[a-z_]+|\[\d+\])*):")
#: One problem: the key path it is about (empty: the whole file) and what is wrong.
Problem = tuple[tuple[int | str, ...], str]


def _problems(exc: ValidationError, model: type[Section]) -> list[Problem]:
    """Pydantic's errors as (key path, problem); a check across sections that names the key it
    is about in its message ("faults.kill: ...") is put on that key."""
    found = []
    for err in exc.errors():
        loc = _clean_loc(tuple(err["loc"]))
        text = _describe(err, model)
        named = _KEY_PREFIX.match(text) if not loc else None
        if named and re.split(r"[.\[]", named.group(1))[0] in model.model_fields:
            loc = tuple(
                int(part) if part.isdigit() else part
                for part in re.split(r"\.|\[|\]\.?", named.group(1))
                if part
            )
            text = text[named.end() :].lstrip()
        found.append((loc, text.removeprefix(f"{_dotted(loc)}: ") if loc else text))
    return found


def _report(path: Path, root: yaml.Node | None, what: str, problems: list[Problem]) -> str:
    """`file: N problems in the <what>:` and one `file:line: key.path: problem` line each, in
    file order."""
    found = []
    for loc, text in problems:
        line = _line_of(root, loc)
        where = f"{path}:{line}" if line else str(path)
        found.append((line or 0, f"{where}: {_dotted(loc) or '(top level)'}: {text}"))
    lines = [text for _, text in sorted(found, key=lambda item: item[0])]
    n = len(lines)
    return f"{path}: {n} problem{'s' if n > 1 else ''} in the {what}:\n  " + "\n  ".join(lines)


def _validate(data: object, root: yaml.Node | None, model: type[_M], path: Path, what: str) -> _M:
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}:1: a {what} must be a YAML mapping of keys to values")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(_report(path, root, what, _problems(exc, model))) from None


def parse_yaml_model(
    text: str,
    model: type[_M],
    path: Path | str,
    what: str,
    checks: Callable[[_M], list[Problem]] | None = None,
) -> _M:
    """Validate YAML text against a config model (a scenario, a node config); raises
    ScenarioError with one `file:line: key.path: problem` line per problem. `checks`: what
    else is wrong with the validated config (e.g. the files it names), reported the same way
    on the lines of the keys it names."""
    path = Path(path)
    data, root = _compose(text, path)
    cfg = _validate(data, root, model, path, what)
    if checks is not None and (problems := checks(cfg)):
        raise ScenarioError(_report(path, root, what, problems))
    return cfg


def _env_problem(env: str) -> str | None:
    """Why a pettingzoo world's `env` may not be imported (None if it may): see ENV_PACKAGES."""
    module, sep, attr = env.partition(":")
    allowed = list(ENV_PACKAGES) + [
        name.strip() for name in os.environ.get(ENV_PACKAGES_VAR, "").split(",") if name.strip()
    ]
    if module.split(".")[0] not in allowed:
        return (
            f"module {module!r} is not in a package of PettingZoo envs ({', '.join(allowed)}); "
            f"validating would import it and a run would call it, so name its package in the "
            f"environment variable {ENV_PACKAGES_VAR} (comma-separated) to allow it"
        )
    if sep and attr and (attr.startswith("_") or not attr.isidentifier()):
        return f"the callable after ':' must be a public name, got {attr!r}"
    return None


def _scenario(data: object, root: yaml.Node | None, path: Path) -> Scenario:
    """Validate a scenario's YAML data: its world.env first, which validation would import."""
    world = data.get("world") if isinstance(data, dict) else None
    if isinstance(world, dict) and world.get("kind") == "pettingzoo":
        env = world.get("env")
        if isinstance(env, str) and (problem := _env_problem(env)):
            raise ScenarioError(_report(path, root, "scenario", [(("world", "env"), problem)]))
    return _validate(data, root, Scenario, path, "scenario")


def parse_scenario(text: str, path: Path | str = "<scenario>") -> Scenario:
    """Validate scenario YAML text; raises ScenarioError with file:line: key.path: problem."""
    path = Path(path)
    data, root = _compose(text, path)
    return _scenario(data, root, path)


#: Keys holding file paths, relative to the scenario's own directory.
_PATH_KEYS = (("gossip", "graph", "path"), ("gossip", "tls", "cert_dir"), ("gossip", "key_file"))


def _resolved(data: object, base: Path) -> object:
    """Raw scenario data with its relative file paths made absolute against `base`; whatever
    is not a string where a path belongs is left for validation to refuse."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for *sections, key in _PATH_KEYS:
        holder: dict[object, object] = out
        for name in sections:
            inner = holder.get(name)
            if not isinstance(inner, dict):
                break
            holder[name] = holder = dict(inner)  # a copy: an alias may share the mapping
        else:
            value = holder.get(key)
            if isinstance(value, str) and value and not Path(value).is_absolute():
                holder[key] = str((base / value).resolve())
    return out


def read_config_text(path: Path, what: str) -> str:
    """The text of a config file (a scenario, a node config): a regular UTF-8 file of at most
    MAX_SCENARIO_BYTES, else ScenarioError (a FIFO or /dev/zero would block or fill memory)."""
    if problem := file_problem(path, MAX_SCENARIO_BYTES):
        raise ScenarioError(f"{path}: cannot read the {what}: it {problem}")
    try:
        return read_bounded(path, MAX_SCENARIO_BYTES).decode("utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read the {what}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ScenarioError(f"{path}: cannot read the {what}: it is not UTF-8 text") from None


def load_scenario(path: Path | str, *, check_files: bool = False) -> Scenario:
    """Read and validate a scenario file. Relative file paths inside it (a graph's edge list,
    a certificate directory) are resolved against the scenario's own directory.

    check_files: also check the files it names (what `swarm validate` and `swarm run` do):
    each is a regular file of sane size, a graph file is an edge list the robust step can
    use. Off, the scenario may name files made later, or on another machine."""
    path = Path(path)
    data, root = _compose(read_config_text(path, "scenario"), path)
    sc = _scenario(_resolved(data, path.parent), root, path)
    if check_files and (problems := _named_file_problems(sc)):
        raise ScenarioError(_report(path, root, "scenario", problems))
    return sc


def _named_file_problems(sc: Scenario) -> list[Problem]:
    """What is wrong with the files a scenario names: never what they hold."""
    gossip = sc.gossip
    problems: list[Problem] = []
    if gossip.key_file and (problem := file_problem(Path(gossip.key_file), MAX_KEY_BYTES)):
        problems.append((("gossip", "key_file"), f"{gossip.key_file} {problem}"))
    if gossip.tls.mode != "off" and gossip.tls.cert_dir:
        cert_dir = Path(gossip.tls.cert_dir)
        problems += [(("gossip", "tls", "cert_dir"), p) for p in cert_dir_problems(cert_dir)]
    if gossip.graph.kind == "file" and gossip.graph.path:
        problems += _graph_file_problems(sc, Path(gossip.graph.path))
    return problems


def cert_dir_problems(cert_dir: Path) -> list[str]:
    """A tls.cert_dir must hold ca.pem; every certificate and key in it must be a file."""
    if not cert_dir.is_dir():
        return [f"{cert_dir} is not a directory (made by `swarm certs DIR --node ...`)"]
    try:
        pems = [cert_dir / "ca.pem"] + sorted(
            p for p in cert_dir.iterdir() if p.suffix in (".pem", ".key") and p.name != "ca.pem"
        )
    except OSError as exc:
        return [f"{cert_dir} cannot be listed: {exc.strerror}"]
    return [f"{p} {problem}" for p in pems if (problem := file_problem(p, MAX_PEM_BYTES))]


def _graph_file_problems(sc: Scenario, path: Path) -> list[Problem]:
    """The edge list must be a text file of 'i j' lines making a connected graph of the
    scenario's agents, dense enough for its robust step."""
    key = ("gossip", "graph", "path")
    problem = file_problem(path, MAX_GRAPH_BYTES)
    try:
        text = "" if problem else read_bounded(path, MAX_GRAPH_BYTES).decode("utf-8")
    except OSError as exc:
        problem = f"cannot be read: {exc.strerror}"
    except UnicodeDecodeError:
        problem = "is not a text file (not UTF-8)"
    if problem:
        return [(key, f"{path} {problem}")]
    from protocols.topology import parse_edge_list  # networkx: only for a graph file

    try:  # the text read above, once: its form, ranges and connectivity (no line is quoted)
        built = parse_edge_list(text, sc.total_agents, path)
    except ValueError as exc:
        return [(key, str(exc))]
    if sc.checks_degrees and (problem := sc.too_few_neighbours(built)):
        return [(("gossip", "robust"), problem)]
    return []


def override(scenario: Scenario, changes: Mapping[str, object], source: str) -> Scenario:
    """`scenario` with top-level keys replaced (a command's --ticks and --seed), checked like
    the file: ScenarioError with one line per problem, each naming the option (`--ticks`) or,
    for a check across sections, the key and `source` (the file the rest comes from)."""
    if not changes:
        return scenario
    try:
        return Scenario.model_validate({**scenario.model_dump(mode="json"), **changes})
    except ValidationError as exc:
        given = ", ".join(f"--{key} {value}" for key, value in changes.items())
        lines = [
            f"--{loc[0]}: {text}"
            if loc and loc[0] in changes
            else f"{source} with {given}: {_dotted(loc) or '(top level)'}: {text}"
            for loc, text in _problems(exc, Scenario)
        ]
        raise ScenarioError("\n".join(lines)) from None


def dump_scenario(scenario: Scenario) -> str:
    """The resolved scenario (every default filled in) as YAML, saved next to a run."""
    return yaml.safe_dump(scenario.model_dump(mode="json"), sort_keys=False)
