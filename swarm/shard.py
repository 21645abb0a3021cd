"""The roles of a run: World, AgentShard and Coordinator (plain classes; Ray wraps them).

Each class is an ordinary Python object so it can be tested in-process; the Runner turns them
into Ray actors with `ray.remote(...)`. An AgentShard hosts several agents whose models are
stacked in one OnlineLearner, and owns a gRPC server through which other shards deliver
knowledge deltas: shards talk to each other directly, never through the driver.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocols.gossip import agent_index, agent_name
from swarm.accounting import Ledger
from swarm.scenario import Scenario

#: Seconds a gRPC call between nodes may take before the round reports a failure.
RPC_TIMEOUT_S = 60.0
#: Push deadline and re-introduction period towards devices (external_peers).
DEVICE_TIMEOUT_S = 2.0
INTRODUCE_EVERY_S = 5.0
#: Snapshot batches a shard sends one peer in a round after refusals (each may be lost too).
MAX_RESYNCS = 3


def _quiet_threads() -> None:
    # One intra-op thread per actor: actors are the unit of parallelism, and a single thread
    # keeps float sums in a fixed order, which a reproducible sync run needs.
    import torch

    torch.set_num_threads(1)


def torch_from(array: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


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


_NO_LABELS = np.zeros((0, 3), np.int64)


class WorldHost:
    """Owns the environment: steps it with the agents' decisions, records trajectories.

    A world that cannot be built (e.g. a PettingZoo env whose agent count does not match the
    scenario) does not kill the actor: `info` raises the reason as a ValueError, which the
    Runner turns into a clean error."""

    def __init__(self, scenario: dict[str, Any]):
        from envs import make_world

        sc = Scenario.model_validate(scenario)
        self.trajectory: list[np.ndarray] = []
        self.first_label: dict[int, int] = {}  # class -> tick its first label arrived
        # Every tick's decisions: the world is deterministic given its seed and these, so a
        # resumed run rebuilds it exactly by replaying them (`replay`).
        self.decisions: list[np.ndarray] = []
        self.error = ""
        try:
            self.world: Any = make_world(sc.world, sc.agents.count, sc.seed)
        except ValueError as exc:
            self.error = str(exc)
        self.rl = hasattr(getattr(self, "world", None), "n_actions")

    def info(self) -> dict[str, Any]:
        if self.error:
            raise ValueError(self.error)
        w = self.world
        if self.rl:
            return {
                "task": "rl",
                "obs_dim": w.obs_dim,
                "n_actions": w.n_actions,
                "n_classes": 0,
                "classes": [],
                "agent_ids": list(w.agent_ids),
            }
        from envs.drone_patrol.config import EVENT_CLASSES

        inputs = w.input_config() if hasattr(w, "input_config") else {"vector_dim": w.obs_dim}
        return {
            "task": "classify",
            "obs_dim": w.obs_dim,
            "inputs": inputs,
            "n_actions": 0,
            "n_classes": w.n_classes,
            "classes": list(EVENT_CLASSES),
            "agent_ids": list(w.agent_ids),
        }

    def probe(self, per_class: int, window: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        return self.world.probe_set(per_class, window, seed)

    def reset(self) -> Step:
        obs = self.world.reset()
        self.trajectory = [self.world.positions().copy()]
        self.decisions = []
        if self.rl:
            n = len(obs)
            return Step(0, obs, _NO_LABELS, np.zeros(n, np.float32), None, self.world.alive.copy())
        return Step(0, obs, _NO_LABELS)

    def step(self, *decisions: np.ndarray) -> Step:
        chosen = np.concatenate(decisions).astype(np.int64)
        self.decisions.append(chosen)
        result = self.world.step(chosen)
        self.trajectory.append(self.world.positions().copy())
        if self.rl:
            return Step(
                result.tick,
                result.obs,
                _NO_LABELS,
                result.rewards,
                result.done,
                result.alive,
                result.truncated,
                result.final_obs,
            )
        for cls in np.unique(result.labels[:, 2]).tolist():
            self.first_label.setdefault(int(cls), result.tick)
        return Step(result.tick, result.obs, result.labels)

    def replay(self, decisions: np.ndarray) -> Step:
        """Rebuild the world as it was after len(decisions) ticks: reset, then step it with the
        recorded decisions (physics only, no agents). Returns the last tick's Step."""
        step = self.reset()
        for chosen in np.asarray(decisions, dtype=np.int64):
            step = self.step(chosen)
        return step

    def checkpoint(self, ticks: int, directory: str) -> None:
        """Save what rebuilds the world after `ticks` ticks (its decisions) in `directory`."""
        from swarm import checkpoint

        if len(self.decisions) != ticks:
            raise RuntimeError(f"world checkpoint at tick {ticks} after {len(self.decisions)}")
        decisions = np.stack(self.decisions) if self.decisions else np.zeros((0, 0), np.int64)
        checkpoint.save(
            os.path.join(directory, "world.npz"), {"decisions": decisions}, {"ticks": ticks}
        )

    def first_labels(self) -> dict[int, int]:
        """Tick at which each class's first label arrived anywhere in the swarm."""
        return dict(self.first_label)

    def measure(self) -> dict[str, float | None]:
        return {k: None if v is None else float(v) for k, v in self.world.task_metrics().items()}

    def positions(self) -> np.ndarray:
        """Where the agents are now (N, 3), e.g. for a proximity graph ((N, 0) if unknown)."""
        return self.world.positions().copy()

    def trajectories(self) -> tuple[np.ndarray, dict[str, Any]]:
        """Positions at every tick (T+1, N, 3) and the map, with the events that happened."""
        layout = dict(self.world.layout())
        if hasattr(self.world, "event_log"):
            layout["events"] = self.world.event_log()
        return np.stack(self.trajectory), layout

    def close(self) -> None:
        if not self.error:
            self.world.close()


class AgentShard:
    """Hosts agents `agents` (global indices): their stacked models, learning and exchange."""

    def __init__(
        self,
        scenario: dict[str, Any],
        index: int,
        agents: list[int],
        obs_dim: int | dict[str, Any],
        n_classes: int,
        probe: tuple[np.ndarray, np.ndarray] | None,
        key: bytes,
        host: str = "127.0.0.1",
        edges: list[tuple[int, int]] | None = None,
        n_actions: int = 0,
        run: str = "",
        ckpt_dir: str = "",
        resume: bool = False,
    ):
        _quiet_threads()
        from agents.learner import OnlineLearner
        from swarm.telemetry import Telemetry

        self.sc = sc = Scenario.model_validate(scenario)
        self.index, self.node = index, f"shard-{index}"
        self.agents = list(agents)
        self.first = self.agents[0]
        self.key = key
        self.probe = probe
        self.ckpt_dir = ckpt_dir
        # Injected faults (scenario `faults:`), decided by a seeded plan every shard shares.
        self.plan: Any = None
        if sc.faults.active:
            from protocols.faults import FaultPlan

            seed = sc.seed if sc.faults.seed is None else sc.faults.seed
            self.plan = FaultPlan(sc.faults, sc.total_agents, seed)
        sharing = sc.gossip.topology not in ("isolated", "centralized")
        self.rl = n_actions > 0
        self.learner: Any
        self.shadow: Any = None
        if self.rl:
            from agents.actor_critic import OnlineActorCritic

            # Acting changes what an agent experiences, so an isolated shadow cannot live on
            # the same stream: compare against a run with gossip.topology: isolated instead.
            assert isinstance(obs_dim, int)
            self.learner = OnlineActorCritic(
                sc.model, sc.learning, sc.rl, len(agents), obs_dim, n_actions, seed=sc.seed
            )
            self.learner.population.pooled = sc.gossip.topology == "centralized"
        else:
            self.learner = OnlineLearner(
                sc.model, sc.learning, len(agents), obs_dim, n_classes, seed=sc.seed
            )
            # the upper bound: one model for everyone, trained on all agents' data
            self.learner.population.pooled = sc.gossip.topology == "centralized"
            # The isolated baseline: same observations, same labels, same seed, never shares.
            if sc.baseline.isolated and sharing:
                self.shadow = OnlineLearner(
                    sc.model, sc.learning, len(agents), obs_dim, n_classes, seed=sc.seed
                )
        self.exchange = _Exchange(self, host, edges) if sharing else None
        # Live figures as Ray metrics (swarm/telemetry.py), labelled with the run id (`run`,
        # the run directory's name; the scenario name when not given) and this shard.
        self.telemetry = Telemetry(run or sc.name, shard=self.node)
        self.loss: np.ndarray | None = None  # the agents' losses at their last learning step
        # Restored from a checkpoint: on `resume` (the whole run continues from a consistent
        # cut: keep the gossip epoch), or after Ray restarted this actor (a crash: the others
        # heard from these agents after the checkpoint, so take a new epoch and resynchronise).
        self.restored: dict[str, Any] | None = None
        restarted = _reconstructed()
        if ckpt_dir and (resume or restarted):
            from swarm.resume import read_latest, tick_dir

            marker = read_latest(ckpt_dir)
            if marker is not None:
                self.restored = self._restore(
                    tick_dir(ckpt_dir, marker["ticks"]), new_epoch=restarted
                )
            elif restarted:
                self.restored = {"checkpoint_ticks": None, "agents": self.agents}

    # -- set-up ------------------------------------------------------------------------------

    def endpoint(self) -> str:
        """host:port of this shard's gRPC server ('' when it does not share)."""
        return self.exchange.endpoint if self.exchange else ""

    def model_info(self) -> tuple[int, str]:
        """(number of parameters, layout fingerprint) of this shard's models."""
        from protocols.delta import layout_fingerprint

        population = self.learner.population
        return population.num_params, layout_fingerprint(population.specs)

    def connect(self, endpoints: list[str], coordinator: str) -> None:
        if self.exchange:
            self.exchange.connect(endpoints, coordinator)

    def set_endpoints(self, endpoints: list[str]) -> None:
        """Where the other shards serve now (one restarted on a new port)."""
        if self.exchange:
            self.exchange.endpoints = list(endpoints)

    # -- the tick ----------------------------------------------------------------------------

    def act(self, step: Step) -> np.ndarray:
        """Take this tick's labels (or rewards) and observations; return each local agent's
        classification (or action)."""
        lo, hi = self.first, self.first + len(self.agents)
        if self.rl:
            part = [
                None if a is None else a[lo:hi]
                for a in (step.rewards, step.done, step.alive, step.truncated, step.final_obs)
            ]
            return self.learner.act(step.obs[lo:hi], *part)  # type: ignore[no-any-return]
        labels = step.labels[(step.labels[:, 0] >= lo) & (step.labels[:, 0] < hi)].copy()
        labels[:, 0] -= lo
        obs = step.obs[lo:hi]
        learn = step.tick > 0 and step.tick % self.sc.learning.learn_every == 0
        out = None
        for learner in (self.learner, self.shadow):
            if learner is None:
                continue
            learner.add_labels(labels)
            if learn:
                stats = learner.learn_step()
                if learner is self.learner:  # kept for the live metrics (learn/loss)
                    self.loss = stats["loss"]
            preds = learner.act(step.tick, obs)
            out = preds if out is None else out
        assert out is not None
        return out

    def share(self, round_: int, tick: int = 0) -> dict[str, int]:
        """Send this round's knowledge deltas (over gRPC) after `tick` ticks; returns what was
        sent."""
        assert self.exchange is not None
        return self.exchange.share(round_, tick)

    def merge(self, round_: int, *barrier: Any) -> int:
        """Apply what arrived (after the barrier in sync mode); returns deltas applied."""
        assert self.exchange is not None
        return self.exchange.merge(round_)

    # -- measuring ---------------------------------------------------------------------------

    def measure(self, tick: int) -> dict[str, Any]:
        from agents.learner import balanced_accuracy

        flat = self.learner.population.flat.detach().numpy().astype(np.float64)
        out: dict[str, Any] = {
            "agents": self.agents,
            # Sufficient statistics for the swarm's consensus distance (mean ||x_i - xbar||^2).
            "sum_x": flat.sum(axis=0),
            "sum_sq": float((flat**2).sum()),
            "traffic": self.exchange.traffic() if self.exchange else {},
            # selective activation, measured on the last training step (1.0 when dense)
            "density": float(np.mean(self.learner.population.select_stats["select/density"])),
        }
        if self.rl:
            out["rl"] = dict(self.learner.stats)
            self._emit(out)
            return out
        assert self.probe is not None
        windows, labels = self.probe
        per_class = self.learner.evaluate(windows, labels)
        out["probe_acc"] = balanced_accuracy(per_class).tolist()
        out["per_class"] = np.nan_to_num(per_class, nan=-1.0).tolist()
        if self.shadow is not None:
            out["probe_acc_isolated"] = balanced_accuracy(
                self.shadow.evaluate(windows, labels)
            ).tolist()
        else:
            out["probe_acc_isolated"] = out["probe_acc"]
        self._emit(out)
        return out

    def _emit(self, measured: dict[str, Any]) -> None:
        """Set this shard's live figures (Ray metrics) from what `measure` found."""
        from swarm.telemetry import shard_figures

        steps = self.learner.updates if self.rl else self.learner.learn_steps
        names = [agent_name(i) for i in self.agents]
        shard_figures(self.telemetry, measured, names, steps=steps, loss=self.loss)

    # -- checkpoints -------------------------------------------------------------------------

    def checkpoint(self, ticks: int, directory: str) -> dict[str, Any]:
        """Save these agents after `ticks` ticks (at a round boundary): models, optimizers,
        memories, RNG, the isolated twins, gossip state and the traffic counts, plus their
        probe accuracy now (to compare with after a restore). Returns a short receipt."""
        from agents.learner import learner_state
        from swarm import checkpoint

        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {"ticks": ticks, "shard": self.index, "agents": self.agents}
        for name, learner in (("learner", self.learner), ("shadow", self.shadow)):
            if learner is None:
                continue
            part, scalars = learner_state(learner)
            arrays.update({f"{name}.{k}": v for k, v in part.items()})
            meta[name] = scalars
        if self.exchange is not None:
            part, scalars = self.exchange.state()
            arrays.update({f"exchange.{k}": v for k, v in part.items()})
            meta["exchange"] = scalars
        acc = self._probe_acc()
        arrays["probe_acc"] = acc
        path = os.path.join(str(directory), f"shard-{self.index}.npz")
        size = checkpoint.save(path, arrays, meta)
        return {"shard": self.index, "ticks": ticks, "bytes": size, "probe_acc": acc.tolist()}

    def _restore(self, directory: Any, *, new_epoch: bool) -> dict[str, Any]:
        from agents.learner import load_learner_state
        from swarm import checkpoint

        arrays, meta = checkpoint.load(os.path.join(str(directory), f"shard-{self.index}.npz"))
        if meta.get("agents") != self.agents:
            raise checkpoint.CheckpointError(
                f"{directory}: shard-{self.index} holds agents {meta.get('agents')}, "
                f"this shard hosts {self.agents}"
            )
        for name, learner in (("learner", self.learner), ("shadow", self.shadow)):
            if learner is None:
                continue
            part = {k[len(name) + 1 :]: v for k, v in arrays.items() if k.startswith(name + ".")}
            load_learner_state(learner, part, meta[name])
        if self.exchange is not None:
            part = {k[9:]: v for k, v in arrays.items() if k.startswith("exchange.")}
            self.exchange.load_state(part, meta["exchange"], new_epoch=new_epoch)
        return {
            "checkpoint_ticks": int(meta["ticks"]),
            "agents": self.agents,
            "probe_acc_checkpoint": arrays["probe_acc"].tolist(),
            "probe_acc_restored": self._probe_acc().tolist(),
        }

    def restore_info(self) -> dict[str, Any] | None:
        """What this shard restored when it started (None: it started fresh)."""
        return self.restored

    def _probe_acc(self) -> np.ndarray:
        from agents.learner import balanced_accuracy

        if self.probe is None:
            return np.zeros(0)
        return np.asarray(balanced_accuracy(self.learner.evaluate(*self.probe)), np.float64)

    def traffic_state(self) -> dict[str, Any]:
        """The exchange's counters, to carry over a restart (`load_traffic`)."""
        return self.exchange.counts() if self.exchange else {}

    def load_traffic(self, state: dict[str, Any]) -> None:
        """Carry the counts of the process Ray replaced over to this one. The messages that
        process held back (delay faults) died with it: they count as dropped."""
        if self.exchange is not None and state:
            self.exchange.load_counts(state)
            self.exchange.ledger.dropped += int(state.get("held", 0))

    def node_id(self) -> str:
        """The Ray node this shard runs on."""
        import ray

        return str(ray.get_runtime_context().get_node_id())

    def weights(self) -> np.ndarray:
        """A copy of the local agents' parameters (K, P)."""
        return self.learner.population.flat.detach().numpy().copy()

    def set_weights(self, flat: np.ndarray) -> None:
        """Overwrite the local agents' parameters (K, P) in place (restore, tests)."""
        self.learner.population.flat.data.copy_(torch_from(flat))

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        self.telemetry.close()
        if self.exchange:
            self.exchange.close()


def _reconstructed() -> bool:
    """Whether Ray restarted this actor (after its process died)."""
    try:
        import ray

        return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # not in a Ray actor (tests build shards in-process)
        return False


def _remote_devices(sc: Scenario) -> bool:
    from swarm.addresses import is_loopback

    return any(not is_loopback(p.address) for p in sc.external_peers)


class _Exchange:
    """The shard's side of knowledge exchange: gossip or coordinator, over real gRPC."""

    def __init__(self, shard: AgentShard, host: str, edges: list[tuple[int, int]] | None):
        from protocols import wire
        from protocols.coordinator import FederatedClient
        from protocols.delta import layout_fingerprint
        from protocols.gossip import ChocoGossip
        from protocols.topology import build_graph, graph_from_edges, metropolis_weights
        from protocols.transport import GossipServicer, Peers, TrafficCounters, start_server

        sc = shard.sc
        self.shard = shard
        self.cfg = sc.gossip
        population = shard.learner.population
        self.x = population.flat.data.numpy()  # (K, P) shares memory with the live models
        x0 = self.x[0].copy()  # every agent starts from the common init
        self.layout = layout_fingerprint(population.specs)
        self.num_params = population.num_params
        self.counters = TrafficCounters()
        self.max_bytes = int(sc.gossip.max_message_mb * 2**20)
        tls = sc.gossip.tls
        self.peers = Peers(self.max_bytes, self.counters, tls=tls, node=shard.node)
        self.endpoints: list[str] = []
        self.coordinator = ""
        per = sc.per_shard
        self.logical_bytes = np.zeros(len(shard.agents), np.int64)
        self.dense_bytes = np.zeros(len(shard.agents), np.int64)
        self.rounds = 0
        self.external = {agent_name(p.agent): p.address for p in sc.external_peers}
        self.outboxes: Any = None
        self.plan = shard.plan
        self.ledger = Ledger()
        # Messages a delay fault holds back: (receiving node, round it goes out) -> [(agent,
        # message)], sent before that round's own messages.
        self.held: dict[tuple[str, int], list[tuple[int, Any]]] = {}
        # Send a snapshot of every local agent before the next deltas: set when this shard
        # restarted from a checkpoint with a new epoch (its peers refuse deltas until then).
        self.announce = False
        if host == "node":
            # on a Ray cluster: listen on, and advertise, this node's address
            import ray

            host = ray.util.get_node_ip_address()
        if sc.gossip.topology == "decentralized":
            n = sc.total_agents
            graph = graph_from_edges(n, edges) if edges is not None else None
            graph = graph or build_graph(sc.gossip.graph, n, sc.seed)
            count = sc.agents.count

            def owner(j: int) -> str:
                return f"shard-{j // per}" if j < count else agent_name(j)

            self.algo: Any = ChocoGossip(
                robust=sc.gossip.robust,
                local=shard.agents,
                weights=metropolis_weights(graph),
                x0=x0,
                gamma=sc.gossip.gamma,
                compression=sc.gossip.compression,
                layout=self.layout,
                owner=owner,
                # The wall clock: a device that kept its state from an earlier run holds older
                # epochs of these agents, and resynchronises instead of mixing the two runs.
                epoch=int(time.time() * 1000),
            )
            decode = wire.make_decoder(shard.key, self.num_params, self.layout)
            servicer = GossipServicer(
                shard.node, decode, self.algo.receive, self.counters, introduce=self._on_introduce
            )
            # The agents of another node each local agent neighbours (partitions cut per agent).
            self.across = {
                (i, node): [j for j, _ in nbrs if owner(j) == node]
                for i, nbrs in zip(shard.agents, self.algo.neighbours, strict=True)
                for node in self.algo.destinations(i)
            }
            advertise = host
            if host in ("127.0.0.1", "localhost") and _remote_devices(sc):
                # devices on the network dial this shard: listen on every interface and
                # advertise this machine's address (its certificate must name it)
                import ray

                host, advertise = "0.0.0.0", ray.util.get_node_ip_address()
            self.server, port = start_server(
                host, 0, gossip=servicer, max_message_bytes=self.max_bytes, tls=tls, node=shard.node
            )
            self.endpoint = f"{advertise}:{port}"
            # Devices this shard's agents neighbour: reached through outboxes (a device may be
            # down or restart; the round barrier never waits for one).
            self.device_agents = {
                name: [i for i in shard.agents if name in self.algo.destinations(i)]
                for name in self.external
            }
            self.device_agents = {k: v for k, v in self.device_agents.items() if v}
            # A device is out of the consensus step until it answers an introduction: the
            # copy of one that never joins would pull these agents back to the initial weights.
            for name in self.device_agents:
                self.algo.set_active(agent_index(name), False)
            if self.device_agents:
                from protocols.outbox import Outboxes

                self.outboxes = Outboxes(
                    self.peers.push,
                    lambda r, msgs: wire.pack(shard.node, r, msgs, self.max_bytes, shard.key),
                    self._snapshots,
                    timeout_s=DEVICE_TIMEOUT_S,
                )
                self._intro_stop = threading.Event()
                self._intro_thread = threading.Thread(target=self._introducer, daemon=True)
        else:
            self.algo = FederatedClient(
                local=shard.agents, x0=x0, compression=sc.gossip.compression, layout=self.layout
            )
            self.server, self.endpoint = None, ""
        self._wire = wire

    def connect(self, endpoints: list[str], coordinator: str) -> None:
        self.endpoints, self.coordinator = endpoints, coordinator
        if self.outboxes is not None:
            self._intro_thread.start()

    # -- devices (scenario external_peers) -----------------------------------------------------

    def _introduction(self, agents: list[int]) -> Any:
        # membership False: Ray supervises shards; they answer pings but do not probe
        return self._wire.introduction(
            self.shard.node, self.endpoint, agents, membership=False, key=self.shard.key
        )

    def _on_introduce(self, intro: Any) -> Any:
        self._wire.check_introduction(intro, self.shard.key)
        return self._introduction(
            [i for i in self.shard.agents if intro.node in self.algo.destinations(i)]
        )

    def _introducer(self) -> None:
        """Tell every neighbouring device which of its neighbours this shard hosts and where,
        again every few seconds: a device that restarts learns it anew."""
        while not self._intro_stop.is_set():
            for name, agents in self.device_agents.items():
                # a device not up yet, or refusing: try again next period
                with contextlib.suppress(Exception):
                    reply = self.peers.introduce(
                        self.external[name], self._introduction(agents), DEVICE_TIMEOUT_S
                    )
                    self._wire.check_introduction(reply, self.shard.key)
                    j = agent_index(name)
                    if not self.algo.active(j) and self.rounds > 0:
                        # first contact after rounds went by: a snapshot, not a refused delta
                        self.outboxes.resync(self.external[name])
                    self.algo.set_active(j, True)
            self._intro_stop.wait(INTRODUCE_EVERY_S)

    def _snapshots(self, round_: int, address: str) -> list[Any]:
        names = [n for n, a in self.external.items() if a == address]
        agents = {i for n in names for i in self.device_agents.get(n, [])}
        return [
            self._wire.to_proto(d, self.shard.key) for d in self.algo.make_snapshots(round_, agents)
        ]

    def share(self, round_: int, tick: int) -> dict[str, int]:
        wire, key = self._wire, self.shard.key
        examples = self.shard.learner.take_example_counts()
        decentralized = self.cfg.topology == "decentralized"
        # a restarted shard's new epoch starts with snapshots of its agents (before the deltas)
        snapshots = self.algo.make_snapshots(round_) if self.announce and decentralized else []
        self.announce = False
        if not decentralized and self.algo.version < round_:
            self._catch_up(round_)  # restored from a checkpoint rounds ago
        deltas = self._lie(self.algo.make_deltas(self.x, round_, examples), round_)
        messages = [wire.to_proto(d, key) for d in deltas]
        dense = 4 * self.num_params
        if not decentralized:
            batches = self._pack(round_, messages)
            self.ledger.sent += len(messages)
            for batch in batches:
                self.peers.submit(self.coordinator, batch, RPC_TIMEOUT_S)
                self.ledger.delivered += self._wire_messages(batch)
            for row, msg in enumerate(messages):
                self.logical_bytes[row] += msg.ByteSize()
                self.dense_bytes[row] += dense
            self.rounds += 1
            return {"deltas": len(deltas)}
        by_node: dict[str, list[tuple[int, Any]]] = {}
        for d in snapshots:
            i = agent_index(d.sender)
            for node in self.algo.destinations(i):
                by_node.setdefault(node, []).append((i, wire.to_proto(d, key)))
                self.ledger.snapshots += node not in self.external
        for row, msg in enumerate(messages):
            i = self.shard.agents[row]
            fanout = self.algo.logical_recipients(i)
            # As standalone devices, an agent would send its delta to every neighbour.
            self.logical_bytes[row] += fanout * msg.ByteSize()
            self.dense_bytes[row] += fanout * dense
            for node in self.algo.destinations(i):
                by_node.setdefault(node, []).append((i, msg))
        # held-back messages due now, to nodes this round has nothing else for
        for node, due in sorted(self.held):
            if due == round_:
                by_node.setdefault(node, [])
        for node, items in sorted(by_node.items()):
            if node in self.external:  # devices: through outboxes, outside the ledger
                self.outboxes.add(self.external[node], [m for _, m in items], round_)
            else:
                self._deliver(node, items, round_, tick)
        self.rounds += 1
        return {"deltas": len(deltas)}

    def _catch_up(self, round_: int) -> None:
        """A shard restored from a checkpoint in coordinator mode is rounds behind: take the
        closed rounds' aggregates (the coordinator keeps them); each makes the local agents
        the global model."""
        for r in range(self.algo.version, round_):
            reply = self.peers.get_aggregate(self.coordinator, self.shard.node, r, RPC_TIMEOUT_S)
            aggregate = self._wire.from_proto(
                reply.aggregate, key=self.shard.key, num_params=self.num_params, layout=self.layout
            )
            self.algo.apply_aggregate(self.x, aggregate)
        self.algo.error[:] = 0  # the residuals belonged to deltas the global model now holds

    def _lie(self, deltas: list[Any], round_: int) -> list[Any]:
        """A Byzantine agent (faults.byzantine) falsifies the deltas it sends; its own model
        and its own public copy stay honest, so only its peers are misled."""
        if self.plan is None or not self.plan.byzantine:
            return deltas
        from protocols.faults import corrupt_delta

        out = []
        for d in deltas:
            if agent_index(d.sender) in self.plan.byzantine:
                d = corrupt_delta(d, self.plan, self.cfg.compression)
                self.ledger.corrupted += 1
            out.append(d)
        return out

    def _deliver(self, node: str, items: list[tuple[int, Any]], round_: int, tick: int) -> None:
        """Send one round's messages to another shard, through the injected faults.

        A refusal (FAILED_PRECONDITION: the receiver's copy of a sender is not where these
        messages start, after a lost message or a restart on either side) is answered with
        snapshots of those senders' public copies, which go through the faults too."""
        address = self.endpoints[int(node.split("-")[1])]
        batch = self.held.pop((node, round_), []) + self._through_faults(
            node, items, round_, tick, 0
        )
        attempt = 0
        while batch and not self._push(address, batch, round_) and attempt < MAX_RESYNCS:
            attempt += 1
            snaps = [
                (agent_index(d.sender), self._wire.to_proto(d, self.shard.key))
                for d in self.algo.make_snapshots(round_, {i for i, _ in batch})
            ]
            self.ledger.snapshots += len(snaps)
            batch = self._through_faults(node, snaps, round_, tick, attempt)

    def _through_faults(
        self, node: str, items: list[tuple[int, Any]], round_: int, tick: int, attempt: int
    ) -> list[tuple[int, Any]]:
        """The messages that go out now: each is sent (counted), then dropped, cut by a
        partition, held back or duplicated as the fault plan decides."""
        self.ledger.sent += len(items)
        plan = self.plan
        if plan is None:
            return list(items)
        out: list[tuple[int, Any]] = []
        for i, msg in items:
            if any(plan.partitioned(tick, i, j) for j in self.across[(i, node)]):
                self.ledger.dropped += 1
                self.ledger.dropped_partition += 1
                continue
            fate = plan.fate(round_, i, node, attempt)
            if fate.kind == "drop":
                self.ledger.dropped += 1
            elif fate.kind == "delay":
                self.held.setdefault((node, round_ + fate.rounds), []).append((i, msg))
                self.ledger.delayed += 1
            else:
                out.append((i, msg))
                if fate.kind == "duplicate":
                    out.append((i, msg))
                    self.ledger.sent += 1
                    self.ledger.duplicated += 1
        return out

    def _push(self, address: str, items: list[tuple[int, Any]], round_: int) -> bool:
        """Push messages in as few batches as fit; False if the receiver refused any batch."""
        import grpc

        ok = True
        for batch in self._pack(round_, [m for _, m in items]):
            n = self._wire_messages(batch)
            try:
                self.peers.push(address, batch, RPC_TIMEOUT_S)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                self.ledger.rejected += n
                ok = False
            else:
                self.ledger.delivered += n
        return ok

    @staticmethod
    def _wire_messages(batch: Any) -> int:
        from protocols.transport import messages_in

        return messages_in(batch)

    def _pack(self, round_: int, msgs: list[Any]) -> list[Any]:
        # under the message limit; a delta too large for one message goes in signed chunks
        return self._wire.pack(self.shard.node, round_, msgs, self.max_bytes, self.shard.key)

    def merge(self, round_: int) -> int:
        if self.cfg.topology == "coordinator":
            reply = self.peers.get_aggregate(
                self.coordinator, self.shard.node, round_, RPC_TIMEOUT_S
            )
            aggregate = self._wire.from_proto(
                reply.aggregate, key=self.shard.key, num_params=self.num_params, layout=self.layout
            )
            self.algo.apply_aggregate(self.x, aggregate)
            return 1
        return self.algo.apply(self.x)

    # -- checkpoints ---------------------------------------------------------------------------

    def counts(self) -> dict[str, Any]:
        """Every running count (traffic, ledger, logical bytes, rounds) as JSON-able values."""
        return {
            "counters": self.counters.snapshot(),
            "ledger": self.ledger.state(),
            "logical_bytes": self.logical_bytes.tolist(),
            "dense_bytes": self.dense_bytes.tolist(),
            "rounds": self.rounds,
            "held": sum(len(v) for v in self.held.values()),
        }

    def load_counts(self, state: dict[str, Any]) -> None:
        self.counters.load(state["counters"])
        self.ledger = Ledger.from_state(state["ledger"])
        self.logical_bytes[:] = state["logical_bytes"]
        self.dense_bytes[:] = state["dense_bytes"]
        self.rounds = int(state["rounds"])

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays, scalars) of the exchange at a round boundary: the gossip (or federated
        client) state, the messages a delay fault holds back, and the counts."""
        arrays: dict[str, np.ndarray] = {}
        scalars: dict[str, Any] = {"counts": self.counts()}
        if self.cfg.topology == "decentralized":
            for k, v in self.algo.state().items():
                if isinstance(v, np.ndarray):
                    arrays[f"gossip.{k}"] = v
                else:
                    scalars[f"gossip.{k}"] = int(v)
        else:
            arrays["fed.global_model"] = self.algo.global_model.copy()
            arrays["fed.error"] = self.algo.error.copy()
            scalars["fed.version"] = int(self.algo.version)
        held = [
            (node, due, i, msg.SerializeToString())
            for (node, due), items in sorted(self.held.items())
            for i, msg in items
        ]
        scalars["held"] = [[node, due, i] for node, due, i, _ in held]
        arrays["held.sizes"] = np.array([len(b) for *_, b in held], np.int64)
        arrays["held.bytes"] = np.frombuffer(b"".join(b for *_, b in held), np.uint8).copy()
        return arrays, scalars

    def load_state(
        self, arrays: dict[str, np.ndarray], scalars: dict[str, Any], *, new_epoch: bool
    ) -> None:
        """Resume from `state()`. new_epoch: this shard restarted after a crash (its peers
        heard from it after the checkpoint): take a new epoch and announce it with snapshots."""
        from swarm.proto.v1 import delta_pb2

        if self.cfg.topology == "decentralized":
            state: dict[str, Any] = {k[7:]: v for k, v in arrays.items() if k.startswith("gossip.")}
            state.update({k[7:]: v for k, v in scalars.items() if k.startswith("gossip.")})
            epoch = max(int(state["epoch"]) + 1, int(time.time() * 1000)) if new_epoch else None
            self.algo.load_state(state, epoch=epoch)
            self.announce = new_epoch
        else:
            self.algo.global_model[:] = arrays["fed.global_model"]
            self.algo.error[:] = arrays["fed.error"]
            self.algo.version = int(scalars["fed.version"])
        self.held = {}
        offsets = np.concatenate([[0], np.cumsum(arrays["held.sizes"])])
        raw = arrays["held.bytes"].tobytes()
        # After a crash the messages held at the checkpoint were already sent or dropped by the
        # process that died (their rounds are past); a resumed run still owes them.
        for k, (node, due, i) in enumerate([] if new_epoch else scalars["held"]):
            msg = delta_pb2.KnowledgeDelta.FromString(raw[offsets[k] : offsets[k + 1]])
            self.held.setdefault((str(node), int(due)), []).append((int(i), msg))
        self.load_counts(scalars["counts"])

    def traffic(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counters.snapshot())
        out["bytes_sent"] = self.logical_bytes.tolist()
        out["dense_bytes"] = self.dense_bytes.tolist()
        out["rounds"] = self.rounds
        ledger = self.ledger.state()
        ledger["held"] = sum(len(v) for v in self.held.values())
        out["ledger"] = ledger
        if self.outboxes is not None:
            from protocols.outbox import PeerStats

            out["devices"] = {
                name: vars(self.outboxes.stats().get(self.external[name]) or PeerStats())
                for name in self.device_agents
            }
        return out

    def close(self) -> None:
        if self.outboxes is not None:
            self._intro_stop.set()
            self.outboxes.close()
        self.peers.close()
        if self.server is not None:
            self.server.stop(grace=None)


class CoordinatorHost:
    """The coordinator service: collects each round's deltas over gRPC and aggregates them."""

    def __init__(
        self,
        scenario: dict[str, Any],
        num_params: int,
        layout: str,
        key: bytes,
        host: str = "127.0.0.1",
        port: int = 0,
        start_round: int = 0,
        counts: dict[str, int] | None = None,
    ):
        from protocols import wire
        from protocols.coordinator import CoordinatorState
        from protocols.transport import CoordinatorServicer, TrafficCounters, start_server

        sc = Scenario.model_validate(scenario)
        self.state = CoordinatorState(
            agents=[agent_name(i) for i in range(sc.total_agents)],
            num_params=num_params,
            layout=layout,
            config=sc.gossip.coordinator,
        )
        # a resumed run's coordinator opens at the round its checkpoint reached
        self.state.version = start_round
        self.counters = TrafficCounters()
        if counts:
            self.counters.load(counts)
        max_bytes = int(sc.gossip.max_message_mb * 2**20)
        servicer = CoordinatorServicer(
            decode=wire.make_decoder(key, num_params, layout),
            submit=self.state.submit,
            wait_aggregate=self.state.wait_aggregate,
            encode=lambda d: wire.to_proto(d, key),
            counters=self.counters,
            round_timeout_s=RPC_TIMEOUT_S,
        )
        self.server, port = start_server(
            host,
            port,
            coordinator=servicer,
            max_message_bytes=max_bytes,
            tls=sc.gossip.tls,
            node="coordinator",
        )
        self.endpoint = f"{host}:{port}"

    def address(self) -> str:
        return self.endpoint

    def traffic(self) -> dict[str, int]:
        return self.counters.snapshot()

    def counts(self, *after: Any) -> dict[str, int]:
        """The counters, once the refs `after` (a round's merges) are done: for a checkpoint."""
        return self.counters.snapshot()

    def close(self) -> None:
        self.server.stop(grace=None)
