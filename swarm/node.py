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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from protocols.config import TlsConfig
from swarm._config import Section
from swarm.addresses import host_of, is_loopback
from swarm.scenario import ScenarioError, load_scenario, parse_yaml_model
from swarm.sensors import SensorConfig, SensorError

#: Seconds one push may take before it is retried (the outbox keeps the delta).
PUSH_TIMEOUT_S = 2.0
#: How often a node re-introduces itself to peers whose agents it does not know yet.
INTRODUCE_EVERY_S = 1.0
#: A development key for loopback-only swarms; refused anywhere else.
DEV_KEY = b"yan-swarm-dev-key"
#: Prequential accuracy window: the last this many labelled readings.
ONLINE_WINDOW = 200


class NodeConfig(Section):
    """One device node (`swarm-node --config node.yaml`)."""

    scenario: str
    """Scenario file (relative to this file) that fixes the model, learning, gossip settings
    and graph; every node of a swarm uses the same one."""
    agent: int = Field(ge=0)
    """This node's agent index in the scenario's graph."""
    listen: str = "127.0.0.1:0"
    """HOST:PORT of this node's gRPC server (port 0: any free port)."""
    advertise: str | None = None
    """HOST:PORT peers use to reach this node (default: `listen`, with the bound port)."""
    peers: list[str] = []
    """Addresses (HOST:PORT) of peers to introduce this node to; the scenario's
    external_peers are added."""
    coordinator: str | None = None
    """HOST:PORT of a coordinator (`swarm coordinator`): exchange through it instead of
    gossiping with peers; the scenario's gossip.topology must be coordinator."""
    key_file: str | None = None
    """HMAC key shared by the swarm (32+ bytes). Required off loopback."""
    tls: TlsConfig | None = None
    """Transport security (default: the scenario's gossip.tls). Off loopback: mtls required."""
    insecure: bool = False
    """Allow plaintext and the development key off loopback (a lab network, never a field)."""
    state_dir: str | None = None
    """Where checkpoints and status.json go (default: .swarm-node/agent-N beside this file)."""
    checkpoint_every_s: float = Field(30.0, gt=0)
    """Wall seconds between two checkpoints (one is also written on SIGTERM and at the end)."""
    resume: bool = True
    """Resume from the checkpoint in state_dir when there is one."""
    sensor: SensorConfig = SensorConfig()
    shadow: bool = False
    """Also train an isolated twin of this agent on exactly the same readings, never sharing,
    and report its accuracy beside the sharing model's: what the swarm gave this device."""
    ticks: int | None = Field(None, ge=1)
    """Readings to process (default: the scenario's ticks for the simulated sensor, the whole
    stream for a file or stdin)."""
    tick_s: float = Field(0.0, ge=0)
    """Wall seconds per reading (0: as fast as possible; a real sensor paces itself)."""
    linger_s: float = Field(10.0, ge=0)
    """After the last reading, keep serving up to this long for the peers' last deltas."""
    max_clock_skew_s: float = Field(30.0, gt=0)
    """Largest difference between this node's wall clock and a peer's that is accepted."""
    status_every_s: float = Field(1.0, gt=0)
    """Wall seconds between two rewrites of status.json."""


def load_node_config(path: Path | str) -> NodeConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read the node config: {exc.strerror}") from None
    return parse_yaml_model(text, NodeConfig, path, "node config")


def state_dir(cfg: NodeConfig, base: Path) -> Path:
    """Where a node keeps epoch.json, its checkpoint and status.json (relative to `base`, the
    config file's directory)."""
    path = Path(cfg.state_dir) if cfg.state_dir else Path(".swarm-node") / f"agent-{cfg.agent}"
    return path if path.is_absolute() else base / path


def _resolve_tls(tls: TlsConfig | None, base: Path) -> TlsConfig | None:
    """The node config's TLS section with cert_dir relative to the config file."""
    if tls is None or not tls.cert_dir or Path(tls.cert_dir).is_absolute():
        return tls
    return tls.model_copy(update={"cert_dir": str(base / tls.cert_dir)})


class NodeError(RuntimeError):
    """A node that cannot start or go on; the message tells the operator what to do."""


class Node:
    """One agent with its sensor, learner, gossip state, gRPC server and checkpoints."""

    def __init__(self, cfg: NodeConfig, base: Path):
        import torch

        from agents.learner import OnlineLearner
        from protocols import wire
        from protocols.delta import layout_fingerprint
        from protocols.gossip import ChocoGossip, agent_name
        from protocols.outbox import Outboxes
        from protocols.topology import build_graph, metropolis_weights
        from protocols.transport import Peers, TrafficCounters
        from swarm.sensors import open_sensor

        torch.set_num_threads(1)
        self.cfg, self.base = cfg, base
        scenario_path = Path(cfg.scenario)
        if not scenario_path.is_absolute():
            scenario_path = base / scenario_path
        sc = self.sc = load_scenario(scenario_path)
        self.n_agents = sc.total_agents
        if cfg.agent >= self.n_agents:
            raise NodeError(
                f"agent {cfg.agent}: the scenario's graph has agents 0..{self.n_agents - 1}"
            )
        self.index, self.name = cfg.agent, agent_name(cfg.agent)
        self.tls = _resolve_tls(cfg.tls, base) or sc.gossip.tls
        self.key = self._key()
        self._check_address()
        self._check_security()
        self.state_dir = state_dir(cfg, base)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.ckpt_path = self.state_dir / "checkpoint.npz"
        self.epoch = self._next_epoch()

        checkpoint = self._read_checkpoint() if cfg.resume else None
        skip = int(checkpoint[1]["sensor_position"]) if checkpoint else 0
        self.sensor = open_sensor(
            cfg.sensor,
            world_cfg=sc.world,
            n_agents=self.n_agents,
            index=self.index,
            seed=sc.seed,
            window=sc.learning.window,
            probe_per_class=sc.metrics.probe_per_class,
            skip=skip if cfg.sensor.kind == "file" else 0,
            base=base,
        )
        self.classes = self.sensor.classes
        self.learner = OnlineLearner(
            sc.model, sc.learning, 1, self.sensor.input, len(self.classes), seed=sc.seed
        )
        self.shadow = (
            OnlineLearner(
                sc.model, sc.learning, 1, self.sensor.input, len(self.classes), seed=sc.seed
            )
            if cfg.shadow
            else None
        )
        population = self.learner.population
        self.x = population.flat.data.numpy()  # (1, P), shares memory with the model
        self.layout = layout_fingerprint(population.specs)
        self.num_params = population.num_params
        graph = build_graph(sc.gossip.graph, self.n_agents, sc.seed)
        self.gossip = ChocoGossip(
            local=[self.index],
            weights=metropolis_weights(graph),
            x0=self.x[0].copy(),
            gamma=sc.gossip.gamma,
            compression=sc.gossip.compression,
            layout=self.layout,
            owner=agent_name,
            epoch=self.epoch,
        )
        self.neighbours = [j for j, _ in self.gossip.neighbours[0]]
        for j in self.neighbours:
            # Out of the consensus step until its node introduces itself: a copy nobody
            # updates would pull this model back towards the initial weights.
            self.gossip.set_active(j, False)
        self.federation: Federation | None = None
        if cfg.coordinator:
            if sc.gossip.topology != "coordinator":
                raise NodeError(
                    f"coordinator {cfg.coordinator}: the scenario's gossip.topology is "
                    f"{sc.gossip.topology!r}; set it to coordinator (the service checks it too)"
                )
            self.federation = Federation(self, cfg.coordinator)
        self.step = self.round = 0
        self.started = time.time()
        self.resumed_from: dict[str, Any] | None = None
        if checkpoint is not None:
            self._restore(*checkpoint)

        self.counters = TrafficCounters()
        self.max_bytes = int(sc.gossip.max_message_mb * 2**20)
        self.peers = Peers(self.max_bytes, self.counters, tls=self.tls, node=self.name)
        self._wire = wire
        self.fatal: str | None = None
        self.error: str | None = None  # why the node stopped, when it failed
        self.outboxes = Outboxes(
            self.peers.push,
            lambda r, msgs: wire.pack(self.name, r, msgs, self.max_bytes, self.key),
            self._snapshots,
            timeout_s=PUSH_TIMEOUT_S,
            on_fatal=self._on_fatal,
        )
        self._lock = threading.Lock()
        self.address_of: dict[int, str] = {}  # agent -> address of the node hosting it
        self.node_at: dict[str, str] = {}  # address -> node name
        self.dead_at: dict[str, float] = {}  # node -> wall time it was declared dead
        self._start_server()
        self.peer_list = self._peer_list()
        self.stopping = False
        self._tick_of_step: dict[int, int] = {}
        self._predicted: dict[int, int] = {}  # step -> predicted class
        self._online: list[bool] = []
        self.last_ckpt: dict[str, Any] | None = None
        self._last_ckpt_t = time.monotonic()
        self._last_status_t = 0.0
        self._skewed: dict[str, str] = {}  # peers whose clock is too far from ours, this pass
        self._refused: dict[str, str] = {}  # peers that refused our key, this pass
        self._agreed: set[str] = set()  # peers that took our introduction
        self._intro_stop = threading.Event()
        self._intro_thread = threading.Thread(target=self._introducer, daemon=True)

    # -- configuration checks ---------------------------------------------------------------

    def _key(self) -> bytes:
        # the node's own key_file, else the scenario's (resolved against the scenario's file)
        name = self.cfg.key_file or self.sc.gossip.key_file
        if not name:
            return DEV_KEY
        path = Path(name)
        if not path.is_absolute():
            path = self.base / path
        try:
            key = path.read_bytes()
        except OSError as exc:
            raise NodeError(f"key_file {path}: {exc.strerror}") from None
        if len(key) < 32:
            raise NodeError(f"key_file {path}: {len(key)} bytes; the key needs 32 or more")
        return key

    def _check_address(self) -> None:
        if host_of(self.cfg.listen) in ("0.0.0.0", "::") and not self.cfg.advertise:
            raise NodeError(
                f"listen {self.cfg.listen} is every interface: set advertise: HOST:PORT, the "
                "address peers reach this node at (its certificate must name HOST)"
            )

    def _check_security(self) -> None:
        addresses = [
            self.cfg.listen,
            *self.cfg.peers,
            *(p.address for p in self.sc.external_peers),
            *([self.cfg.coordinator] if self.cfg.coordinator else []),
        ]
        remote = [a for a in addresses if not is_loopback(a)]
        if not remote or self.cfg.insecure:
            return
        problems = []
        if self.tls.mode != "mtls":
            problems.append(
                f"tls.mode is {self.tls.mode!r}: set tls: {{mode: mtls, cert_dir: DIR}} with "
                f"certificates from `swarm certs DIR --node {self.name} ...`"
            )
        if self.key == DEV_KEY:
            problems.append("no key_file: give the swarm's shared HMAC key (32+ random bytes)")
        if problems:
            raise NodeError(
                f"{remote[0]} is not a loopback address, so this node would be on a network: "
                + "; ".join(problems)
                + " (or set insecure: true on a lab network you trust)"
            )

    def _next_epoch(self) -> int:
        """This start's epoch: the wall clock in ms, and more than any earlier start of this
        node, persisted before anything is sent. Peers then take this incarnation's snapshots
        even if it crashes before its first checkpoint, or its state directory was wiped (the
        clock has moved on: synchronised clocks are a condition of joining anyway)."""
        path = self.state_dir / "epoch.json"
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
        tmp.write_text(json.dumps({"epoch": epoch}))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return epoch

    def _peer_list(self) -> list[str]:
        own = {self.advertise}
        listed = list(self.cfg.peers) + [p.address for p in self.sc.external_peers]
        return [a for a in dict.fromkeys(listed) if a not in own]

    # -- checkpoints -----------------------------------------------------------------------

    def _read_checkpoint(self) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        from swarm import checkpoint

        if not self.ckpt_path.exists():
            return None
        try:
            arrays, meta = checkpoint.load(self.ckpt_path)
        except checkpoint.CheckpointError as exc:
            raise NodeError(f"{exc}; move it away to start from a fresh model") from None
        if meta.get("agent") != self.index:
            raise NodeError(
                f"{self.ckpt_path} belongs to agent {meta.get('agent')}, this node is agent "
                f"{self.index}; give each node its own state_dir"
            )
        return arrays, meta

    def _restore(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        from agents.learner import load_learner_state

        if meta["layout"] != self.layout:
            raise NodeError(
                f"{self.ckpt_path} holds a model of layout {meta['layout']}, the scenario builds "
                f"{self.layout}; move the checkpoint away to start from a fresh model"
            )
        learner = {k[8:]: v for k, v in arrays.items() if k.startswith("learner.")}
        load_learner_state(self.learner, learner, meta["learner"])
        if self.shadow is not None and meta.get("shadow") is not None:
            shadow = {k[7:]: v for k, v in arrays.items() if k.startswith("shadow.")}
            load_learner_state(self.shadow, shadow, meta["shadow"])
        gossip = {k[7:]: v for k, v in arrays.items() if k.startswith("gossip.")}
        gossip.update(meta["gossip"])
        self.gossip.load_state(gossip, epoch=self.epoch)  # a new incarnation: peers take
        # its snapshots instead of refusing deltas that no longer follow what they hold
        if self.federation is not None and "fed.version" in arrays:
            self.federation.load_state(
                {k[4:]: v for k, v in arrays.items() if k.startswith("fed.")}
            )
        self.step, self.round = int(meta["step"]), int(meta["round"])
        self.resumed_from = {
            "checkpoint_step": self.step,
            "checkpoint_epoch": int(meta["epoch"]),
            "checkpoint_probe_acc": meta.get("probe_acc"),
            "checkpoint_saved_unix": meta["saved_unix"],
        }

    def save_checkpoint(self) -> dict[str, Any]:
        from agents.learner import learner_state
        from swarm import checkpoint

        arrays, learner_scalars = learner_state(self.learner)
        out = {f"learner.{k}": v for k, v in arrays.items()}
        shadow_scalars = None
        if self.shadow is not None:
            shadow_arrays, shadow_scalars = learner_state(self.shadow)
            out.update({f"shadow.{k}": v for k, v in shadow_arrays.items()})
        gossip_arrays, gossip_scalars = {}, {}
        for k, v in self.gossip.state().items():
            if isinstance(v, np.ndarray):
                gossip_arrays[f"gossip.{k}"] = v
            else:
                gossip_scalars[k] = v
        out.update(gossip_arrays)
        if self.federation is not None:
            out.update({f"fed.{k}": v for k, v in self.federation.state().items()})
        acc = self.local_accuracy()
        meta = {
            "agent": self.index,
            "epoch": self.epoch,
            "step": self.step,
            "round": self.round,
            "sensor_position": self.sensor.position,
            "layout": self.layout,
            "probe_acc": acc.get("probe_acc"),
            "saved_unix": time.time(),
            "learner": learner_scalars,
            "shadow": shadow_scalars,
            "gossip": gossip_scalars,
        }
        size = checkpoint.save(self.ckpt_path, out, meta)
        self.last_ckpt = {
            "step": self.step,
            "round": self.round,
            "probe_acc": meta["probe_acc"],
            "saved_unix": meta["saved_unix"],
            "bytes": size,
        }
        self._last_ckpt_t = time.monotonic()
        return self.last_ckpt

    # -- network ---------------------------------------------------------------------------

    def _start_server(self) -> None:
        from protocols.membership_net import MembershipNode
        from protocols.transport import GossipServicer, start_server

        sc = self.sc
        decode = self._wire.make_decoder(self.key, self.num_params, self.layout)
        # The membership handler must exist before the server answers pings; its address is
        # set once the port is bound.
        self.membership: MembershipNode | None = None
        servicer = GossipServicer(
            self.name,
            decode,
            self.gossip.receive,
            self.counters,
            membership=None,
            introduce=self._on_introduce,
        )
        host = host_of(self.cfg.listen)
        port = int(self.cfg.listen.rpartition(":")[2])
        bind = f"[{host}]" if ":" in host else host
        self.server, self.port = start_server(
            bind,
            port,
            gossip=servicer,
            max_message_bytes=self.max_bytes,
            tls=self.tls,
            node=self.name,
        )
        if self.cfg.advertise:
            self.advertise = self.cfg.advertise
        else:
            self.advertise = f"{bind}:{self.port}"
        self.membership = MembershipNode(
            self.name,
            self.advertise,
            sc.gossip.membership,
            seed=sc.seed + self.index,
            incarnation=self.epoch,
            on_change=self._on_member_change,
            channel_factory=self.peers.channel,
        )
        servicer.membership = self.membership

    def _introduction(self) -> Any:
        return self._wire.introduction(
            self.name, self.advertise, [self.index], membership=True, key=self.key
        )

    def _skew(self, peer_unix_ms: int, who: str) -> str | None:
        skew = peer_unix_ms / 1000 - time.time()
        if abs(skew) <= self.cfg.max_clock_skew_s:
            return None
        return (
            f"clock skew with {who}: its clock is {skew:+.1f} s from this node's "
            f"({time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC here), more than "
            f"max_clock_skew_s {self.cfg.max_clock_skew_s:g}; set both clocks (NTP, chrony, or "
            f"an RTC) before joining: devices without a real-time clock start in 1970"
        )

    def _learn_peer(self, intro: Any) -> None:
        with self._lock:
            new = intro.address not in self.node_at
            self.node_at[intro.address] = intro.node
            for j in intro.agents:
                self.address_of[int(j)] = intro.address
        if new and self.round > 0 and any(int(j) in self.neighbours for j in intro.agents):
            # Deltas made before we knew where this peer was never went to it: start the
            # link with a snapshot rather than a delta it would refuse as out of step.
            self.outboxes.resync(intro.address)
        # Every peer is probed, the shards of a simulated run too (they answer pings but do
        # not probe): when a run ends, its agents must leave this node's consensus step
        # rather than pull it towards copies that no longer change.
        m = self.membership
        if m is not None and intro.node != self.name and not m.member(intro.node):
            m.join(intro.node, intro.address)
        for j in intro.agents:
            if int(j) in self.neighbours and not self.gossip.active(int(j)):
                self.gossip.set_active(int(j), True)
        stats = self.outboxes.stats().get(intro.address)
        if stats is not None and stats.forgotten:
            self.outboxes.revive(intro.address)

    def _on_introduce(self, intro: Any) -> Any:
        from protocols.delta import DeltaRejected, Rejection

        self._wire.check_introduction(intro, self.key)
        problem = self._skew(int(intro.unix_ms), f"{intro.node} at {intro.address}")
        if problem:
            print(f"warning: refused an introduction: {problem}", file=sys.stderr, flush=True)
            raise DeltaRejected(Rejection.CLOCK_SKEW, problem)
        self._learn_peer(intro)
        return self._introduction()

    def _introduce(self, address: str) -> bool:
        import grpc

        from protocols.tls import TlsHandshakeFailed

        try:
            reply = self.peers.introduce(address, self._introduction(), PUSH_TIMEOUT_S)
        except TlsHandshakeFailed as exc:
            self._on_fatal(address, exc)
            return False
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and "clock" in str(exc.details()):
                self._skewed[address] = str(exc.details())
            elif exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                self._refused[address] = (
                    f"{address} refused this node's introduction: {exc.details()}. The two "
                    "nodes sign with different keys: give every node the swarm's key_file"
                )
            return False
        try:
            self._wire.check_introduction(reply, self.key)
        except Exception as exc:  # noqa: BLE001 - any failed check: not a peer of this swarm
            self._refused[address] = (
                f"{address} answered with an introduction that does not verify: {exc}. The two "
                "nodes sign with different keys: give every node the swarm's key_file"
            )
            return False
        problem = self._skew(int(reply.unix_ms), f"{reply.node} at {address}")
        if problem:
            self._skewed[address] = problem
            return False
        self._skewed.pop(address, None)
        self._agreed.add(address)
        self._learn_peer(reply)
        return True

    def _introducer(self) -> None:
        """Introduce this node to every listed peer until each answered, then re-check
        every few seconds (a peer that restarted learns this node's address again)."""
        done: set[str] = set()
        last_full = time.monotonic()
        while not self._intro_stop.is_set():
            for address in self.peer_list:
                if address not in done and self._introduce(address):
                    done.add(address)
            problems = {**self._skewed, **self._refused}
            for address, problem in problems.items():
                print(f"warning: not joining {address}: {problem}", file=sys.stderr, flush=True)
            if problems and not self._agreed:
                # Every peer that answered disagrees with this node's clock or key: the fault
                # is most likely here (one odd peer among good ones is only skipped).
                self.fatal = next(iter(problems.values()))
            self._skewed.clear()
            self._refused.clear()
            if time.monotonic() - last_full > 10 * INTRODUCE_EVERY_S:
                done.clear()
                last_full = time.monotonic()
            self._intro_stop.wait(INTRODUCE_EVERY_S)

    def _on_fatal(self, address: str, exc: Exception) -> None:
        self.fatal = f"cannot join the swarm at {address}: {exc}"

    def _on_member_change(self, member: Any, previous: Any) -> None:
        from protocols.membership import State

        addresses = [a for a, n in self.node_at.items() if n == member.node]
        agents = [j for j, a in self.address_of.items() if a in addresses]
        if member.state == State.DEAD:
            self.dead_at.setdefault(member.node, time.time())
            for a in addresses:
                self.outboxes.forget(a)
            for j in agents:
                if j in self.neighbours:
                    self.gossip.set_active(j, False)
        elif member.state == State.ALIVE:
            self.dead_at.pop(member.node, None)
            for j in agents:
                if j in self.neighbours:
                    self.gossip.set_active(j, True)
            links = self.outboxes.stats()
            for a in addresses:  # declared dead before (perhaps via a later suspicion)
                if a in links and links[a].forgotten:
                    self.outboxes.revive(a)

    def _snapshots(self, round_: int, address: str) -> list[Any]:
        return [self._wire.to_proto(d, self.key) for d in self.gossip.make_snapshots(round_)]

    def share(self) -> None:
        if self.federation is not None:
            self.federation.share(self.x, self.learner.take_example_counts())
            self.round += 1
            return
        examples = self.learner.take_example_counts()
        (delta,) = self.gossip.make_deltas(self.x, self.round, examples)
        msg = self._wire.to_proto(delta, self.key)
        with self._lock:
            addresses = {self.address_of[j] for j in self.neighbours if j in self.address_of}
        for address in sorted(addresses):
            self.outboxes.add(address, [msg], self.round)
        self.gossip.apply(self.x)
        self.round += 1

    # -- the loop ----------------------------------------------------------------------------

    def local_accuracy(self) -> dict[str, Any]:
        from agents.learner import balanced_accuracy

        out: dict[str, Any] = {}
        if self.sensor.probe_set is not None:
            per_class = self.learner.evaluate(*self.sensor.probe_set)
            out["probe_acc"] = round(float(balanced_accuracy(per_class)[0]), 6)
            out["probe_recall"] = {
                k: (None if np.isnan(v) else round(float(v), 4))
                for k, v in zip(self.classes, per_class[0], strict=True)
            }
            if self.shadow is not None:
                iso = self.shadow.evaluate(*self.sensor.probe_set)
                out["probe_acc_isolated"] = round(float(balanced_accuracy(iso)[0]), 6)
                out["probe_recall_isolated"] = {
                    k: (None if np.isnan(v) else round(float(v), 4))
                    for k, v in zip(self.classes, iso[0], strict=True)
                }
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

    def run(self, ticks: int | None) -> dict[str, Any]:
        sc, cfg = self.sc, self.cfg
        limit = ticks or cfg.ticks or (sc.ticks if cfg.sensor.kind == "simulated" else None)
        history = sc.learning.history + sc.learning.window
        if self.federation is not None:
            self.federation.start()
        else:
            self._intro_thread.start()
        if self.membership is not None and self.federation is None:
            self.membership.start()
        processed = 0
        while not self.stopping and (limit is None or processed < limit):
            if self.fatal:
                raise NodeError(self.fatal)
            started = time.monotonic()
            reading = self.sensor.read()
            if reading is None:
                break
            step = self.step
            (pred,) = self.learner.act(step, reading.obs[None])
            if self.shadow is not None:
                self.shadow.act(step, reading.obs[None])
            self.sensor.feedback(int(pred))
            self._tick_of_step[reading.tick] = step
            self._predicted[step] = int(pred)
            while len(self._tick_of_step) > history:  # labels older than that are dropped anyway
                oldest = next(iter(self._tick_of_step))
                self._predicted.pop(self._tick_of_step.pop(oldest), None)
            self._labels(reading.labels)
            if step > 0 and step % sc.learning.learn_every == 0:
                self.learner.learn_step()
                if self.shadow is not None:
                    self.shadow.learn_step()
            self.step += 1
            processed += 1
            if self.step % sc.gossip.interval == 0:
                self.share()
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

    def linger(self, timeout_s: float, interruptible: bool = True) -> None:
        """Deliver what is queued and take in the neighbours' last deltas."""
        deadline = time.monotonic() + timeout_s
        if self.federation is not None:
            self.federation.finish(self.x, deadline, lambda: interruptible and self.stopping)
            return
        while time.monotonic() < deadline and not (interruptible and self.stopping):
            self.gossip.apply(self.x, mix=False)  # take in what arrives; one step at the end
            sent = self.outboxes.pending() == 0
            # every graph neighbour known, and each live one heard up to our last round
            heard = all(
                j in self.address_of
                and (
                    self.gossip.received_from(f"agent-{j}") >= self.round
                    or not self.gossip.active(j)
                )
                for j in self.neighbours
            )
            if sent and heard:
                break
            if time.monotonic() - self._last_status_t >= self.cfg.status_every_s:
                self.write_status()
            time.sleep(0.05)
        self.gossip.apply(self.x)

    # -- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        members = {}
        if self.membership is not None:
            for m in self.membership.members():
                if m.node == self.name:
                    continue
                members[m.node] = {
                    "state": m.state.name.lower(),
                    "incarnation": m.incarnation,
                    "dead_at_unix": self.dead_at.get(m.node),
                }
        links = self.outboxes.stats()
        peers = []
        with self._lock:
            known = dict(self.node_at)
            hosted: dict[str, list[int]] = {}
            for j, a in self.address_of.items():
                hosted.setdefault(a, []).append(j)
        for address in sorted(set(known) | set(self.peer_list) | set(links)):
            link = links.get(address)
            node = known.get(address)
            peers.append(
                {
                    "address": address,
                    "node": node,
                    "agents": sorted(hosted.get(address, [])),
                    "state": members.get(node, {}).get("state") if node else None,
                    "last_exchange_unix": link.last_ok if link else None,
                    "delivered": link.delivered if link else 0,
                    "failures": link.failures if link else 0,
                    "resyncs": link.resyncs if link else 0,
                    "queued": self.outboxes.pending(address) if link else 0,
                    "last_error": link.last_error if link else "",
                    "last_refusal": link.last_refusal if link else "",
                }
            )
        return {
            "node": self.name,
            "address": self.advertise,
            "pid": os.getpid(),
            "epoch": self.epoch,
            "updated_unix": time.time(),
            "started_unix": self.started,
            "step": self.step,
            "rounds": self.round,
            "neighbours": self.neighbours,
            "sensor": {
                "kind": self.cfg.sensor.kind,
                "position": self.sensor.position,
                "bad_lines": self.sensor.bad_lines,
                "hide_kinds": self.cfg.sensor.hide_kinds,
            },
            **self.local_accuracy(),
            "labels_dropped": self.learner.labels_dropped,
            # labelled windows this node's own sensor gave it, per class (its replay's intake)
            "labels_seen": dict(
                zip(self.classes, self.learner.replay.seen.sum(0).tolist(), strict=True)
            ),
            "peers": peers,
            "members": members,
            "checkpoint": self.last_ckpt,
            "resumed_from": self.resumed_from,
            "error": self.error,
            "duplicates": self.gossip.duplicates,
            "coordinator": self.federation.status() if self.federation is not None else None,
            **self.counters.snapshot(),
        }

    def write_status(self) -> None:
        status = self.status()
        tmp = self.state_dir / ".status.json.tmp"
        tmp.write_text(json.dumps(status, indent=1))
        os.replace(tmp, self.state_dir / "status.json")
        self._last_status_t = time.monotonic()

    def close(self) -> None:
        if self.federation is not None:
            self.federation.stop()
        self._intro_stop.set()
        if self._intro_thread.is_alive():
            self._intro_thread.join(timeout=PUSH_TIMEOUT_S + 1)
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
    """

    def __init__(self, node: Node, address: str):
        from protocols.coordinator import FederatedClient

        self.node, self.address = node, address
        self.client = FederatedClient(
            local=[node.index],
            x0=node.x[0].copy(),
            compression=node.sc.gossip.compression,
            layout=node.layout,
        )
        self.timeout_s = node.sc.gossip.coordinator.round_timeout_s + PUSH_TIMEOUT_S
        self._lock = threading.Lock()
        self._request: tuple[Any, Any, np.ndarray] | None = None  # (message, delta, x then)
        self._in_flight = False
        self._aggregates: list[Any] = []  # fetched, to apply on the owner's thread
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
        self._thread.join(timeout=self.timeout_s + 1)

    def share(self, x: np.ndarray, examples: np.ndarray) -> None:
        self._apply(x)
        with self._lock:
            if self._in_flight:
                return  # the previous round is still open: this round's learning waits
            (delta,) = self.client.make_deltas(x, self.client.version, examples)
            self._request = (self.node._wire.to_proto(delta, self.node.key), delta, x.copy())
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

    def finish(self, x: np.ndarray, deadline: float, stop: Any) -> None:
        """Before leaving: take the aggregate of the round in flight, if it comes in time."""
        while time.monotonic() < deadline and not stop():
            with self._lock:
                if not self._in_flight:
                    break
            time.sleep(0.05)
        self._apply(x)

    def _run(self) -> None:
        import grpc

        wire, peers = self.node._wire, self.node.peers
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            with self._lock:
                request, self._request = self._request, None
            if request is None:
                continue
            msg, delta, x_submitted = request
            version = int(msg.base_version)
            batch = wire.pack(self.node.name, version, [msg], self.node.max_bytes, self.node.key)
            try:
                for b in batch:
                    peers.submit(self.address, b, PUSH_TIMEOUT_S)
                self.submitted += 1
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    with self._lock:  # not delivered: keep it for the next round (error
                        self.client.error[0] += delta.payload.decode()  # feedback)
                    self._done(f"{exc.code().name}: {exc.details()}")
                    continue
                self.stale += 1  # the round closed without us: catch up below
            fetched = self._fetch(version)
            with self._lock:
                self._aggregates.extend(fetched)
                self._submitted_x = x_submitted
            self._done("")

    def _fetch(self, version: int) -> list[Any]:
        """Aggregates of rounds version, version + 1, ... that have closed (the first one waits
        up to the round timeout; the later ones only catch up)."""
        import grpc

        out: list[Any] = []
        wait = self.timeout_s
        while not self._stop.is_set():
            try:
                reply = self.node.peers.get_aggregate(self.address, self.node.name, version, wait)
            except grpc.RpcError as exc:
                if not out:  # e.g. the last round of a run: the others left before its quorum
                    self.last_error = f"{exc.code().name}: {exc.details()}"
                break
            self.last_error = ""
            out.append(
                self.node._wire.from_proto(
                    reply.aggregate, key=self.node.key, num_params=self.node.num_params,
                    layout=self.node.layout,
                )
            )  # fmt: skip
            version += 1
            wait = 0.5  # a later round that has closed already answers at once
        return out

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

    def status(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "version": self.client.version,
            "submitted": self.submitted,
            "stale": self.stale,
            "aggregates_applied": self.applied,
            "last_exchange_unix": self.last_exchange,
            "last_error": self.last_error,
        }


# -- `--status` ------------------------------------------------------------------------------


def _ago(t: float | None) -> str:
    if t is None:
        return "never"
    return f"{max(0.0, time.time() - t):.1f} s ago"


def show_status(cfg: NodeConfig, base: Path) -> int:
    """Print what the node of this config is doing: its status file plus a live health check."""
    from protocols.gossip import agent_name

    name = agent_name(cfg.agent)
    path = state_dir(cfg, base) / "status.json"
    try:
        st = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"{name}: no status at {path} ({exc}); has this node run?", file=sys.stderr)
        return 1
    tls = _resolve_tls(cfg.tls, base)
    if tls is None:
        with contextlib.suppress(ScenarioError):
            scenario = Path(cfg.scenario)
            tls = load_scenario(scenario if scenario.is_absolute() else base / scenario).gossip.tls
    health = _health(st["address"], tls, name)
    print(
        f"{st['node']} at {st['address']}  health: {health}  epoch {st['epoch']}  pid {st['pid']}"
    )
    print(f"  updated {_ago(st['updated_unix'])}; step {st['step']}, gossip rounds {st['rounds']}")
    acc = st.get("probe_acc")
    online = st.get("online_acc")
    print(
        f"  local accuracy: probe {acc if acc is not None else '-'}, "
        f"online (last {ONLINE_WINDOW} labels) {online if online is not None else '-'}"
    )
    print(
        f"  bytes sent {st['wire_bytes_sent']:,}, received {st['wire_bytes_received']:,}; "
        f"deltas accepted {st['deltas_accepted']}, rejected {st['deltas_rejected']}"
    )
    ck = st.get("checkpoint")
    if ck:
        print(f"  checkpoint: step {ck['step']}, {_ago(ck['saved_unix'])}, probe {ck['probe_acc']}")
    print(f"  {'peer':<22} {'node':<10} {'agents':<8} {'state':<8} {'last exchange':<15} queued")
    for p in st["peers"]:
        agents = ",".join(map(str, p["agents"])) or "-"
        print(
            f"  {p['address']:<22} {p['node'] or '?':<10} {agents:<8} {p['state'] or '-':<8} "
            f"{_ago(p['last_exchange_unix']):<15} {p['queued']}"
            + (f"  ({p['last_error']})" if p["last_error"] else "")
        )
    return 0 if health == "SERVING" else 3


def _health(address: str, tls: TlsConfig | None, node: str) -> str:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from protocols import tls as tls_

    try:  # under mtls the node's own certificate vouches for the check
        creds = tls_.channel_credentials(tls, node)
    except tls_.TlsError as exc:
        return f"unknown ({exc})"
    channel = (
        grpc.secure_channel(address, creds) if creds is not None else grpc.insecure_channel(address)
    )
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="swarm.v1.Gossip"), timeout=2.0
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.RpcError as exc:
        return f"DOWN ({exc.code().name})"
    finally:
        channel.close()


# -- entry point -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swarm-node", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--config", type=Path, required=True, help="node config YAML file")
    parser.add_argument("--status", action="store_true", help="show what the node is doing")
    parser.add_argument("--ticks", type=int, help="readings to process (overrides the config)")
    return parser


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
    from protocols.tls import TlsError
    from swarm.checkpoint import CheckpointError

    try:
        node = Node(cfg, base)
    except (ScenarioError, NodeError, SensorError, TlsError, CheckpointError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as exc:  # gRPC: "Failed to bind to address ..."
        print(f"error: cannot listen on {cfg.listen}: {exc}", file=sys.stderr)
        sys.exit(2)
    except ValueError as exc:  # a checkpoint whose arrays do not fit this model
        print(f"error: cannot resume from the checkpoint: {exc}", file=sys.stderr)
        sys.exit(2)

    def stop(signum: int, frame: Any) -> None:
        node.stopping = True  # the reading in flight is finished, then the node saves and exits

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    start: dict[str, Any] = {"node": node.name, "listening": node.advertise, "epoch": node.epoch}
    # the accuracy the node starts with: a fresh model's, or the resumed checkpoint's
    start["probe_acc"] = node.local_accuracy().get("probe_acc")
    if node.resumed_from is not None:
        start["resumed_from"] = node.resumed_from
    print(json.dumps(start), flush=True)
    code = 0
    try:
        status = node.run(args.ticks)
        print(json.dumps(status), flush=True)
    except NodeError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        node.error = str(exc)
        with contextlib.suppress(Exception):  # best effort: the error is printed already
            node.save_checkpoint()
            node.write_status()
        code = 3
    finally:
        # Saved and reported: a SIGTERM from now on (a supervisor stopping a node that is
        # already leaving) has nothing left to save, and must not kill the interpreter
        # while it shuts down (Python restores the default handler at finalization).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        node.close()
    sys.exit(code)


if __name__ == "__main__":
    main()
