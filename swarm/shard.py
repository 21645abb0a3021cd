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

from protocols.gossip import agent_name
from swarm.scenario import Scenario

#: Seconds a gRPC call between nodes may take before the round reports a failure.
RPC_TIMEOUT_S = 60.0
#: Push deadline and re-introduction period towards devices (external_peers).
DEVICE_TIMEOUT_S = 2.0
INTRODUCE_EVERY_S = 5.0


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
        if self.rl:
            n = len(obs)
            return Step(0, obs, _NO_LABELS, np.zeros(n, np.float32), None, self.world.alive.copy())
        return Step(0, obs, _NO_LABELS)

    def step(self, *decisions: np.ndarray) -> Step:
        result = self.world.step(np.concatenate(decisions).astype(np.int64))
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

    def share(self, round_: int) -> dict[str, int]:
        """Send this round's knowledge deltas (over gRPC); returns what was sent."""
        assert self.exchange is not None
        return self.exchange.share(round_)

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
        per = sc.agents.per_shard
        self.logical_bytes = np.zeros(len(shard.agents), np.int64)
        self.dense_bytes = np.zeros(len(shard.agents), np.int64)
        self.rounds = 0
        self.external = {agent_name(p.agent): p.address for p in sc.external_peers}
        self.outboxes: Any = None
        if sc.gossip.topology == "decentralized":
            n = sc.total_agents
            graph = graph_from_edges(n, edges) if edges is not None else None
            graph = graph or build_graph(sc.gossip.graph, n, sc.seed)
            count = sc.agents.count
            self.algo: Any = ChocoGossip(
                local=shard.agents,
                weights=metropolis_weights(graph),
                x0=x0,
                gamma=sc.gossip.gamma,
                compression=sc.gossip.compression,
                layout=self.layout,
                owner=lambda j: f"shard-{j // per}" if j < count else agent_name(j),
                # The wall clock: a device that kept its state from an earlier run holds older
                # epochs of these agents, and resynchronises instead of mixing the two runs.
                epoch=int(time.time() * 1000),
            )
            decode = wire.make_decoder(shard.key, self.num_params, self.layout)
            servicer = GossipServicer(
                shard.node, decode, self.algo.receive, self.counters, introduce=self._on_introduce
            )
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
                self.algo.set_active(int(name.split("-")[1]), False)
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
                    j = int(name.split("-")[1])
                    if not self.algo.active(j) and self.rounds > 0:
                        # first contact after rounds went by: a snapshot, not a refused delta
                        self.outboxes.resync(self.external[name])
                    self.algo.set_active(j, True)
            self._intro_stop.wait(INTRODUCE_EVERY_S)

    def _snapshots(self, round_: int, address: str) -> list[Any]:
        names = [n for n, a in self.external.items() if a == address]
        agents = {i for n in names for i in self.device_agents.get(n, [])}
        return [
            self._wire.to_proto(d, self.shard.key)
            for d in self.algo.make_snapshots(round_)
            if int(d.sender.split("-")[1]) in agents
        ]

    def share(self, round_: int) -> dict[str, int]:
        examples = self.shard.learner.take_example_counts()
        deltas = self.algo.make_deltas(self.x, round_, examples)
        messages = [self._wire.to_proto(d, self.shard.key) for d in deltas]
        dense = 4 * self.num_params
        if self.cfg.topology == "coordinator":
            for batch in self._pack(round_, messages):
                self.peers.submit(self.coordinator, batch, RPC_TIMEOUT_S)
            for row, msg in enumerate(messages):
                self.logical_bytes[row] += msg.ByteSize()
                self.dense_bytes[row] += dense
        else:
            by_node: dict[str, list[Any]] = {}
            for row, msg in enumerate(messages):
                i = self.shard.agents[row]
                fanout = self.algo.logical_recipients(i)
                # As standalone devices, an agent would send its delta to every neighbour.
                self.logical_bytes[row] += fanout * msg.ByteSize()
                self.dense_bytes[row] += fanout * dense
                for node in self.algo.destinations(i):
                    by_node.setdefault(node, []).append(msg)
            for node, msgs in sorted(by_node.items()):
                if node in self.external:
                    self.outboxes.add(self.external[node], msgs, round_)
                    continue
                address = self.endpoints[int(node.split("-")[1])]
                for batch in self._pack(round_, msgs):
                    self.peers.push(address, batch, RPC_TIMEOUT_S)
        self.rounds += 1
        return {"deltas": len(deltas)}

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

    def traffic(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counters.snapshot())
        out["bytes_sent"] = self.logical_bytes.tolist()
        out["dense_bytes"] = self.dense_bytes.tolist()
        out["rounds"] = self.rounds
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
        self.counters = TrafficCounters()
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

    def close(self) -> None:
        self.server.stop(grace=None)
