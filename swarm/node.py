"""`swarm-node`: one agent as one small gRPC program, for real devices (no Ray).

    swarm-node --config node.yaml           run (also: `swarm node --config node.yaml`)
    swarm-node --config node.yaml --status  what a running (or stopped) node is doing

A node runs one agent of a scenario: its own Yan model, learning online from a sensor (the
built-in simulated drone, a recorded file, or JSON lines on standard input; swarm/sensors.py),
and gossiping knowledge deltas with its graph neighbours over the same wire protocol as the
simulated shards (`swarm.v1.Gossip`, CHOCO-Gossip, HMAC-signed deltas). Neighbours may be other
devices or the shards of a simulated run that lists this node in `external_peers`. With
`coordinator: HOST:PORT` it exchanges through a coordinator instead (`Federation` below,
served by `swarm coordinator`, swarm/coordinator_service.py).

What a device needs, and where it lives:

- Peers are listed by address. At start (and until every graph neighbour is known) the node
  *introduces* itself to each: "node agent-7 at HOST:PORT hosts agent 7, my clock reads T".
  The reply says which agents the peer hosts, so deltas go to the right address. A simulated
  run introduces its shards to its external peers the same way.
- Delivery: one outbox and sender thread per peer (protocols/outbox.py): the learning loop
  never waits for the network; an unreachable peer's deltas wait (bounded) and a peer that
  restarted or joined late is resynchronised with snapshots of the public copies.
- Failure detection: SWIM membership with every peer (protocols/membership_net.py; the shards
  of a run answer pings without probing). A neighbour declared dead is left out of the
  consensus step and sent nothing until it is back.
- Durable state (`state_dir`): a checkpoint of the model, optimizer, replay memory and
  gossip state every `checkpoint_every_s` (swarm/checkpoint.py: npz + JSON, atomic, no
  pickle). On restart the node resumes from it with a new *epoch*, so its peers take its
  snapshot instead of refusing its out-of-step deltas. SIGTERM / Ctrl-C: the reading in
  flight is finished, queued deltas get a short grace to leave, then a checkpoint is saved.
- Security on by default off loopback: a node that listens on or talks to a non-loopback
  address refuses to start without mutual TLS (`swarm certs`) and a key file, unless the
  config says `insecure: true`. Introductions carry the wall clock; a peer whose clock is
  more than `max_clock_skew_s` away is refused with a message saying so (devices without a
  real-time clock must sync it before joining, or TLS certificates look "not yet valid").
- Health: standard gRPC health checking (`grpc.health.v1`); `status.json` in the state
  directory is rewritten every `status_every_s` and read by `--status`.

Here: `Node`, `Federation` and `main`. The config file's schema and checks are in
swarm/node_config.py, status.json and `--status` in swarm/node_status.py, and the steps a node
takes with its peers (introductions, contacts, snapshots, outboxes, a coordinator) in
protocols/peering.py, which the simulated shards use too.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import numpy as np

from protocols.coordinator import FederatedClient
from protocols.delta import Delta, DeltaRejected, Rejection, layout_fingerprint
from protocols.errors import ClockSkew, KeyMismatch, PeerError, Stale, TlsHandshakeFailed
from protocols.gossip import ChocoGossip, Limits, agent_name
from protocols.membership import Member, State
from protocols.membership_net import MembershipNode
from protocols.peering import (
    Codec,
    Contacts,
    CoordinatorLink,
    Directory,
    Introducer,
    Introductions,
    Snapshots,
    make_outboxes,
)
from protocols.tls import TlsError
from protocols.topology import build_graph, metropolis_weights
from protocols.transport import GossipServicer, Peers, TrafficCounters, start_server
from swarm import checkpoint, checkpoint_meta
from swarm.addresses import host_of
from swarm.checkpoint import CheckpointError
from swarm.exchange import exchange_for
from swarm.node_config import (
    DEV_KEY,
    NodeConfig,
    NodeError,
    check_address,
    check_security,
    load_node_config,
    load_node_scenario,
    read_key,
    resolve_tls,
    state_dir,
)
from swarm.node_status import ONLINE_WINDOW, show_status, status_of, write_status
from swarm.proto.v1 import delta_pb2, gossip_pb2
from swarm.records import JSON, Document, as_doc, as_int
from swarm.scenario import ScenarioError
from swarm.sensors import SensorError, open_sensor

__all__ = [  # what other modules and tests import from here (the config and status moved out)
    "DEV_KEY",
    "INTRODUCE_EVERY_S",
    "ONLINE_WINDOW",
    "PUSH_TIMEOUT_S",
    "Federation",
    "Node",
    "NodeConfig",
    "NodeError",
    "build_parser",
    "load_node_config",
    "main",
    "resolve_tls",
    "show_status",
    "state_dir",
]

#: Seconds one push may take before it is retried (the outbox keeps the delta).
PUSH_TIMEOUT_S = 2.0
#: How often a node re-introduces itself to peers whose agents it does not know yet.
INTRODUCE_EVERY_S = 1.0
#: Every this many seconds a node introduces itself again to every listed peer.
REINTRODUCE_ALL_S = 10 * INTRODUCE_EVERY_S


#: Refutations and same-millisecond restarts a peer's incarnation may add to its epoch.
INCARNATION_ROOM = 2**20


def freeze_startup_objects() -> None:
    """Exclude everything alive now (torch's and the model's ~200,000 objects) from Python's
    cyclic garbage collector. A full collection walks every tracked object: with them it took
    130-370 ms on a 2-core machine, every half minute or so and more often under a flood of
    messages, and the gRPC threads wait for it (health checks missed 100 ms; BENCHMARKS.md,
    Hostile peers). What is made later is collected as usual; what is frozen lives as long as
    the process anyway."""
    gc.collect()
    gc.freeze()


def next_epoch(directory: Path) -> int:
    """This start's epoch: the wall clock in ms, and more than any earlier start of this node,
    persisted (`directory`/epoch.json) before anything is sent. Peers then take this
    incarnation's snapshots even if it crashes before its first checkpoint, or its state
    directory was wiped (the clock has moved on: synchronised clocks are a condition of
    joining anyway)."""
    path = directory / "epoch.json"
    previous = -1
    if path.exists():
        try:
            previous = int(json.loads(path.read_text())["epoch"])
        except (ValueError, KeyError, TypeError):
            raise NodeError(
                f"{path} is damaged; delete it (the clock gives the next epoch)"
            ) from None
    epoch = max(previous + 1, int(time.time() * 1000))
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps({"epoch": epoch}))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # a full disk: say so, and leave no half-written file behind
        tmp.unlink(missing_ok=True)
        raise NodeError(f"cannot write {path}: {exc.strerror or exc}") from None
    return epoch


Checkpoint = tuple[dict[str, np.ndarray], Document]
"""(arrays, JSON metadata) of a saved node (swarm/checkpoint.py)."""


class Node:
    """One agent with its sensor, learner, gossip state, gRPC server and checkpoints.

    Built in steps: the configuration and its checks, the state directory (epoch, checkpoint),
    the learners, the exchange (gossip or a coordinator, outboxes), the restored checkpoint,
    then the network (server, membership, introductions). `run` reads the sensor until done.
    """

    def __init__(self, cfg: NodeConfig, base: Path):
        import torch  # lazy: `swarm-node --help` and `--status` need no torch

        torch.set_num_threads(1)
        self.cfg, self.base = cfg, base
        self._configure()
        saved = self._open_state()
        self._build_learners(saved)
        self._build_exchange()
        self.step = self.round = 0
        self.started = time.time()
        self.resumed_from: Document | None = None
        if saved is not None:
            self._restore(*saved)
        freeze_startup_objects()  # before the server answers anyone: the collection is long
        self._start_network()
        self._reset_loop()

    # -- building steps ---------------------------------------------------------------------

    def _configure(self) -> None:
        """The scenario, this node's name, key and TLS, and the checks before anything starts."""
        cfg = self.cfg
        sc = self.sc = load_node_scenario(cfg, self.base)
        self.n_agents = sc.total_agents
        self.index, self.name = cfg.agent, agent_name(cfg.agent)
        self.tls = resolve_tls(cfg.tls, self.base) or sc.gossip.tls
        self.key = read_key(cfg, sc, self.base)
        check_address(cfg)
        check_security(cfg, sc, self.tls, self.key, self.name)

    def _open_state(self) -> Checkpoint | None:
        """The state directory and this start's epoch; the checkpoint to resume from, if any."""
        self.state_dir = state_dir(self.cfg, self.base)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.ckpt_path = self.state_dir / "checkpoint.npz"
        # what a crash (or a full disk) may have left half-written; the whole files stay
        checkpoint.temp_path(self.ckpt_path).unlink(missing_ok=True)
        (self.state_dir / "epoch.tmp").unlink(missing_ok=True)
        self.epoch = next_epoch(self.state_dir)
        return self._read_checkpoint() if self.cfg.resume else None

    def _build_learners(self, saved: Checkpoint | None) -> None:
        """The sensor (a resumed file source skips what it read) and the model(s) it feeds."""
        from agents.learner import OnlineLearner  # lazy: torch (see __init__)

        cfg, sc = self.cfg, self.sc
        skip = as_int(saved[1]["sensor_position"]) if saved else 0
        self.sensor = open_sensor(
            cfg.sensor,
            world_cfg=sc.world,
            n_agents=self.n_agents,
            index=self.index,
            seed=sc.seed,
            window=sc.learning.window,
            probe_per_class=sc.metrics.probe_per_class,
            skip=skip if cfg.sensor.kind == "file" else 0,
            base=self.base,
        )
        self.classes = self.sensor.classes

        def learner() -> OnlineLearner:
            n_classes = len(self.classes)
            return OnlineLearner(
                sc.model, sc.learning, 1, self.sensor.input, n_classes, seed=sc.seed
            )

        self.learner = learner()
        self.shadow = learner() if cfg.shadow else None
        population = self.learner.population
        self.x = population.flat.data.numpy()  # (1, P), shares memory with the model
        self.num_params = population.num_params
        self.layout = layout_fingerprint(population.specs)

    def _build_exchange(self) -> None:
        """Gossip state, the peers' channels, outboxes and contacts, or a coordinator."""
        sc = self.sc
        self.counters = TrafficCounters()
        self.max_bytes = int(sc.gossip.max_message_mb * 2**20)
        self.peers = Peers(self.max_bytes, self.counters, tls=self.tls, node=self.name)
        self.codec = Codec(self.name, self.key, self.max_bytes, self.num_params, self.layout)
        self.gossip = ChocoGossip(
            local=[self.index],
            weights=metropolis_weights(build_graph(sc.gossip.graph, self.n_agents, sc.seed)),
            x0=self.x[0].copy(),
            gamma=sc.gossip.gamma,
            compression=sc.gossip.compression,
            layout=self.layout,
            owner=agent_name,
            epoch=self.epoch,
            limits=Limits.relative_to(self.x[0], sc.gossip.limits, self._incarnation_ceiling),
        )
        self.neighbours = [j for j, _ in self.gossip.neighbours[0]]
        self.fatal: str | None = None  # why the node must stop, found by a network thread
        self.error: str | None = None  # why the node stopped, when it failed
        self.directory = Directory(node=self.name, local=[self.index])
        self._warned_conflicts: dict[str, list[str]] = {}
        self._warn_lock = threading.Lock()
        snapshots = Snapshots(self.gossip, self.codec, self.directory.agents_at)
        self.outboxes = make_outboxes(
            self.peers, self.codec, snapshots, timeout_s=PUSH_TIMEOUT_S, on_fatal=self._on_fatal
        )
        self.contacts = Contacts(
            self.gossip,
            self.outboxes,
            self.directory,
            self.neighbours,
            rounds_done=lambda: self.round,
            on_contact=self._join,
        )
        self.contacts.leave_out_until_contact()
        self.federation = self._federation()

    def _federation(self) -> Federation | None:
        cfg, sc = self.cfg, self.sc
        if not cfg.coordinator:
            return None
        if not exchange_for(sc.gossip.topology).needs_coordinator:
            raise NodeError(
                f"coordinator {cfg.coordinator}: the scenario's gossip.topology is "
                f"{sc.gossip.topology!r}; set it to coordinator (the service checks it too)"
            )
        client = FederatedClient(
            local=[self.index],
            x0=self.x[0].copy(),
            compression=sc.gossip.compression,
            layout=self.layout,
            shared_coordinates=sc.gossip.coordinator.compares_coordinates,
        )
        link = CoordinatorLink(self.peers, cfg.coordinator, self.codec)
        return Federation(link, client, sc.gossip.coordinator.round_timeout_s + PUSH_TIMEOUT_S)

    def _start_network(self) -> None:
        """The gRPC server, SWIM membership and the introductions, in that order: the server
        answers pings and introductions as soon as it listens."""
        cfg, sc = self.cfg, self.sc
        self.introductions = Introductions(
            self.name, self.key, membership=True, max_clock_skew_s=cfg.max_clock_skew_s
        )
        self.introductions.address = cfg.advertise or ""  # the bound port, once it is known
        self.membership: MembershipNode | None = None
        self.dead_at: dict[str, float] = {}  # node -> wall time it was declared dead
        servicer = GossipServicer(
            self.name, self.codec.decoder(), self.gossip.receive, self.counters,
            membership=None, introduce=self._on_introduce, host_of=self.directory.host_of,
        )  # fmt: skip
        host = host_of(cfg.listen)
        bind = f"[{host}]" if ":" in host else host
        self.server, self.port = start_server(
            bind, int(cfg.listen.rpartition(":")[2]), gossip=servicer,
            max_message_bytes=self.max_bytes, tls=self.tls, node=self.name,
        )  # fmt: skip
        self.advertise = cfg.advertise or f"{bind}:{self.port}"
        self.introductions.address = self.advertise
        self.membership = servicer.membership = MembershipNode(
            self.name, self.advertise, sc.gossip.membership, seed=sc.seed + self.index,
            incarnation=self.epoch, on_change=self._on_member_change,
            channel_factory=self.peers.channel, ceiling=self._incarnation_ceiling,
            key=self.key,
        )  # fmt: skip
        self.peer_list = self._peer_list()
        self.introducer = Introducer(
            self.peers, self.introductions, self.contacts,
            targets=lambda: {address: [self.index] for address in self.peer_list},
            every_s=INTRODUCE_EVERY_S, timeout_s=PUSH_TIMEOUT_S, recheck_s=REINTRODUCE_ALL_S,
            on_outcome=self._introduced, on_pass=self._after_introductions,
        )  # fmt: skip

    def _peer_list(self) -> list[str]:
        own = {self.advertise}
        listed = list(self.cfg.peers) + [p.address for p in self.sc.external_peers]
        return [a for a in dict.fromkeys(listed) if a not in own]

    def _reset_loop(self) -> None:
        self.stopping = False
        self._tick_of_step: dict[int, int] = {}
        self._predicted: dict[int, int] = {}  # step -> predicted class
        self._online: list[bool] = []
        self.last_ckpt: Document | None = None
        self._last_ckpt_t = time.monotonic()
        self._last_status_t = 0.0
        self._skewed: dict[str, str] = {}  # peers whose clock is too far from ours, this pass
        self._refused: dict[str, str] = {}  # peers that refused our key, this pass
        self._agreed: set[str] = set()  # peers that took our introduction

    # -- checkpoints -----------------------------------------------------------------------

    def _read_checkpoint(self) -> Checkpoint | None:
        if not self.ckpt_path.exists():
            return None

        # the weights, and the copies and deltas the gossip adds to them, must be finite
        finite = ("learner.pop.", "shadow.pop.", "gossip.xhat", "gossip.pending_values", "fed.")
        try:
            arrays, meta = checkpoint.load(self.ckpt_path, finite=finite)
            checkpoint_meta.check_node_meta(meta, self.ckpt_path)  # before anything reads it
        except CheckpointError as exc:
            raise NodeError(f"{exc}; move it away to start from a fresh model") from None
        if meta["agent"] != self.index:
            raise NodeError(
                f"{self.ckpt_path} belongs to agent {meta.get('agent')}, this node is agent "
                f"{self.index}; give each node its own state_dir"
            )
        return arrays, meta

    def _restore(self, arrays: dict[str, np.ndarray], meta: Document) -> None:
        from agents.learner import load_learner_state  # lazy: torch (see __init__)

        if meta["layout"] != self.layout:
            raise NodeError(
                f"{self.ckpt_path} holds a model of layout {meta['layout']}, the scenario builds "
                f"{self.layout}; move the checkpoint away to start from a fresh model"
            )

        def part(prefix: str) -> dict[str, np.ndarray]:
            return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}

        learners = {"learner": self.learner}
        if self.shadow is not None and meta.get("shadow") is not None:
            learners["shadow"] = self.shadow
        fed = self.federation is not None and "fed.version" in arrays
        restored = {*learners, "gossip", *(["fed"] if fed else [])}
        own, _ = self._checkpoint_arrays()  # what this node saves: the shapes its model has
        path = self.ckpt_path
        try:  # all of it checked before any of it is restored
            checkpoint_meta.check_node_arrays(
                arrays, {k: v for k, v in own.items() if k.split(".", 1)[0] in restored}, path,
                neighbours=self.neighbours,
            )  # fmt: skip
            for name, learner in learners.items():
                rng = as_doc(meta[name])["rng"]
                checkpoint_meta.check_rng(rng, learner.rng.bit_generator, f"{name}.rng", path)
        except CheckpointError as exc:
            raise NodeError(f"{exc}; move it away to start from a fresh model") from None
        for name, learner in learners.items():
            try:
                load_learner_state(learner, part(f"{name}."), dict(as_doc(meta[name])))
            except RuntimeError as exc:  # torch: e.g. a router generator state it refuses
                raise NodeError(
                    f"{path}: {name}: {str(exc).splitlines()[0]}; move it away to start from a "
                    "fresh model"
                ) from None
        gossip: dict[str, np.ndarray | JSON] = {**part("gossip.")}
        gossip["epoch"] = as_doc(meta["gossip"])["epoch"]  # its one scalar
        self.gossip.load_state(gossip, epoch=self.epoch)  # a new incarnation: peers take
        # its snapshots instead of refusing deltas that no longer follow what they hold
        if self.federation is not None and fed:
            self.federation.load_state(part("fed."))
        self.step, self.round = as_int(meta["step"]), as_int(meta["round"])
        self.resumed_from = {
            "checkpoint_step": self.step,
            "checkpoint_epoch": as_int(meta["epoch"]),
            "checkpoint_probe_acc": meta.get("probe_acc"),
            "checkpoint_saved_unix": meta["saved_unix"],
        }

    def _checkpoint_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        """Every array to save, by prefixed name, and the scalars beside them (the learners'
        as agents.learner.learner_state gives them, the gossip state's integers)."""
        from agents.learner import learner_state  # lazy: torch (see __init__)

        arrays, learner_scalars = learner_state(self.learner)
        out = {f"learner.{k}": v for k, v in arrays.items()}
        shadow_scalars: dict[str, object] | None = None
        if self.shadow is not None:
            shadow_arrays, shadow_scalars = learner_state(self.shadow)
            out.update({f"shadow.{k}": v for k, v in shadow_arrays.items()})
        gossip_scalars: dict[str, int] = {}
        for k, v in self.gossip.state().items():
            if isinstance(v, np.ndarray):
                out[f"gossip.{k}"] = v
            else:
                gossip_scalars[k] = v
        if self.federation is not None:
            out.update({f"fed.{k}": v for k, v in self.federation.state().items()})
        scalars: dict[str, object] = {
            "learner": learner_scalars,
            "shadow": shadow_scalars,
            "gossip": gossip_scalars,
        }
        return out, scalars

    def save_checkpoint(self) -> Document:
        arrays, scalars = self._checkpoint_arrays()
        probe_acc = self.local_accuracy().get("probe_acc")
        saved_unix = time.time()
        meta = {
            "agent": self.index,
            "epoch": self.epoch,
            "step": self.step,
            "round": self.round,
            "sensor_position": self.sensor.position,
            "layout": self.layout,
            "probe_acc": probe_acc,
            "saved_unix": saved_unix,
            **scalars,
        }
        size = checkpoint.save(self.ckpt_path, arrays, meta)
        self.last_ckpt = {
            "step": self.step,
            "round": self.round,
            "probe_acc": probe_acc,
            "saved_unix": saved_unix,
            "bytes": size,
        }
        self._last_ckpt_t = time.monotonic()
        return self.last_ckpt

    # -- network ---------------------------------------------------------------------------

    def _join(self, node: str, address: str) -> None:
        """Probe every peer met, the shards of a simulated run too (they answer pings but do
        not probe): when a run ends, its agents must leave this node's consensus step rather
        than pull it towards copies that no longer change."""
        m = self.membership
        if m is not None and node != self.name and not m.member(node):
            m.join(node, address)

    def _on_introduce(self, intro: gossip_pb2.Introduction) -> gossip_pb2.Introduction:
        """A peer introduced itself (the server side): check it, learn it, answer."""
        try:
            reply = self.introductions.answer(intro, [self.index])
        except DeltaRejected as exc:
            if exc.reason is Rejection.CLOCK_SKEW:
                print(
                    f"warning: refused an introduction: {exc.detail}", file=sys.stderr, flush=True
                )
            raise
        self.contacts.learn(intro.node, intro.address, intro.agents)
        self._warn_duplicates()
        return reply

    def _introduced(self, address: str, error: PeerError | None) -> None:
        """How one introduction of this node went (the Introducer's thread)."""
        if error is None:
            self._skewed.pop(address, None)
            self._agreed.add(address)
            self._warn_duplicates()
        elif isinstance(error, TlsHandshakeFailed):
            self._on_fatal(address, error)
        elif isinstance(error, ClockSkew):
            self._skewed[address] = error.reason
        elif isinstance(error, KeyMismatch):
            self._refused[address] = (
                f"{error}. The two nodes sign with different keys: give every node the "
                "swarm's key_file"
            )

    def _after_introductions(self) -> None:
        """After a pass: warn about peers that disagree; stop if every peer that answered
        disagrees with this node's clock or key (the fault is most likely here; one odd peer
        among good ones is only skipped)."""
        problems = {**self._skewed, **self._refused}
        for address, problem in problems.items():
            print(f"warning: not joining {address}: {problem}", file=sys.stderr, flush=True)
        self._warn_duplicates()
        if problems and not self._agreed:
            self.fatal = next(iter(problems.values()))
        self._skewed.clear()
        self._refused.clear()

    def _warn_duplicates(self) -> None:
        """Warn once per new set of nodes claiming one agent (server and introducer threads)."""
        for agent, where in self.duplicate_agents().items():
            with self._warn_lock:
                if self._warned_conflicts.get(agent) == where:
                    continue
                self._warned_conflicts[agent] = where
            print(
                f"warning: {agent} is run by more than one node (at {', '.join(where)}); "
                "give each node its own agent: pushes reach only one of them",
                file=sys.stderr,
                flush=True,
            )

    def duplicate_agents(self) -> dict[str, list[str]]:
        """Agents that more than one node claims: agent name -> the addresses claiming it
        ("this node" for this one). Seen in introductions (`Directory.conflicts`) and in SWIM
        news of another node under this node's name (`MembershipNode.impostors`)."""
        out = {agent_name(j): sorted(claims) for j, claims in self.directory.conflicts().items()}
        impostors = self.membership.impostors() if self.membership is not None else []
        if impostors:
            mine = set(out.get(self.name, [])) | {"this node", *impostors}
            out[self.name] = sorted(mine)
        return out

    def _on_fatal(self, address: str, exc: Exception) -> None:
        self.fatal = f"cannot join the swarm at {address}: {exc}"

    def _incarnation_ceiling(self) -> int:
        """The largest incarnation a SWIM message may carry now: a peer's first is its epoch (its
        wall clock in ms), so at most our clock plus the allowed skew, plus room for its
        refutations (protocols/membership.py, "Hostile news")."""
        skew_ms = self.cfg.max_clock_skew_s * 1000
        return int(time.time() * 1000 + skew_ms) + INCARNATION_ROOM

    def _on_member_change(self, member: Member, previous: State | None) -> None:
        if member.state == State.DEAD:
            self.dead_at.setdefault(member.node, time.time())
            self.contacts.lost(member.node)
        elif member.state == State.ALIVE:
            self.dead_at.pop(member.node, None)
            self.contacts.back(member.node)

    def share(self) -> None:
        if self.federation is not None:
            self.federation.share(self.x, self.learner.take_example_counts())
            self.round += 1
            return
        examples = self.learner.take_example_counts()
        msgs = self.codec.sign(self.gossip.make_deltas(self.x, self.round, examples))
        for address in sorted(self.directory.addresses(self.neighbours)):
            self.outboxes.add(address, msgs, self.round)
        self.gossip.apply(self.x)
        self.round += 1

    # -- the loop ----------------------------------------------------------------------------

    def local_accuracy(self) -> Document:
        from agents.learner import balanced_accuracy  # lazy: torch (see __init__)

        def recall(per_class: np.ndarray) -> Document:
            return {
                k: (None if np.isnan(v) else round(float(v), 4))
                for k, v in zip(self.classes, per_class[0], strict=True)
            }

        out: Document = {}
        if self.sensor.probe_set is not None:
            per_class = self.learner.evaluate(*self.sensor.probe_set)
            out["probe_acc"] = round(float(balanced_accuracy(per_class)[0]), 6)
            out["probe_recall"] = recall(per_class)
            if self.shadow is not None:
                iso = self.shadow.evaluate(*self.sensor.probe_set)
                out["probe_acc_isolated"] = round(float(balanced_accuracy(iso)[0]), 6)
                out["probe_recall_isolated"] = recall(iso)
        if self._online:
            out["online_acc"] = round(float(np.mean(self._online)), 4)
        return out

    def _labels(self, labels: np.ndarray) -> None:
        rows = []
        for tick, cls in labels.tolist():
            step = self._tick_of_step.get(tick)
            if step is None:
                continue  # that reading was hidden, never read, or left the history
            rows.append((0, step, cls))
            if step in self._predicted:
                self._online.append(self._predicted[step] == cls)
                del self._online[:-ONLINE_WINDOW]
        if rows:
            self.learner.add_labels(np.array(rows, np.int64))
            if self.shadow is not None:
                self.shadow.add_labels(np.array(rows, np.int64))

    def _process(self, obs: np.ndarray, tick: int, labels: np.ndarray) -> None:
        """One reading: act on it, take the labels that arrived, learn, share when due."""
        sc = self.sc
        step = self.step
        (pred,) = self.learner.act(step, obs[None])
        if self.shadow is not None:
            self.shadow.act(step, obs[None])
        self.sensor.feedback(int(pred))
        self._tick_of_step[tick] = step
        self._predicted[step] = int(pred)
        history = sc.learning.history + sc.learning.window
        while len(self._tick_of_step) > history:  # labels older than that are dropped anyway
            oldest = next(iter(self._tick_of_step))
            self._predicted.pop(self._tick_of_step.pop(oldest), None)
        self._labels(labels)
        if step > 0 and step % sc.learning.learn_every == 0:
            self.learner.learn_step()
            if self.shadow is not None:
                self.shadow.learn_step()
        self.step += 1
        if self.step % sc.gossip.interval == 0:
            self.share()

    def _start_exchange(self) -> None:
        if self.federation is not None:
            self.federation.start()
            return
        self.introducer.start()
        if self.membership is not None:
            self.membership.start()

    def run(self, ticks: int | None) -> Document:
        sc, cfg = self.sc, self.cfg
        limit = ticks or cfg.ticks or (sc.ticks if cfg.sensor.kind == "simulated" else None)
        self._start_exchange()
        processed = 0
        while not self.stopping and (limit is None or processed < limit):
            if self.fatal:
                raise NodeError(self.fatal)
            started = time.monotonic()
            reading = self.sensor.read()
            if reading is None:
                break
            self._process(reading.obs, reading.tick, reading.labels)
            processed += 1
            now = time.monotonic()
            if now - self._last_ckpt_t >= cfg.checkpoint_every_s:
                self.save_checkpoint()
            if now - self._last_status_t >= cfg.status_every_s:
                self.write_status()
            if cfg.tick_s > 0:
                time.sleep(max(0.0, cfg.tick_s - (time.monotonic() - started)))
        if self.fatal:
            raise NodeError(self.fatal)
        # A stop request (SIGTERM) during the readings leaves a short grace for the deltas in
        # flight; one during the linger ends it.
        stopped = self.stopping
        self.linger(min(cfg.linger_s, 2.0) if stopped else cfg.linger_s, interruptible=not stopped)
        self.save_checkpoint()
        self.write_status()
        return self.status()

    def _heard_everyone(self) -> bool:
        """Every graph neighbour known, and each live one heard up to our last round."""
        return all(
            self.directory.address_of(j) is not None
            and (
                self.gossip.received_from(agent_name(j)) >= self.round or not self.gossip.active(j)
            )
            for j in self.neighbours
        )

    def linger(self, timeout_s: float, interruptible: bool = True) -> None:
        """Deliver what is queued and take in the neighbours' last deltas."""
        deadline = time.monotonic() + timeout_s
        if self.federation is not None:
            self.federation.finish(self.x, deadline, lambda: interruptible and self.stopping)
            return
        while time.monotonic() < deadline and not (interruptible and self.stopping):
            self.gossip.apply(self.x, mix=False)  # take in what arrives; one step at the end
            if self.outboxes.pending() == 0 and self._heard_everyone():
                break
            if time.monotonic() - self._last_status_t >= self.cfg.status_every_s:
                self.write_status()
            time.sleep(0.05)
        self.gossip.apply(self.x)

    # -- status ------------------------------------------------------------------------------

    def status(self) -> Document:
        """What status.json holds (swarm/node_status.py)."""
        return status_of(self)

    def write_status(self) -> None:
        write_status(self.status(), self.state_dir)
        self._last_status_t = time.monotonic()

    def close(self) -> None:
        if self.federation is not None:
            self.federation.stop()
        self.introducer.stop()
        if self.membership is not None:
            self.membership.stop()
        self.outboxes.close()
        self.peers.close()
        self.server.stop(grace=1.0)
        self.sensor.close()


class Federation:
    """A node's exchange through a coordinator (protocols/coordinator.py: FederatedClient).

    Round v of the global model: the node submits its delta against version v, a sender
    thread fetches the round's aggregate (the coordinator closes a round when every agent
    submitted, or at its timeout with a quorum), and the next `share` applies it. Learning
    goes on meanwhile, so the node keeps what it learned after submitting: x <- g_new +
    (x - x_submitted), not a plain reset to the global model. A node that missed rounds
    (it was down, or late) is refused as stale and catches up by fetching the closed
    rounds' aggregates in order.

    Args:
        link: the calls to the coordinator (protocols.peering.CoordinatorLink).
        client: this node's side of the rounds, its agent's global model and error feedback.
        timeout_s: how long the first aggregate of a round may take (the coordinator's round
            timeout, and a push's).
    """

    def __init__(self, link: CoordinatorLink, client: FederatedClient, timeout_s: float):
        self.link, self.client, self.address = link, client, link.address
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        # (message, delta, x when it was made), waiting for the sender thread
        self._request: tuple[delta_pb2.KnowledgeDelta, Delta, np.ndarray] | None = None
        self._in_flight = False
        self._aggregates: list[Delta] = []  # fetched, to apply on the owner's thread
        self._submitted_x: np.ndarray | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="federation", daemon=True)
        self.submitted = self.stale = self.applied = 0
        self.last_exchange: float | None = None
        self.last_error = ""

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.timeout_s + 1)

    def share(self, x: np.ndarray, examples: np.ndarray) -> None:
        self._apply(x)
        with self._lock:
            if self._in_flight:
                return  # the previous round is still open: this round's learning waits
            (delta,) = self.client.make_deltas(x, self.client.version, examples)
            (msg,) = self.link.codec.sign([delta])
            self._request = (msg, delta, x.copy())
            self._in_flight = True
        self._wake.set()

    def _apply(self, x: np.ndarray) -> None:
        with self._lock:
            aggregates, self._aggregates = self._aggregates, []
            base = self._submitted_x
        if not aggregates:
            return
        drift = x - base if base is not None else np.zeros_like(x)
        for aggregate in aggregates:
            self.client.apply_aggregate(x, aggregate)  # x <- the new global model
            self.applied += 1
        x += drift  # what this node learned since it submitted

    def finish(self, x: np.ndarray, deadline: float, stop: Callable[[], bool]) -> None:
        """Before leaving: take the aggregate of the round in flight, if it comes in time."""
        while time.monotonic() < deadline and not stop():
            with self._lock:
                if not self._in_flight:
                    break
            time.sleep(0.05)
        self._apply(x)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            with self._lock:
                request, self._request = self._request, None
            if request is not None:
                self._exchange(*request)

    def _exchange(self, msg: delta_pb2.KnowledgeDelta, delta: Delta, x_then: np.ndarray) -> None:
        """Submit one round's delta, then fetch the aggregates that closed since."""
        version = int(msg.base_version)
        try:
            self.link.submit(version, [msg], PUSH_TIMEOUT_S)
            self.submitted += 1
        except Stale:
            self.stale += 1  # the round closed without us: catch up below
        except PeerError as exc:
            with self._lock:  # not delivered: keep it for the next round (error feedback)
                self.client.error[0] += delta.payload.decode()
            self._done(exc.describe())
            return
        fetched = self._fetch(version)
        with self._lock:
            self._aggregates.extend(fetched)
            self._submitted_x = x_then
        self._done("")

    def _fetch(self, version: int) -> list[Delta]:
        """Aggregates of rounds version, version + 1, ... that have closed (the first one waits
        up to the round timeout; the later ones only catch up)."""
        try:
            fetched = self.link.closed_aggregates(version, self.timeout_s, stop=self._stop.is_set)
        except PeerError as exc:  # e.g. the last round of a run: the others left before its
            self.last_error = exc.describe()  # quorum
            return []
        if fetched:
            self.last_error = ""
        return fetched

    def _done(self, error: str) -> None:
        with self._lock:
            self._in_flight = False
            if error:
                self.last_error = error
            else:
                self.last_exchange = time.time()

    def state(self) -> dict[str, np.ndarray]:
        return {
            "global_model": self.client.global_model.copy(),
            "error": self.client.error.copy(),
            "version": np.array(self.client.version, np.int64),
        }

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.client.global_model[:] = state["global_model"]
        self.client.error[:] = state["error"]
        self.client.version = int(state["version"])

    def status(self) -> Document:
        return {
            "address": self.address,
            "version": self.client.version,
            "submitted": self.submitted,
            "stale": self.stale,
            "aggregates_applied": self.applied,
            "last_exchange_unix": self.last_exchange,
            "last_error": self.last_error,
        }


# -- entry point -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swarm-node", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--config", type=Path, required=True, help="node config YAML file")
    parser.add_argument("--status", action="store_true", help="show what the node is doing")
    parser.add_argument("--ticks", type=int, help="readings to process (overrides the config)")
    return parser


def _start(cfg: NodeConfig, base: Path) -> Node:
    """The node of this config, or exit 2 with the reason on stderr."""
    try:
        return Node(cfg, base)
    except (ScenarioError, NodeError, SensorError, TlsError, CheckpointError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
    except RuntimeError as exc:  # gRPC: "Failed to bind to address ..."
        print(f"error: cannot listen on {cfg.listen}: {exc}", file=sys.stderr)
    except ValueError as exc:  # a checkpoint whose arrays do not fit this model
        print(f"error: cannot resume from the checkpoint: {exc}", file=sys.stderr)
    sys.exit(2)


def _serve(node: Node, ticks: int | None) -> int:
    """Run the node to its end; the exit status (3: it stopped on an error)."""
    try:
        status = node.run(ticks)
        print(json.dumps(status), flush=True)
        return 0
    except NodeError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        node.error = str(exc)
        # best effort: the error is printed already; a disk or checkpoint failure here too
        with contextlib.suppress(OSError, RuntimeError, ValueError):
            node.save_checkpoint()
            node.write_status()
        return 3
    finally:
        # Saved and reported: a SIGTERM from now on (a supervisor stopping a node that is
        # already leaving) has nothing left to save, and must not kill the interpreter
        # while it shuts down (Python restores the default handler at finalization).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        node.close()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_node_config(args.config)
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    base = args.config.resolve().parent
    if args.status:
        sys.exit(show_status(cfg, base))
    node = _start(cfg, base)

    def stop(signum: int, frame: FrameType | None) -> None:
        node.stopping = True  # the reading in flight is finished, then the node saves and exits

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    start: Document = {"node": node.name, "listening": node.advertise, "epoch": node.epoch}
    # the accuracy the node starts with: a fresh model's, or the resumed checkpoint's
    start["probe_acc"] = node.local_accuracy().get("probe_acc")
    if node.resumed_from is not None:
        start["resumed_from"] = node.resumed_from
    print(json.dumps(start), flush=True)
    sys.exit(_serve(node, args.ticks))


if __name__ == "__main__":
    main()
