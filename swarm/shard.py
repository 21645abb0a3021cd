"""The roles of a run: World, AgentShard and Coordinator (plain classes; Ray wraps them).

Each class is an ordinary Python object so it can be tested in-process; the Runner turns them
into Ray actors with `ray.remote(...)`. An AgentShard hosts several agents whose models are
stacked in one learner, and holds one exchange (swarm/exchange.py) through which they share
knowledge with the rest of the swarm: shards talk to each other directly, never through the
driver. What the task is (classification or reinforcement learning) is the task object's
business (swarm/tasks.py); what crosses the actor boundary is a record (swarm/records.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import ray

from envs import make_world
from protocols import wire
from protocols.coordinator import CoordinatorState
from protocols.delta import layout_fingerprint
from protocols.faults import FaultPlan
from protocols.gossip import Limits, agent_index, agent_name, scale_of
from protocols.transport import CoordinatorServicer, TrafficCounters, start_server
from swarm import checkpoint
from swarm.addresses import is_loopback
from swarm.exchange import (
    RPC_TIMEOUT_S,
    Counts,
    Exchange,
    Wiring,
    exchange_for,
    make_exchange,
    owner_in_run,
)
from swarm.records import (
    Document,
    Probe,
    Receipt,
    Restored,
    ShardMeasure,
    Step,
    WorldInfo,
    as_doc,
    as_int,
)
from swarm.resume import read_latest, tick_dir
from swarm.scenario import Scenario
from swarm.tasks import task_named, task_of_world
from swarm.telemetry import Telemetry, shard_figures

if TYPE_CHECKING:
    import torch

    from envs.drone_patrol.world import DronePatrolWorld
    from envs.pz_world import ParallelEnvWorld

__all__ = ["AgentShard", "CoordinatorHost", "CoordinatorSpec", "ShardSpec", "Step", "WorldHost"]


def torch_from(array: np.ndarray) -> torch.Tensor:
    import torch  # the driver imports this module too, and must not load torch

    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


class WorldHost:
    """Owns the environment: steps it with the agents' decisions, records trajectories.

    A world that cannot be built (e.g. a PettingZoo env whose agent count does not match the
    scenario) does not kill the actor: `info` raises the reason as a ValueError, which the
    Runner turns into a clean error."""

    def __init__(self, scenario: Document):
        sc = Scenario.model_validate(scenario)
        self.trajectory: list[np.ndarray] = []
        self.first_label: dict[int, int] = {}  # class -> tick its first label arrived
        # Every tick's decisions: the world is deterministic given its seed and these, so a
        # resumed run rebuilds it exactly by replaying them (`replay`).
        self.decisions: list[np.ndarray] = []
        self._parts: list[np.ndarray] = []  # this tick's decisions so far (step_part)
        self.error = ""
        self.world: DronePatrolWorld | ParallelEnvWorld
        try:
            self.world = make_world(sc.world, sc.agents.count, sc.seed)
        except ValueError as exc:
            self.error = str(exc)
        self.task = task_of_world(sc.world.kind)
        # the dtype of a tick's decisions: classes and discrete actions are int64, the actions
        # of a continuous action space (a world with action_dim > 0, envs/pz_world.py) float32
        continuous = not self.error and getattr(self.world, "action_dim", 0) > 0
        self.decision_dtype: type[np.generic] = np.float32 if continuous else np.int64

    def info(self) -> WorldInfo:
        if self.error:
            raise ValueError(self.error)
        return self.task.describe(self.world)

    def probe(self, per_class: int, window: int, seed: int) -> Probe:
        """The held-out probe set of a world whose task measures on one (Task.needs_probe)."""
        world = cast("DronePatrolWorld", self.world)  # the world kinds that label
        return world.probe_set(per_class, window, seed)

    def reset(self) -> Step:
        obs = self.world.reset()
        self.trajectory = [self.world.positions().copy()]
        self.decisions, self._parts = [], []
        return self.task.first_step(self.world, obs)

    def _chosen(self, decisions: tuple[np.ndarray, ...]) -> np.ndarray:
        """The shards' decisions as one array of the tick: continuous actions of a group
        narrower than the world's widest padded with zeros (WorldInfo.action_dim)."""
        width = getattr(self.world, "action_dim", 0)
        if width:
            decisions = tuple(
                np.pad(d, ((0, 0), (0, width - d.shape[1]))) if d.ndim == 2 else d
                for d in decisions
            )
        return np.concatenate(decisions).astype(self.decision_dtype)

    def step(self, *decisions: np.ndarray) -> Step:
        chosen = self._chosen(decisions)
        self.decisions.append(chosen)
        result = self.world.step(chosen)
        self.trajectory.append(self.world.positions().copy())
        return self.task.step(result, self.first_label)

    def step_part(self, first: int, *decisions: np.ndarray) -> Step:
        """Step only the world copies of agents first..first+len(decisions)-1 (whole copies,
        WorldInfo.per_copy), with those agents' decisions: one shard's part of a tick. The
        parts of a tick come in agent order; the last one completes the tick (its decisions
        recorded, as `step` records a whole tick's)."""
        world = cast("ParallelEnvWorld", self.world)  # the worlds with per_copy
        chosen = self._chosen(decisions)
        per = world.per_copy
        if first % per or len(chosen) % per or first != sum(map(len, self._parts)):
            raise ValueError(
                f"step_part({first}, {len(chosen)} decisions): parts must be whole copies "
                f"of {per} agents, in agent order"
            )
        self._parts.append(chosen)
        result = world.step(chosen, (first // per, (first + len(chosen)) // per))
        if first + len(chosen) == world.n_agents:  # the tick is complete
            self.decisions.append(np.concatenate(self._parts))
            self._parts = []
            self.trajectory.append(world.positions().copy())
        return self.task.step(result, self.first_label)

    def replay(self, decisions: np.ndarray) -> Step:
        """Rebuild the world as it was after len(decisions) ticks: reset, then step it with the
        recorded decisions (physics only, no agents). Returns the last tick's Step."""
        step = self.reset()
        for chosen in np.asarray(decisions, dtype=self.decision_dtype):
            step = self.step(chosen)
        return step

    def checkpoint(self, ticks: int, directory: str, name: str = "world") -> None:
        """Save what rebuilds the world after `ticks` ticks (its decisions) in `directory`,
        as `<name>.npz`."""
        if len(self.decisions) != ticks:
            raise RuntimeError(f"world checkpoint at tick {ticks} after {len(self.decisions)}")
        decisions = (
            np.stack(self.decisions) if self.decisions else np.zeros((0, 0), self.decision_dtype)
        )
        checkpoint.save(
            os.path.join(directory, f"{name}.npz"), {"decisions": decisions}, {"ticks": ticks}
        )

    def first_labels(self) -> dict[int, int]:
        """Tick at which each class's first label arrived anywhere in the swarm."""
        return dict(self.first_label)

    def measure(self) -> dict[str, float | None]:
        return {k: None if v is None else float(v) for k, v in self.world.task_metrics().items()}

    def positions(self) -> np.ndarray:
        """Where the agents are now (N, 3), e.g. for a proximity graph ((N, 0) if unknown)."""
        return self.world.positions().copy()  # type: ignore[no-any-return]

    def trajectories(self) -> tuple[np.ndarray, Document]:
        """Positions at every tick (T+1, N, 3) and the map, with the events that happened."""
        layout = dict(self.world.layout())
        if hasattr(self.world, "event_log"):
            layout["events"] = self.world.event_log()
        return np.stack(self.trajectory), layout

    def close(self) -> None:
        if not self.error:
            self.world.close()


@dataclass
class ShardSpec:
    """What an AgentShard is built from."""

    scenario: Document  # the validated scenario, as JSON
    index: int  # shard-<index>
    agents: list[int]  # the global indices of the agents it hosts
    info: WorldInfo
    key: bytes  # the swarm's HMAC key
    # "127.0.0.1" on one machine; "node": listen on, and advertise, the Ray node's address
    host: str = "127.0.0.1"
    edges: list[tuple[int, int]] | None = None  # the gossip graph, the same for every shard
    run: str = ""  # the run id (telemetry label)
    ckpt_dir: str = ""  # where checkpoints go ('' for none)
    resume: bool = False  # continue from the last complete checkpoint


def _hosts(sc: Scenario, host: str) -> tuple[str, str]:
    """(listen, advertise) hosts of a shard's gRPC server."""
    if host == "node":  # on a Ray cluster: listen on, and advertise, this node's address
        address = ray.util.get_node_ip_address()
        return address, address
    if host in ("127.0.0.1", "localhost") and any(
        not is_loopback(p.address) for p in sc.external_peers
    ):
        # devices on the network dial this shard: listen on every interface and advertise
        # this machine's address (its certificate must name it)
        return "0.0.0.0", ray.util.get_node_ip_address()
    return host, host


def _reconstructed() -> bool:
    """Whether Ray restarted this actor (after its process died); False outside an actor
    (tests build shards in-process)."""
    if not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
        return False
    return bool(ray.get_runtime_context().was_current_actor_reconstructed)


class AgentShard:
    """Hosts agents `spec.agents` (global indices): their stacked models, learning and
    exchange."""

    def __init__(self, spec: ShardSpec, probe: Probe | None = None):
        """`probe`: the held-out probe set (tasks that measure on one); an argument of its own
        so that Ray resolves it when the driver passes the world's reference to it."""
        import torch  # the driver imports this module too, and must not load torch

        # One intra-op thread per actor: actors are the unit of parallelism, and a single
        # thread keeps float sums in a fixed order, which a reproducible sync run needs.
        torch.set_num_threads(1)
        self.sc = sc = Scenario.model_validate(spec.scenario)
        self.index, self.node = spec.index, f"shard-{spec.index}"
        self.agents = list(spec.agents)
        self.first = self.agents[0]
        self.probe = probe
        self.ckpt_dir = spec.ckpt_dir
        kind = exchange_for(sc.gossip.topology)
        # in a world of agent groups, what this shard's group perceives and decides: its
        # learners' layout (a shard hosts one group's agents, swarm.scenario.groups_problem)
        self.info = spec.info.for_agents(self.agents)
        self.learning = task_named(spec.info.task).learning(
            sc,
            len(self.agents),
            self.info,
            pooled=kind.pooled,
            twins=sc.isolated_twins,
        )
        self.exchange: Exchange = make_exchange(self._wiring(spec, kind.serves), self._fault_plan())
        self.relays = self.exchange.relays_sightings()
        if self.relays:  # every labelled window from the first tick on is a sighting to relay
            self.learning.keep_labelled()
        # Live figures as Ray metrics (swarm/telemetry.py), labelled with the run id (`run`,
        # the run directory's name; the scenario name when not given) and this shard.
        self.telemetry = Telemetry(spec.run or sc.name, shard=self.node)
        self.restored = self._restore_at_start(spec)

    def _wiring(self, spec: ShardSpec, serves: bool) -> Wiring:
        """serves: the exchange runs a gRPC server (it needs hosts to bind and advertise)."""
        population = self.learning.population
        listen, advertise = _hosts(self.sc, spec.host) if serves else (spec.host, spec.host)
        return Wiring(
            sc=self.sc,
            node=self.node,
            agents=self.agents,
            x=population.flat.data.numpy(),
            specs=population.specs,
            key=spec.key,
            listen=listen,
            advertise=advertise,
            edges=spec.edges,
            n_classes=getattr(population, "n_classes", 0),
            window=(self.sc.learning.window, population.obs_dim),
        )

    def _fault_plan(self) -> FaultPlan | None:
        """Injected faults (scenario `faults:`), decided by a seeded plan every shard shares."""
        f = self.sc.faults
        if not f.active:
            return None
        return FaultPlan(f, self.sc.total_agents, self.sc.seed if f.seed is None else f.seed)

    def _restore_at_start(self, spec: ShardSpec) -> Restored | None:
        """Restore from a checkpoint: on `resume` (the whole run continues from a consistent
        cut: keep the gossip epoch), or after Ray restarted this actor (a crash: the others
        heard from these agents after the checkpoint, so take a new epoch and resynchronise)."""
        restarted = _reconstructed()
        if not (spec.ckpt_dir and (spec.resume or restarted)):
            return None
        marker = read_latest(spec.ckpt_dir)
        if marker is not None:
            where = tick_dir(spec.ckpt_dir, marker["ticks"])
            return self._restore(where, new_epoch=restarted)
        return Restored(agents=self.agents) if restarted else None

    # -- set-up ------------------------------------------------------------------------------

    def endpoint(self) -> str:
        """host:port of this shard's gRPC server ('' when it serves none)."""
        return self.exchange.endpoint

    def model_info(self) -> tuple[int, str, tuple[float, float]]:
        """(number of parameters, layout fingerprint, `scale_of` the first agent's model) of
        this shard's models. The driver asks at the start: the initial model's scale, or a
        restored one's (a model's norm grows a few percent over a run, well inside limits)."""
        population = self.learning.population
        scale = scale_of(population.flat.data.numpy()[0])
        return population.num_params, layout_fingerprint(population.specs), scale

    def connect(self, endpoints: list[str], coordinator: str) -> None:
        self.exchange.connect(endpoints, coordinator)

    def set_endpoints(self, endpoints: list[str]) -> None:
        """Where the other shards serve now (one restarted on a new port)."""
        self.exchange.set_endpoints(endpoints)

    # -- the tick ----------------------------------------------------------------------------

    def act(self, step: Step) -> np.ndarray:
        """Take this tick's labels (or rewards) and observations; return each local agent's
        classification (or action)."""
        return self.learning.act(step, self.first, self.first + len(self.agents))

    def act_twins(self, step: Step, twin: Step) -> tuple[np.ndarray, np.ndarray]:
        """The local agents' decisions on `step` and their isolated twins' on `twin` (the
        twin world they fly, Task.twin_world); called with num_returns=2."""
        return self.learning.act_twins(step, twin, self.first, self.first + len(self.agents))

    def share(self, round_: int, tick: int = 0) -> int:
        """Send this round's knowledge deltas (and sightings) after `tick` ticks; returns the
        deltas made."""
        if self.relays:
            self.exchange.own_sightings(tick, self.learning.take_labelled())
        return self.exchange.share(round_, tick, self.learning.take_example_counts())

    def merge(self, round_: int, *barrier: int) -> int:
        """Apply what arrived (after the barrier in sync mode); returns deltas applied.
        Sightings that arrived go to the learners' replay."""
        merged = self.exchange.merge(round_)
        if self.relays:
            self.learning.add_sightings(*self.exchange.take_sightings())
        return merged

    # -- measuring ---------------------------------------------------------------------------

    def measure(self, tick: int) -> ShardMeasure:
        population = self.learning.population
        flat = population.flat.detach().numpy().astype(np.float64)
        measured = ShardMeasure(
            agents=self.agents,
            sum_x=flat.sum(axis=0),
            sum_sq=float((flat**2).sum()),
            traffic=self.exchange.traffic(),
            density=float(np.mean(population.select_stats["select/density"])),
        )
        self.learning.measure(self.probe, measured)
        names = [agent_name(i) for i in self.agents]
        shard_figures(
            self.telemetry,
            measured,
            names,
            steps=self.learning.steps(),
            loss=self.learning.loss(),
        )
        return measured

    # -- checkpoints -------------------------------------------------------------------------

    def checkpoint(self, ticks: int, directory: str) -> Receipt:
        """Save these agents after `ticks` ticks (at a round boundary): models, optimizers,
        memories, RNG, the isolated twins, the exchange's state and the traffic counts, plus
        their probe accuracy now (to compare with after a restore)."""
        arrays, meta = self.learning.state()
        meta.update({"ticks": ticks, "shard": self.index, "agents": self.agents})
        part, scalars = self.exchange.state()
        if scalars:
            arrays.update({f"exchange.{k}": v for k, v in part.items()})
            meta["exchange"] = scalars
        acc = self.learning.probe_acc(self.probe)
        arrays["probe_acc"] = acc
        size = checkpoint.save(Path(directory) / f"shard-{self.index}.npz", arrays, meta)
        return Receipt(shard=self.index, ticks=ticks, bytes=size, probe_acc=acc.tolist())

    def _restore(self, directory: Path, *, new_epoch: bool) -> Restored:
        arrays, meta = checkpoint.load(directory / f"shard-{self.index}.npz")
        if meta.get("agents") != self.agents:
            raise checkpoint.CheckpointError(
                f"{directory}: shard-{self.index} holds agents {meta.get('agents')}, "
                f"this shard hosts {self.agents}"
            )
        self.learning.load_state(arrays, meta)
        if "exchange" in meta:
            part = {k[9:]: v for k, v in arrays.items() if k.startswith("exchange.")}
            self.exchange.load_state(part, as_doc(meta["exchange"]), new_epoch=new_epoch)
        return Restored(
            agents=self.agents,
            checkpoint_ticks=as_int(meta["ticks"]),
            probe_acc_checkpoint=arrays["probe_acc"].tolist(),
            probe_acc_restored=self.learning.probe_acc(self.probe).tolist(),
        )

    def restore_info(self) -> Restored | None:
        """What this shard restored when it started (None: it started fresh)."""
        return self.restored

    def traffic_state(self) -> Counts | None:
        """The exchange's counters, to carry over a restart (`load_traffic`)."""
        return self.exchange.counts()

    def load_traffic(self, state: Counts | None) -> None:
        """Carry the counts of the process Ray replaced over to this one. The messages that
        process held back (delay faults) died with it: they count as dropped."""
        if state is not None:
            self.exchange.load_counts(state, lost=state["held"])

    def node_id(self) -> str:
        """The Ray node this shard runs on."""
        return str(ray.get_runtime_context().get_node_id())

    def weights(self) -> np.ndarray:
        """A copy of the local agents' parameters (K, P)."""
        return self.learning.population.flat.detach().numpy().copy()  # type: ignore[no-any-return]

    def set_weights(self, flat: np.ndarray) -> None:
        """Overwrite the local agents' parameters (K, P) in place (restore, tests)."""
        self.learning.population.flat.data.copy_(torch_from(flat))

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        self.telemetry.close()
        self.exchange.close()


@dataclass
class CoordinatorSpec:
    """What a CoordinatorHost is built from."""

    scenario: Document  # the validated scenario, as JSON
    num_params: int  # of the agents' models
    layout: str  # their layout fingerprint (protocols.delta.layout_fingerprint)
    key: bytes  # the swarm's HMAC key
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port
    start_round: int = 0  # a resumed run's coordinator opens at its checkpoint's round
    counts: dict[str, int] | None = None  # its traffic counts up to that checkpoint
    # (norm, largest magnitude) of the agents' initial model, protocols.gossip.scale_of: what
    # gossip.limits are multiples of; None: no limit on a submission's magnitude
    x0_scale: tuple[float, float] | None = None
    # the agents below agents.count live on shards (a run's coordinator), not on devices
    # named after them (`swarm coordinator`): who may submit for them under mTLS
    shards: bool = False


def _host_of(sc: Scenario, sender: str, *, shards: bool) -> str | None:
    """The node (certificate name) that submits for agent `sender`: in a run its shard or
    device (`owner_in_run`), for `swarm coordinator` the device node named after it; None for
    a name that is not an agent's."""
    try:
        j = agent_index(sender)
    except ValueError:
        return None
    return owner_in_run(sc, j) if shards else agent_name(j)


class CoordinatorHost:
    """The coordinator service: collects each round's deltas over gRPC and aggregates them.

    GetAggregate answers only requests signed with the swarm key. Two calls per agent may wait
    at once: every honest client hosts at least one agent and waits for one round at a time,
    and the second place covers a call whose client just gave up while its server thread is
    still finishing. The server has SPARE_WORKERS threads more than that, so health checks and
    submits are served however many calls wait. `traffic()` adds the servicer's own figures
    (refusals without a Rejection, snapshots) to the traffic counters.
    """

    #: Server threads beyond the waiting GetAggregate calls, for health checks and submits
    #: (start_server's default pool, which served them before waiting was rationed).
    SPARE_WORKERS = 8

    def __init__(self, spec: CoordinatorSpec):
        scenario, key = spec.scenario, spec.key
        num_params, layout, host, port = spec.num_params, spec.layout, spec.host, spec.port
        start_round, counts = spec.start_round, spec.counts
        sc = Scenario.model_validate(scenario)
        self.state = CoordinatorState(
            agents=[agent_name(i) for i in range(sc.total_agents)],
            num_params=num_params,
            layout=layout,
            config=sc.gossip.coordinator,
            # a resumed run's coordinator opens at the round its checkpoint reached
            start_version=start_round,
            limits=None
            if spec.x0_scale is None
            else Limits.from_scale(
                spec.x0_scale,
                sc.gossip.limits,
                # a run's own shards are exempt (Limits.exempt); devices are held
                exempt=lambda s: spec.shards and agent_index(s) < sc.agents.count,
            ),
        )
        self.counters = TrafficCounters()
        if counts:
            self.counters.load(counts)
        self.servicer = CoordinatorServicer(
            decode=wire.make_decoder(key, num_params, layout),
            submit=self.state.submit,
            wait_aggregate=self.state.wait_aggregate,
            encode=lambda d: wire.to_proto(d, key),
            counters=self.counters,
            round_timeout_s=RPC_TIMEOUT_S,
            key=key,
            max_waiting=2 * sc.total_agents,
            host_of=lambda sender: _host_of(sc, sender, shards=spec.shards),
        )
        if counts:
            self.servicer.load_figures(counts)
        self.server, port = start_server(
            host,
            port,
            coordinator=self.servicer,
            max_message_bytes=int(sc.gossip.max_message_mb * 2**20),
            workers=2 * sc.total_agents + self.SPARE_WORKERS,
            tls=sc.gossip.tls,
            node="coordinator",
        )
        self.endpoint = f"{host}:{port}"

    def address(self) -> str:
        return self.endpoint

    def traffic(self) -> dict[str, int]:
        return {**self.counters.snapshot(), **self.servicer.figures()}

    def counts(self, *after: int) -> dict[str, int]:
        """The counters, once the refs `after` (a round's merges) are done: for a checkpoint."""
        return self.traffic()

    def close(self) -> None:
        self.server.stop(grace=None)
