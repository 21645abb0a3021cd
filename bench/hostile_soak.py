"""Adversarial soak (issue 18, acceptance item 2): a node and a coordinator under mixed attacks,
without the swarm key and with it, beside two honest swarms of real `swarm-node` processes.

    .venv/bin/python bench/hostile_soak.py                  # 60 s per phase (~2.5 min in all)
    .venv/bin/python bench/hostile_soak.py --seconds 20     # a shorter run
    .venv/bin/python bench/hostile_soak.py --write          # also rewrite its BENCHMARKS.md
                                                            # section and its figure
    .venv/bin/python bench/hostile_soak.py --skip submit_signed_huge   # leave attacks out

Two honest swarms run side by side, each of 3 `swarm-node` OS processes reading recorded sensor
streams (one pass of the drone patrol physics, `swarm.sensors.record_world`) at TICK_S per
reading, signing with one key file:

  (a) decentralized gossip: agents 0, 1, 2 of a 3-agent ring, each listing the others as peers;
  (b) through a coordinator: `swarm coordinator SCENARIO --listen 127.0.0.1:0` and 3 nodes with
      `coordinator:` in their config.

Phase 1 runs them unattacked; phase 2 again from fresh state directories, while attacker
threads of this script (real gRPC, 127.0.0.1 only) send the mix in KINDS to agent-1 of (a) and
to the coordinator of (b), each attack counted here as sent, with the status and the Rejection
(trailing metadata `swarm-rejection`) each call was answered with. Every node reads the same
number of readings in both phases, so their final probe accuracies compare like for like.

In both phases, for as long as the attack lasts (or would last):
  - a health prober, in a process of its own so that the attacker's threads cannot delay its
    measurements through this interpreter's lock, checks `grpc.health.v1` (the node's
    swarm.v1.Gossip, the coordinator's swarm.v1.Coordinator) of every honest process every
    HEALTH_EVERY_S with a HEALTH_TIMEOUT_S deadline, on one channel per target;
  - a sampler thread reads the RSS of every node and the coordinator each SAMPLE_S
    (bench/procs.py).

Verdicts, each stated before the run: every honest node's probe accuracy within
ACCURACY_POINTS of its unattacked run; every health check SERVING within HEALTH_TIMEOUT_S;
every attack counted by its target (the counter at the end of the attacked run >= what was
sent; the unattacked run's count beside it shows what honest traffic adds); every process
exits 0 and was alive through the attack; each process's RSS at most MEMORY_BOUND_MB above
its RSS when the attack began. Report to stdout (and BENCHMARKS.md with --write), progress to
stderr, the figure to bench/figures/hostile_soak.png with --write (else the temp directory).
Every child process is killed on the way out, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import multiprocessing as mp
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import yaml
from google.protobuf.message import DecodeError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: bench/ is on sys.path, the repo root is not

import procs  # noqa: E402  (the /proc readers of the other soak and scale benches)

from protocols import wire  # noqa: E402
from protocols.compression import DENSE_F32, Compressed  # noqa: E402
from protocols.delta import Delta  # noqa: E402
from protocols.transport import REJECTION_KEY  # noqa: E402
from swarm.proto.v1 import (  # noqa: E402
    coordinator_pb2,
    coordinator_pb2_grpc,
    delta_pb2,
    gossip_pb2,
    gossip_pb2_grpc,
)
from swarm.scenario import Scenario  # noqa: E402

SECTION = "## Hostile peers (adversarial soak)"
FIGURE = REPO / "bench" / "figures" / "hostile_soak.png"

#: The honest swarms' scenario: tests/test_node.py's DEVICE_SCENARIO with 3 agents (a ring of 3
#: is a complete graph: every node neighbours the attacked agent-1).
SCENARIO: dict[str, Any] = {
    "name": "hostile-soak",
    "seed": 5,
    "ticks": 80,
    "agents": {"count": 3, "per_shard": 2},
    "world": {
        "area_m": 80,
        "cruise_points_per_zone": 3,
        "physics_hz": 120,
        "feature_noise": 0.4,
        "label_fraction": 0.5,
    },
    "model": {"d_model": 32, "channels": 4, "layers": 2, "ffn_mult": 2, "slope_window": 4},
    "learning": {"lr": 0.003, "learn_every": 2, "batch": 16, "window": 8, "replay": 256},
    "gossip": {
        "graph": {"kind": "ring"},
        "interval": 5,
        "compression": {"kind": "topk_int8", "ratio": 0.1},
        "membership": {"probe_interval_s": 0.5, "probe_timeout_s": 0.25, "suspicion_mult": 3},
        "key_file": "swarm.key",
    },
    "metrics": {"interval": 40, "probe_per_class": 20},
    "baseline": {"isolated": False},
    "ray": {"dashboard": False, "num_cpus": 2},
}
#: tests/test_node.py's coordinator test: rounds close at 2 s with 2 of 3 agents.
COORDINATOR = {"round_timeout_s": 2.0, "min_completion": 0.6}

#: Wall seconds per reading. A reading costs ~15 ms of one core here (learning every 2nd), so
#: six nodes at 10 readings/s take ~0.9 of the 2 cores, leaving the rest to the coordinator,
#: the attacker and the prober; 60 s make 600 readings and 120 gossip rounds per node.
TICK_S = 0.1
#: Recorded readings beyond what a node reads (a node must never run out early).
SPARE_READINGS = 20
HEALTH_EVERY_S = 0.25  # the figures: a check every 0.25 s, answered within 0.1 s
HEALTH_TIMEOUT_S = 0.1
SAMPLE_S = 1.0
ACCURACY_POINTS = 5.0
#: RSS bound per process, stated before the run: at most this far above its RSS when the
#: attack began (a node holds ~300 MB, torch's libraries mostly; the attack's made-up members,
#: 4,096 at most per table, cost a few MB; 100 MB is far above what any bounded structure here
#: can take and what a leak per request over thousands of requests would pass).
MEMORY_BOUND_MB = 100.0
#: Deadline of every attacking call: long enough that each one reaches the target and is
#: answered (so "sent" means "the target had it to count").
ATTACK_DEADLINE_S = 10.0
#: 5 MiB: above the scenario's max_message_mb (4 MiB), below gRPC's hard limit at twice it, so
#: the target sees the message and refuses it (protocols/transport.py, `_guarded`).
OVERSIZED_BYTES = 5 * 2**20
GHOSTS_PER_PING = 16  # made-up members per signed Ping (as many as an honest message carries):
# 4,800 in 60 s at one Ping every 0.2 s, past max_members (4,096)
OVERSIZED_GHOSTS = 200  # made-up members of a signed Ping no honest node sends
UNSIGNED_GHOSTS = 500  # made-up members of the unsigned Ping (the figure)
CONCURRENT_AGGREGATES = 16  # the figure: 16 concurrent unsigned GetAggregate calls
FAR_ROUND = 10**9
BENCH, PROBER = "this script (attacker)", "health prober"
#: A missed check that at least this many other processes also missed within one check period
#: is reported as shared (4 of the 7: the prober or the machine stalled, not one process).
SHARED_MISS = 3

Check = tuple[float, str, float | None, str]
"""One health check: (unix time, process, latency in s or None when it failed, answer)."""

_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# -- the attacks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """One attack of the mix: what is sent, to whom, how often, and where the target counts it."""

    name: str
    target: str
    """node (agent-1 of swarm a) or coordinator (swarm b)."""
    key: bool
    """Signed with the swarm key."""
    every_s: float
    """One send (CONCURRENT_AGGREGATES calls for aggregate_unsigned) per this many seconds."""
    counter: str | None
    """Where the target counts it (a key of the node's status / the coordinator's final
    figures; `a.b` for a nested key); None: the target counts it nowhere."""
    what: str


KINDS = [
    Kind("push_garbage", "node", False, 0.05, "rejected_malformed",
         "random bytes (checked not to parse as a DeltaBatch) to PushDeltas"),
    Kind("push_oversized", "node", False, 2.0, "rejected_oversized",
         "5 MiB to PushDeltas (limit 4 MiB)"),
    Kind("ping_garbage", "node", False, 0.2, "rejected_malformed",
         "random bytes (not a PingRequest) to Ping"),
    Kind("ping_unsigned", "node", False, 0.2, "membership_refused.bad_signature",
         f"unsigned Ping: agent-0 DEAD at incarnation 2^64-1 + {UNSIGNED_GHOSTS} made-up ALIVE"),
    Kind("ping_req_unsigned", "node", False, 0.2, "membership_refused.bad_signature",
         "unsigned PingReq for agent-0 at a silent address"),
    Kind("introduce_unsigned", "node", False, 0.2, "rejected_bad_signature",
         "unsigned Introduce as agent-0"),
    Kind("snapshot_epoch_max", "node", True, 0.5, "rejected_malformed",
         "snapshot forged as agent-0, epoch 2^63-1"),
    Kind("snapshot_values_1000", "node", True, 0.5, "rejected_out_of_bounds",
         "snapshot forged as agent-0, every value 1000"),
    Kind("snapshot_epoch_ahead", "node", True, 0.5, "rejected_out_of_bounds",
         "snapshot forged as agent-0, epoch 1 day ahead of the clock"),
    Kind("delta_huge_norm", "node", True, 0.5, "rejected_out_of_bounds",
         "delta forged as agent-0, every value 10 (norm 10 sqrt(P))"),
    Kind("ping_signed_flood", "node", True, 0.2, "membership_refused.incarnation",
         f"signed Ping: {GHOSTS_PER_PING} new made-up ALIVE members + agent-0 DEAD at 2^64-1"),
    Kind("ping_signed_many", "node", True, 1.0, "membership_refused.too_many_updates",
         f"signed Ping carrying {OVERSIZED_GHOSTS} made-up members (an honest one carries 18)"),
    Kind("submit_garbage", "coordinator", False, 0.1, "rejected_malformed",
         "random bytes (not a DeltaBatch) to SubmitDeltas"),
    Kind("submit_oversized", "coordinator", False, 2.0, "rejected_oversized",
         "5 MiB to SubmitDeltas"),
    Kind("aggregate_garbage", "coordinator", False, 0.2, "rejected_malformed",
         "random bytes (not an AggregateRequest) to GetAggregate"),
    Kind("aggregate_oversized", "coordinator", False, 2.0, "rejected_oversized",
         "5 MiB to GetAggregate"),
    Kind("aggregate_unsigned", "coordinator", False, 0.5, "rejected_bad_signature",
         f"{CONCURRENT_AGGREGATES} concurrent unsigned GetAggregate(round 10^9)"),
    Kind("aggregate_signed_far", "coordinator", True, 0.2, "aggregates_refused_not_open",
         "signed GetAggregate(round 10^9)"),
    Kind("aggregate_signed_open", "coordinator", True, 2.0, "aggregates_refused_busy",
         f"{CONCURRENT_AGGREGATES} concurrent signed GetAggregate for the open round (held "
         "until it closes: more than the waiting places)"),
    Kind("submit_signed_huge", "coordinator", True, 1.0, "rejected_out_of_bounds",
         "delta forged as agent-k (k = 0, 1, 2 in turn) for the open round, every value 10"),
]  # fmt: skip
KIND = {k.name: k for k in KINDS}


def _garbage(rng: np.random.Generator, parse: Callable[[bytes], object]) -> bytes:
    """Random bytes (64 to 4,096) that `parse` refuses: random bytes are sometimes a valid
    message (unknown fields), which the target would rightly take as one."""
    while True:
        raw = rng.bytes(int(rng.integers(64, 4096)))
        try:
            parse(raw)
        except DecodeError:
            return raw


def _silent_listener() -> socket.socket:
    """A socket that listens and never accepts: a peer there never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


class Attacker:
    """Attack threads, one per kind, against agent-1 of swarm (a) and the coordinator of (b).

    Counts every call it makes (`sent`) and how each was answered (`answers`: OK, or the status
    code and the Rejection the target named)."""

    OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]

    def __init__(self, node: str, coordinator: str, key: bytes, layout: tuple[int, str],
                 kinds: list[Kind]):  # fmt: skip
        self.key, (self.num_params, self.layout) = key, layout
        self.kinds = kinds
        self.node_channel = grpc.insecure_channel(node, options=self.OPTIONS)
        self.coord_channel = grpc.insecure_channel(coordinator, options=self.OPTIONS)
        self.gossip = gossip_pb2_grpc.GossipStub(self.node_channel)
        self.coord = coordinator_pb2_grpc.CoordinatorStub(self.coord_channel)
        self.silent = _silent_listener()
        self.silent_address = f"127.0.0.1:{self.silent.getsockname()[1]}"
        self.oversized = os.urandom(OVERSIZED_BYTES)
        self.rng = np.random.default_rng(18)
        self.sent: Counter[str] = Counter()
        self.answers: dict[str, Counter[str]] = defaultdict(Counter)
        self.ghosts = 0  # made-up members sent signed, each a new name
        self.coord_version = 0  # the coordinator's version, as its refusals tell it
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for kind in self.kinds:
            t = threading.Thread(target=self._loop, args=(kind,), name=kind.name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=ATTACK_DEADLINE_S + 5)
        self.node_channel.close()
        self.coord_channel.close()
        self.silent.close()

    def _loop(self, kind: Kind) -> None:
        fire = getattr(self, f"_{kind.name}")
        while not self._stop.is_set():
            started = time.monotonic()
            fire(kind)
            self._stop.wait(max(0.0, kind.every_s - (time.monotonic() - started)))

    def _answered(self, kind: Kind, exc: grpc.RpcError | None) -> None:
        if exc is None:
            answer = "OK"
        else:
            trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
            named = [v for k, v in trailing or () if k == REJECTION_KEY]
            answer = exc.code().name + (f"/{named[0]}" if named else "")
        with self._lock:
            self.sent[kind.name] += 1
            self.answers[kind.name][answer] += 1

    def _call(self, kind: Kind, method: Callable[..., Any], request: Any) -> Any:
        """One call, counted with its answer; the reply, or the RpcError it raised."""
        try:
            reply = method(request, timeout=ATTACK_DEADLINE_S)
        except grpc.RpcError as exc:
            self._answered(kind, exc)
            return exc
        self._answered(kind, None)
        return reply

    def _raw(self, channel: grpc.Channel, path: str) -> Callable[..., Any]:
        """A method that sends bytes as they are (no serializer): what a client not speaking
        protobuf sends."""
        return channel.unary_unary(path, request_serializer=None, response_deserializer=None)

    # no key ------------------------------------------------------------------------------

    def _push_garbage(self, kind: Kind) -> None:
        raw = _garbage(self.rng, delta_pb2.DeltaBatch.FromString)
        self._call(kind, self._raw(self.node_channel, "/swarm.v1.Gossip/PushDeltas"), raw)

    def _push_oversized(self, kind: Kind) -> None:
        method = self._raw(self.node_channel, "/swarm.v1.Gossip/PushDeltas")
        self._call(kind, method, self.oversized)

    def _ping_garbage(self, kind: Kind) -> None:
        raw = _garbage(self.rng, gossip_pb2.PingRequest.FromString)
        self._call(kind, self._raw(self.node_channel, "/swarm.v1.Gossip/Ping"), raw)

    def _ping_unsigned(self, kind: Kind) -> None:
        updates = [_member("agent-0", "127.0.0.1:1", "DEAD", 2**64 - 1)]
        updates += [
            _member(f"stranger-{i}", f"127.0.0.1:{2 + i}", "ALIVE", 1)
            for i in range(UNSIGNED_GHOSTS)
        ]
        ping = gossip_pb2.PingRequest(sender_node="mallory", incarnation=1, updates=updates)
        self._call(kind, self.gossip.Ping, ping)

    def _ping_req_unsigned(self, kind: Kind) -> None:
        req = gossip_pb2.PingReqRequest(
            sender_node="mallory", target_node="agent-0", target_address=self.silent_address
        )
        self._call(kind, self.gossip.PingReq, req)

    def _introduce_unsigned(self, kind: Kind) -> None:
        intro = gossip_pb2.Introduction(
            node="agent-0", address=self.silent_address, agents=[0],
            unix_ms=int(time.time() * 1000), membership=True,
        )  # fmt: skip
        self._call(kind, self.gossip.Introduce, intro)

    def _submit_garbage(self, kind: Kind) -> None:
        raw = _garbage(self.rng, delta_pb2.DeltaBatch.FromString)
        self._call(kind, self._raw(self.coord_channel, "/swarm.v1.Coordinator/SubmitDeltas"), raw)

    def _submit_oversized(self, kind: Kind) -> None:
        method = self._raw(self.coord_channel, "/swarm.v1.Coordinator/SubmitDeltas")
        self._call(kind, method, self.oversized)

    def _aggregate_garbage(self, kind: Kind) -> None:
        raw = _garbage(self.rng, coordinator_pb2.AggregateRequest.FromString)
        self._call(kind, self._raw(self.coord_channel, "/swarm.v1.Coordinator/GetAggregate"), raw)

    def _aggregate_oversized(self, kind: Kind) -> None:
        method = self._raw(self.coord_channel, "/swarm.v1.Coordinator/GetAggregate")
        self._call(kind, method, self.oversized)

    def _aggregate_unsigned(self, kind: Kind) -> None:
        request = coordinator_pb2.AggregateRequest(node="mallory", round=FAR_ROUND)
        calls = [
            self.coord.GetAggregate.future(request, timeout=ATTACK_DEADLINE_S)
            for _ in range(CONCURRENT_AGGREGATES)
        ]
        for call in calls:
            exc = call.exception()
            self._answered(kind, exc if isinstance(exc, grpc.RpcError) else None)

    # with the key ------------------------------------------------------------------------

    def _forged(self, sender: str, value: float, *, epoch: int, snapshot: bool,
                version: int = 0) -> delta_pb2.DeltaBatch:  # fmt: skip
        """A batch of one signed dense delta (or snapshot) of `sender`, every value `value`."""
        values = np.full(self.num_params, value, np.float32)
        d = Delta(
            sender, version, version, self.layout,
            Compressed(DENSE_F32, self.num_params, values),
            float(np.linalg.norm(values.astype(np.float64))), epoch=epoch, snapshot=snapshot,
        )  # fmt: skip
        msg = wire.to_proto(d, self.key)
        return delta_pb2.DeltaBatch(sender_node=sender, round=version, deltas=[msg])

    def _snapshot_epoch_max(self, kind: Kind) -> None:
        batch = self._forged("agent-0", 0.01, epoch=2**63 - 1, snapshot=True)
        self._call(kind, self.gossip.PushDeltas, batch)

    def _snapshot_values_1000(self, kind: Kind) -> None:
        batch = self._forged("agent-0", 1000.0, epoch=_now_ms(), snapshot=True)
        self._call(kind, self.gossip.PushDeltas, batch)

    def _snapshot_epoch_ahead(self, kind: Kind) -> None:
        batch = self._forged("agent-0", 0.01, epoch=_now_ms() + 86_400_000, snapshot=True)
        self._call(kind, self.gossip.PushDeltas, batch)

    def _delta_huge_norm(self, kind: Kind) -> None:
        batch = self._forged("agent-0", 10.0, epoch=0, snapshot=False)
        self._call(kind, self.gossip.PushDeltas, batch)

    def _ping_signed_flood(self, kind: Kind) -> None:
        first = self.ghosts
        self.ghosts += GHOSTS_PER_PING
        updates = [_member("agent-0", "127.0.0.1:1", "DEAD", 2**64 - 1)]
        # closed ports on loopback (1..1000): a probe of a made-up member fails at once
        updates += [
            _member(f"ghost-{k}", f"127.0.0.1:{1 + k % 1000}", "ALIVE", 1)
            for k in range(first, first + GHOSTS_PER_PING)
        ]
        ping = gossip_pb2.PingRequest(sender_node="mallory", incarnation=1, updates=updates)
        self._call(kind, self.gossip.Ping, wire.sign_probe(ping, self.key))

    def _ping_signed_many(self, kind: Kind) -> None:
        updates = [
            _member(f"crowd-{k}", f"127.0.0.1:{1 + k % 1000}", "ALIVE", 1)
            for k in range(OVERSIZED_GHOSTS)
        ]
        ping = gossip_pb2.PingRequest(sender_node="mallory", incarnation=1, updates=updates)
        self._call(kind, self.gossip.Ping, wire.sign_probe(ping, self.key))

    def _aggregate_signed_open(self, kind: Kind) -> None:
        request = wire.aggregate_request("mallory", self.coord_version, self.key)
        calls = [
            self.coord.GetAggregate.future(request, timeout=ATTACK_DEADLINE_S)
            for _ in range(CONCURRENT_AGGREGATES)
        ]
        for call in calls:
            exc = call.exception()
            self._answered(kind, exc if isinstance(exc, grpc.RpcError) else None)

    def _aggregate_signed_far(self, kind: Kind) -> None:
        request = wire.aggregate_request("mallory", FAR_ROUND, self.key)
        exc = self._call(kind, self.coord.GetAggregate, request)
        if isinstance(exc, grpc.RpcError):
            m = re.search(r"at version (\d+)", str(exc.details()))
            if m:
                self.coord_version = int(m.group(1))

    def _submit_signed_huge(self, kind: Kind) -> None:
        version = self.coord_version
        sender = f"agent-{self.sent[kind.name] % 3}"
        batch = self._forged(sender, 10.0, epoch=0, snapshot=False, version=version)
        self._call(kind, self.coord.SubmitDeltas, batch)


def _member(node: str, address: str, state: str, incarnation: int) -> gossip_pb2.MemberUpdate:
    return gossip_pb2.MemberUpdate(node=node, address=address, state=state, incarnation=incarnation)


def _now_ms() -> int:
    return int(time.time() * 1000)


# -- the honest swarms ------------------------------------------------------------------------


def _free_port() -> int:
    """A port the decentralized nodes' peers must know before they start (tests/test_node.py)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def record(out: Path, readings: int) -> Path:
    """Sensor streams of drones 0, 1, 2 of the scenario's world, `readings` ticks each."""
    from swarm.sensors import record_world  # lazy: pybullet

    sc = Scenario.model_validate(SCENARIO)
    record_world(
        sc.world, 3, sc.seed, [0, 1, 2], readings, out, window=sc.learning.window,
        probe_per_class=sc.metrics.probe_per_class,
    )  # fmt: skip
    return out


def _write_scenario(d: Path, key: bytes, *, coordinator: bool) -> Path:
    data = json.loads(json.dumps(SCENARIO))
    if coordinator:
        data["gossip"]["topology"] = "coordinator"
        data["gossip"]["coordinator"] = COORDINATOR
    d.mkdir(parents=True)
    (d / "swarm.key").write_bytes(key)
    path = d / "scenario.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _write_node(d: Path, agent: int, listen: str, recordings: Path, readings: int,
                **cfg: Any) -> Path:  # fmt: skip
    data = {
        "scenario": "scenario.yaml",
        "agent": agent,
        "listen": listen,
        "key_file": "swarm.key",
        "ticks": readings,
        "tick_s": TICK_S,
        "linger_s": 5.0,  # the peers' last deltas; a gossip node leaves once it heard everyone
        "checkpoint_every_s": 2.0,  # checkpoints under attack (issue 18: one forgery broke them)
        "status_every_s": 0.5,
        "sensor": {"kind": "file", "path": str(recordings / f"agent-{agent}.jsonl")},
        **cfg,
    }
    path = d / f"node-{agent}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


#: A node on standby (tests/test_node.py's): it imports what a node runs on (seconds: the
#: interpreter, torch), then waits for a line on stdin before it runs `swarm-node`, so that the
#: six nodes start reading together, after the coordinator is up.
STANDBY = (
    "import sys, torch, agents.learner, protocols.gossip, protocols.membership_net, swarm.node\n"
    "sys.stdin.readline()\n"
    "swarm.node.main(['--config', sys.argv[1]])\n"
)


class Proc:
    """One child process: stdout JSON lines collected by a thread, stderr to a file. On
    `standby` (a node), it starts when `go()` is called."""

    def __init__(self, role: str, argv: list[str], err: Path, *, standby: bool = False):
        self.role, self.err = role, err
        with open(err, "w") as fh:  # the child holds its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, *argv], cwd=REPO, stdin=subprocess.PIPE if standby else None,
                stdout=subprocess.PIPE, stderr=fh, text=True,
            )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def go(self) -> None:
        assert self.proc.stdin is not None, "not on standby"
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def first(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not self.lines:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.role} did not start: {self.stderr_tail()}")
            time.sleep(0.05)
        return dict(json.loads(self.lines[0]))

    def last(self) -> dict[str, Any] | None:
        """The last JSON line (a node's final status, the coordinator's figures), if any."""
        self._reader.join(timeout=5)
        for line in reversed(self.lines):
            try:
                return dict(json.loads(line))
            except ValueError:
                continue
        return None

    def stderr_tail(self, n: int = 1500) -> str:
        try:
            return self.err.read_text()[-n:]
        except OSError:
            return ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def _state(config: Path, agent: int) -> dict[str, Any] | None:
    path = config.parent / ".swarm-node" / f"agent-{agent}" / "status.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


@dataclass
class Swarms:
    """The processes of one phase: role -> process, and what each honest node is checked at."""

    procs: dict[str, Proc] = field(default_factory=dict)
    configs: dict[str, tuple[Path, int]] = field(default_factory=dict)  # node role -> config
    targets: list[tuple[str, str, str]] = field(default_factory=list)  # role, address, service

    def kill_all(self) -> None:
        for p in self.procs.values():
            p.kill()


def start_swarms(s: Swarms, d: Path, key: bytes, recordings: Path, readings: int) -> None:
    """Swarm (a): 3 gossip nodes; swarm (b): the coordinator and its 3 nodes, into `s` as they
    start (so that a failed start still kills the others). The nodes import on standby while
    the coordinator starts, then all six start together; returns once every one listens (its
    first stdout line)."""
    a, b = d / "a", d / "b"
    _write_scenario(a, key, coordinator=False)
    b_scenario = _write_scenario(b, key, coordinator=True)
    # Port 0 for the coordinator (its nodes learn its address from its first line) and for
    # the nodes of (b), whom nobody dials; the gossip nodes must know each other's in advance.
    s.procs["b/coordinator"] = Proc(
        "b/coordinator",
        ["-m", "swarm.cli", "coordinator", str(b_scenario), "--listen", "127.0.0.1:0"],
        b / "coordinator.err",
    )
    ports = [_free_port() for _ in range(3)]
    for swarm, where in (("a", a), ("b", b)):
        for i in range(3):
            config = where / f"node-{i}.yaml"
            role = f"{swarm}/agent-{i}"
            s.procs[role] = Proc(role, ["-c", STANDBY, str(config)], where / f"node-{i}.err",
                                 standby=True)  # fmt: skip
            s.configs[role] = (config, i)
    for i in range(3):
        peers = [f"127.0.0.1:{p}" for j, p in enumerate(ports) if j != i]
        _write_node(a, i, f"127.0.0.1:{ports[i]}", recordings, readings, peers=peers)
    coordinator = s.procs["b/coordinator"].first(180)["coordinator"]
    s.targets.append(("b/coordinator", coordinator, "swarm.v1.Coordinator"))
    for i in range(3):
        _write_node(b, i, "127.0.0.1:0", recordings, readings, coordinator=coordinator)
    for role in s.configs:
        s.procs[role].go()
    for role in s.configs:
        address = s.procs[role].first(180)["listening"]
        s.targets.append((role, address, "swarm.v1.Gossip"))
    s.targets.sort()


# -- health prober (its own process) and memory sampler ----------------------------------------


def _probe_health(targets: list[tuple[str, str, str]], stop: Any, out: Any) -> None:
    """Check every target's health every HEALTH_EVERY_S until `stop` is set; put the list of
    (unix time, role, latency s or None, answer) on `out`. One thread and channel per target,
    warmed up (connected) before the first measured check."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    results: list[Check] = []
    lock = threading.Lock()

    def watch(role: str, address: str, service: str) -> None:
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service=service)
            with contextlib.suppress(grpc.RpcError):  # the connection, not measured
                stub.Check(request, timeout=10, wait_for_ready=True)
            next_t = time.monotonic()
            while not stop.is_set():
                t, t0 = time.time(), time.perf_counter()
                try:
                    reply = stub.Check(request, timeout=HEALTH_TIMEOUT_S)
                    latency: float | None = time.perf_counter() - t0
                    answer = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                except grpc.RpcError as exc:
                    latency, answer = None, exc.code().name
                with lock:
                    results.append((t, role, latency, answer))
                next_t += HEALTH_EVERY_S
                stop.wait(max(0.0, next_t - time.monotonic()))

    threads = [threading.Thread(target=watch, args=t, daemon=True) for t in targets]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    out.put(results)


class Sampler:
    """RSS and CPU seconds of every process of a phase, each SAMPLE_S, on a thread: the nodes
    and the coordinator, and (for the CPU they take from the same cores) this script, whose
    threads attack, and the prober."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.samples: list[tuple[float, str, int | None, float | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()  # the end of the window

    def _sample(self) -> None:
        t = time.time()
        for role, pid in self.pids.items():
            mem = procs.memory(pid)
            rss = mem.rss if mem is not None else None
            self.samples.append((t, role, rss, procs.cpu_seconds(pid)))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(SAMPLE_S)


# -- one phase --------------------------------------------------------------------------------


@dataclass
class Phase:
    """What one phase measured."""

    attacked: bool
    t0: float = 0.0  # unix time the attack (or the window it would have) began
    seconds: float = 0.0  # length of that window
    final: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    alive_through: dict[str, bool] = field(default_factory=dict)
    health: list[Check] = field(default_factory=list)
    memory: list[tuple[float, str, int | None, float | None]] = field(default_factory=list)
    """(unix time, process, RSS bytes, CPU seconds) samples."""
    sent: dict[str, int] = field(default_factory=dict)
    answers: dict[str, dict[str, int]] = field(default_factory=dict)
    ghosts: int = 0
    stderr: dict[str, str] = field(default_factory=dict)


def _reading_done(s: Swarms, readings: int) -> bool:
    """Whether some node finished reading (or stopped)."""
    for role, (config, agent) in s.configs.items():
        st = _state(config, agent) or {}
        if s.procs[role].proc.poll() is not None or (st.get("step") or 0) >= readings:
            return True
    return False


def run_phase(d: Path, key: bytes, recordings: Path, readings: int, seconds: float,
              attack: list[Kind] | None, layout: tuple[int, str]) -> Phase:  # fmt: skip
    """Both swarms from fresh state in `d`; the attack (if any), the prober and the sampler for
    `seconds` or until a node has read its readings; then every process to its end."""
    phase = Phase(attacked=attack is not None)
    swarms = Swarms()
    ctx = mp.get_context("spawn")  # no fork of a process with gRPC threads
    stop, out = ctx.Event(), ctx.Queue()
    prober = None
    try:
        start_swarms(swarms, d, key, recordings, readings)
        prober = ctx.Process(target=_probe_health, args=(swarms.targets, stop, out), daemon=True)
        log(f"  every node listens; {'attack, ' if attack else ''}prober and sampler start")
        prober.start()
        pids = {role: p.proc.pid for role, p in swarms.procs.items()}
        sampler = Sampler({**pids, BENCH: os.getpid(), PROBER: prober.pid or 0})
        sampler.start()
        attacker = None
        if attack is not None:
            node = dict((r, a) for r, a, _ in swarms.targets)["a/agent-1"]
            coordinator = dict((r, a) for r, a, _ in swarms.targets)["b/coordinator"]
            attacker = Attacker(node, coordinator, key, layout, attack)
            attacker.start()
        phase.t0 = time.time()
        while time.time() - phase.t0 < seconds and not _reading_done(swarms, readings):
            time.sleep(0.2)
        phase.seconds = time.time() - phase.t0
        phase.alive_through = {r: p.proc.poll() is None for r, p in swarms.procs.items()}
        stop.set()
        if attacker is not None:
            attacker.stop()
            phase.sent, phase.ghosts = dict(attacker.sent), attacker.ghosts
            phase.answers = {k: dict(v) for k, v in attacker.answers.items()}
        phase.health = out.get(timeout=60)
        prober.join(timeout=30)
        sampler.stop()
        phase.memory = sampler.samples
        log(f"  window over after {phase.seconds:.1f} s; the nodes finish their readings")
        _finish(swarms, phase)
    finally:
        if prober is not None and prober.is_alive():
            prober.kill()
        swarms.kill_all()
    return phase


def _finish(s: Swarms, phase: Phase) -> None:
    """Every node to its end (readings, linger, checkpoint), then SIGTERM to the coordinator."""
    deadline = time.monotonic() + 300
    for role, p in s.procs.items():
        if role == "b/coordinator":
            continue
        try:
            p.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log(f"  {role} still running: SIGTERM")
            p.proc.send_signal(signal.SIGTERM)
            p.proc.wait(timeout=60)
    coordinator = s.procs["b/coordinator"]
    if coordinator.proc.poll() is None:
        coordinator.proc.send_signal(signal.SIGTERM)
    coordinator.proc.wait(timeout=60)
    for role, p in s.procs.items():
        phase.exit_codes[role] = p.proc.returncode
        phase.final[role] = p.last()
        if p.proc.returncode != 0:
            phase.stderr[role] = p.stderr_tail()


# -- the report -------------------------------------------------------------------------------


def _get(doc: dict[str, Any] | None, path: str) -> int:
    """A counter at `path` (`a.b`: nested) of a node's status or the coordinator's figures."""
    value: Any = doc or {}
    for part in path.split("."):
        value = value.get(part, 0) if isinstance(value, dict) else 0
    return int(value or 0)


def _acc(phase: Phase, role: str) -> float | None:
    value = (phase.final.get(role) or {}).get("probe_acc")
    return float(value) if value is not None else None


def accuracy_table(clean: Phase, hostile: Phase) -> tuple[list[str], bool]:
    lines = [
        "| swarm | node | readings | probe acc. unattacked | attacked | difference (points) |"
        " within 5 points |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    ok = True
    for role in sorted(r for r in hostile.final if r != "b/coordinator"):
        before, after = _acc(clean, role), _acc(hostile, role)
        steps = (hostile.final.get(role) or {}).get("step", "-")
        if before is None or after is None:
            ok = False
            lines.append(f"| {role[0]} | {role[2:]} | {steps} | {before} | {after} | - | **no** |")
            continue
        diff = 100 * (after - before)
        within = abs(diff) <= ACCURACY_POINTS
        ok &= within
        swarm = "a (gossip)" if role[0] == "a" else "b (coordinator)"
        mark = " (attacked)" if role == "a/agent-1" else ""
        lines.append(
            f"| {swarm} | {role[2:]}{mark} | {steps} | {before:.3f} | {after:.3f} | {diff:+.1f} | "
            f"{'yes' if within else '**no**'} |"
        )
    return lines, ok


def _missed(r: Check) -> str | None:
    """Why a check missed (its status, or "late": SERVING after the deadline), None if not."""
    if r[2] is None or r[3] != "SERVING":
        return r[3]
    return "late" if r[2] > HEALTH_TIMEOUT_S else None


def _shared(misses: list[Check], r: Check) -> bool:
    """Whether most targets missed with `r` (within one check period): a stall of the machine
    or of the prober, not of `r`'s process."""
    others = {m[1] for m in misses if m[1] != r[1] and abs(m[0] - r[0]) <= HEALTH_EVERY_S}
    return len(others) >= SHARED_MISS


def accuracy_notes(hostile: Phase) -> list[str]:
    """What the report should say beside the accuracy table, from the measurements."""
    taken = hostile.answers.get("submit_signed_huge", {}).get("OK", 0)
    if not taken:
        return []
    displaced = sum(_get(hostile.final.get(f"b/agent-{i}"), "coordinator.stale") for i in range(3))
    rounds = _get(hostile.final.get("b/coordinator"), "rounds")
    return [
        "",
        f"The coordinator took {taken} of the {hostile.sent.get('submit_signed_huge', 0)} "
        "signed forged deltas of norm 10 sqrt(P) (`submit_signed_huge` answered OK): it checks "
        "no `gossip.limits` on a submission, so each went into its round's aggregate "
        f"({rounds} rounds closed), and each took an honest agent's place in that round (the "
        f"honest nodes' submissions refused STALE: {displaced}).",
    ]


def health_table(clean: Phase, hostile: Phase) -> tuple[list[str], bool]:
    lines = [
        "| phase | process | checks | not SERVING in 100 ms | of which most processes missed "
        "together | p50 ms | p99 ms | max ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def row(phase: str, role: str, rows: list[Check], misses: list[Check]) -> bool:
        lat = np.array([r[2] for r in rows if r[2] is not None]) * 1000
        mine = [r for r in rows if _missed(r)]
        bad = Counter(_missed(r) for r in mine)
        why = f" ({', '.join(f'{a} x{n}' for a, n in sorted(bad.items()))})" if bad else ""
        shared = sum(_shared(misses, r) for r in mine)
        p50, p99, top = [*np.percentile(lat, [50, 99]), lat.max()] if lat.size else [np.nan] * 3
        lines.append(f"| {phase} | {role} | {len(rows)} | {len(mine)}{why} | {shared} | "
                     f"{p50:.1f} | {p99:.1f} | {top:.1f} |")  # fmt: skip
        return not mine and len(rows) > 0

    ok = True
    for name, phase in (("unattacked", clean), ("attacked", hostile)):
        misses = [r for r in phase.health if _missed(r)]
        by_role: dict[str, list[Check]] = defaultdict(list)
        for r in phase.health:
            by_role[r[1]].append(r)
        for role in sorted(by_role):
            good = row(name, role, by_role[role], misses)
            ok &= good or name == "unattacked"  # the verdict is on the attacked run
        row(name, "**all**", phase.health, misses)
    return lines, ok


def attack_tables(clean: Phase, hostile: Phase, kinds: list[Kind]) -> tuple[list[str], bool]:
    lines = [
        "| attack | target | key | every | sent | answered (status/Rejection x calls) |",
        "| --- | --- | --- | ---: | ---: | --- |",
    ]
    for k in kinds:
        answers = ", ".join(f"{a} x{n}" for a, n in sorted(hostile.answers.get(k.name, {}).items()))
        target = "agent-1 (a)" if k.target == "node" else "coordinator (b)"
        lines.append(f"| `{k.name}`: {k.what} | {target} | {'yes' if k.key else 'no'} | "
                     f"{k.every_s:g} s | {hostile.sent.get(k.name, 0)} | {answers} |")  # fmt: skip
    lines += [
        "",
        "| target | counter | attacks counted there | sent | refused | counted, unattacked run |"
        " counted, attacked run | counted >= refused |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    groups: dict[tuple[str, str | None], list[Kind]] = defaultdict(list)
    for k in kinds:
        groups[(k.target, k.counter)].append(k)
    ok = True
    for (target, counter), members in sorted(groups.items(), key=lambda g: (g[0][0], str(g[0][1]))):
        role = "a/agent-1" if target == "node" else "b/coordinator"
        sent = sum(hostile.sent.get(k.name, 0) for k in members)
        # what must be counted: every call refused (a call answered OK, e.g. a waiting
        # GetAggregate that got its aggregate, was served, not refused)
        refused = sum(
            n for k in members for a, n in hostile.answers.get(k.name, {}).items() if a != "OK"
        )
        names = ", ".join(f"`{k.name}`" for k in members)
        if counter is None:
            ok = False
            lines.append(f"| {role} | none | {names} | {sent} | {refused} | - | - | "
                         "**no: counted nowhere** |")  # fmt: skip
            continue
        before, after = _get(clean.final.get(role), counter), _get(hostile.final.get(role), counter)
        good = after >= refused
        ok &= good
        lines.append(f"| {role} | `{counter}` | {names} | {sent} | {refused} | {before} | {after} "
                     f"| {'yes' if good else '**no**'} |")  # fmt: skip
    return lines, ok


def _table_size(status: dict[str, Any]) -> int:
    """Members in a node's SWIM table: status.json lists at most 256, and counts them all."""
    counted = (status.get("member_count") or {}).get("total")
    return int(counted) if counted is not None else len(status.get("members") or {})


def ghost_lines(clean: Phase, hostile: Phase) -> list[str]:
    """What the signed made-up members did to the member tables."""
    if not hostile.ghosts:
        return []
    lines = [
        f"Made-up members sent signed (`ping_signed_flood`, each a new name): {hostile.ghosts}.",
        "",
        "| node | members in its table at the end | unattacked | table_full refusals |"
        " members reaped |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for role in ("a/agent-0", "a/agent-1", "a/agent-2"):
        st, st0 = hostile.final.get(role) or {}, clean.final.get(role) or {}
        lines.append(
            f"| {role} | {_table_size(st)} | {_table_size(st0)} | "
            f"{_get(st, 'membership_refused.table_full')} | {st.get('members_reaped', '-')} |"
        )
    return lines


def crash_table(clean: Phase, hostile: Phase) -> tuple[list[str], bool]:
    lines = [
        "| process | exit code, unattacked | exit code, attacked | alive through the attack |",
        "| --- | ---: | ---: | --- |",
    ]
    ok = True
    for role in sorted(hostile.exit_codes):
        alive = hostile.alive_through.get(role, False)
        ok &= hostile.exit_codes[role] == 0 and alive
        lines.append(f"| {role} | {clean.exit_codes.get(role)} | {hostile.exit_codes[role]} | "
                     f"{'yes' if alive else '**no**'} |")  # fmt: skip
    return lines, ok


def _rss(phase: Phase, role: str) -> tuple[float, float, float] | None:
    """RSS in MB at the window's start, its peak and at its end."""
    mb = [r / 2**20 for _, who, r, _ in sorted(phase.memory) if who == role and r is not None]
    return (mb[0], max(mb), mb[-1]) if mb else None


def _cores(phase: Phase, role: str) -> float | None:
    """CPU cores the process used on average over the window."""
    pts = [(t, c) for t, who, _, c in sorted(phase.memory) if who == role and c is not None]
    if len(pts) < 2 or pts[-1][0] <= pts[0][0]:
        return None
    return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])


def memory_table(clean: Phase, hostile: Phase) -> tuple[list[str], bool]:
    lines = [
        "| process | RSS at attack start MB | peak | end | peak - start | same window "
        "unattacked: peak - start | within +100 MB | CPU cores used, unattacked / attacked |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    ok = True
    for role in sorted(hostile.exit_codes):
        got, base = _rss(hostile, role), _rss(clean, role)
        if got is None:
            ok = False
            lines.append(f"| {role} | - | - | - | - | - | **no samples** | |")
            continue
        start, peak, end = got
        growth = peak - start
        within = growth <= MEMORY_BOUND_MB
        ok &= within
        base_growth = f"{base[1] - base[0]:+.1f}" if base else "-"
        lines.append(f"| {role} | {start:.0f} | {peak:.0f} | {end:.0f} | {growth:+.1f} | "
                     f"{base_growth} | {'yes' if within else '**no**'} | "
                     f"{_cpu_pair(clean, hostile, role)} |")  # fmt: skip
    for role in (BENCH, PROBER):
        lines.append(f"| {role} | | | | | | | {_cpu_pair(clean, hostile, role)} |")
    return lines, ok


def _cpu_pair(clean: Phase, hostile: Phase, role: str) -> str:
    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    return f"{fmt(_cores(clean, role))} / {fmt(_cores(hostile, role))}"


def report(args: argparse.Namespace, clean: Phase, hostile: Phase, kinds: list[Kind],
           info: dict[str, str]) -> str:  # fmt: skip
    acc, acc_ok = accuracy_table(clean, hostile)
    health, health_ok = health_table(clean, hostile)
    attacks, counted_ok = attack_tables(clean, hostile, kinds)
    crashes, crash_ok = crash_table(clean, hostile)
    memory, memory_ok = memory_table(clean, hostile)

    def verdict(ok: bool) -> str:
        return "**held**" if ok else "**not held**"

    out = [
        SECTION,
        "",
        f"Command: `{info['command']}` · {info['date']} · {info['wall']} s wall",
        "",
        f"Machine: {info['machine']}; load average {info['load']} at the start.",
        "",
        "Run: two honest swarms side by side, each of 3 `swarm-node` processes reading "
        f"{args.readings} recorded readings at {TICK_S} s (the drone patrol, 3 drones, "
        "d_model 32, topk_int8 gossip every 5 readings), one key file: **(a)** decentralized "
        "gossip, every node listing the other two as peers; **(b)** through `swarm coordinator` "
        f"(round timeout {COORDINATOR['round_timeout_s']} s, min completion "
        f"{COORDINATOR['min_completion']}). Phase 1 unattacked, phase 2 from fresh state "
        f"directories under attack for {hostile.seconds:.0f} s (asked: {args.seconds:.0f} s) by "
        "threads of this script over real gRPC on 127.0.0.1: against agent-1 of (a) and the "
        "coordinator of (b). A health prober (its own process, one channel per target) checks "
        f"every node and the coordinator every {HEALTH_EVERY_S} s with a {HEALTH_TIMEOUT_S} s "
        f"deadline; a sampler reads every process's RSS each {SAMPLE_S:g} s; both in both phases.",
        "",
        f"**Bounds, set before the run:** accuracy within {ACCURACY_POINTS:g} points of the "
        f"unattacked run; every health check SERVING within {HEALTH_TIMEOUT_S * 1000:.0f} ms; "
        "every attack counted by its target (the counter at the end of the attacked run >= the "
        "calls it refused); every process exits 0 and is alive through the attack; each "
        "process's RSS "
        f"peak at most {MEMORY_BOUND_MB:.0f} MB above its RSS when the attack began.",
        "",
        "![health latency and RSS over the attack](bench/figures/hostile_soak.png)",
        "",
        f"### Accuracy: {verdict(acc_ok)}",
        "",
        *acc,
        *accuracy_notes(hostile),
        "",
        f"### Health: {verdict(health_ok)}",
        "",
        *health,
        "",
        f"### Every attack counted: {verdict(counted_ok)}",
        "",
        *attacks,
        "",
        *ghost_lines(clean, hostile),
        "",
        f"### No crash: {verdict(crash_ok)}",
        "",
        *crashes,
        "",
        f"### Memory bounded: {verdict(memory_ok)}",
        "",
        *memory,
    ]
    for role, tail in sorted(hostile.stderr.items()):
        out += ["", f"stderr of {role} (attacked run), last lines:", "", "```", tail.strip(), "```"]
    return "\n".join(out) + "\n"


PLOT_BIN_S = 2.0


def _binned_max(rows: list[Check], t0: float) -> tuple[list[float], list[float]]:
    """The slowest answered check (ms) per PLOT_BIN_S since t0: (bin centres, maxima)."""
    bins: dict[int, float] = {}
    for t, _, latency, _ in rows:
        if latency is not None:
            b = int((t - t0) // PLOT_BIN_S)
            bins[b] = max(bins.get(b, 0.0), latency * 1000)
    keys = sorted(bins)
    return [(b + 0.5) * PLOT_BIN_S for b in keys], [bins[b] for b in keys]


def plot(clean: Phase, hostile: Phase, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    roles = sorted({r[1] for r in hostile.health})
    colours = {role: f"C{i}" for i, role in enumerate(roles)}
    for phase in (clean, hostile):
        for role in roles if phase is hostile else ["all"]:
            rows = [r for r in phase.health if role in ("all", r[1])]
            xs, ys = _binned_max(rows, phase.t0)
            if phase is hostile:
                top.plot(xs, ys, "-", lw=1, color=colours[role], label=role)
            else:
                top.plot(xs, ys, "--", lw=1.5, color="grey", label="unattacked, any process")
        missed = [r[0] - phase.t0 for r in phase.health if _missed(r)]
        top.plot(missed, [HEALTH_TIMEOUT_S * 1000] * len(missed), "v", ms=6,
                 color="red" if phase is hostile else "grey")  # fmt: skip
    top.axhline(HEALTH_TIMEOUT_S * 1000, color="red", lw=0.8, ls=":")
    top.set_ylabel(f"slowest check per {PLOT_BIN_S:g} s, ms")
    top.set_yscale("log")
    top.set_title("health checks under attack; triangles: not SERVING within the 100 ms deadline")
    top.legend(fontsize=7, ncol=4, loc="lower left")
    for phase, ls in ((clean, ":"), (hostile, "-")):
        by_role: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for t, role, rss, _ in phase.memory:
            if rss is not None and role not in (BENCH, PROBER):
                by_role[role].append((t - phase.t0, rss / 2**20))
        for role, pts in sorted(by_role.items()):
            ts, mbs = zip(*sorted(pts), strict=True)
            label = role if phase is hostile else None
            bottom.plot(ts, mbs, ls, color=colours.get(role, "k"), label=label)
    bottom.set_ylabel("RSS, MB")
    bottom.set_xlabel("seconds since the attack began (unattacked: the same window)")
    bottom.set_title("RSS: attacked (solid), unattacked (dotted); colours as above")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main -------------------------------------------------------------------------------------


def _machine() -> str:
    import model_bench  # lazy: torch; the one place the machine is described

    m = model_bench.machine()
    return f"{m['cores']} cores ({m['cpu']}), torch {m['torch']}, Python {m['python']}"


def _kinds(skip: str) -> list[Kind]:
    names = [n.strip() for n in skip.split(",") if n.strip()]
    unknown = [n for n in names if n not in KIND]
    if unknown:
        raise SystemExit(f"--skip: unknown attack(s) {unknown}; known: {', '.join(KIND)}")
    return [k for k in KINDS if k.name not in names]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="attack (and phase) length")
    ap.add_argument("--write", action="store_true", help="rewrite this section of BENCHMARKS.md")
    ap.add_argument("--skip", default="", help="comma-separated attacks to leave out")
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    ap.add_argument("--dump", type=Path, help="also save both phases' measurements (JSON)")
    args = ap.parse_args()
    kinds = _kinds(args.skip)
    args.readings = round(args.seconds / TICK_S)
    started, load = time.time(), "/".join(f"{x:.1f}" for x in os.getloadavg())
    from swarm.coordinator_service import model_layout  # lazy: torch, pybullet

    num_params, fingerprint, _ = model_layout(Scenario.model_validate(SCENARIO))
    layout = (num_params, fingerprint)
    key = os.urandom(32)
    root = Path(tempfile.mkdtemp(prefix="hostile-soak-"))
    try:
        log(f"recording {args.readings + SPARE_READINGS} readings of 3 drones in {root}")
        recordings = record(root / "recordings", args.readings + SPARE_READINGS)
        log("phase 1: unattacked")
        clean = run_phase(root / "clean", key, recordings, args.readings, args.seconds, None,
                          layout)  # fmt: skip
        log(f"phase 2: attacked by {len(kinds)} kinds of attack")
        hostile = run_phase(root / "hostile", key, recordings, args.readings, args.seconds,
                            kinds, layout)  # fmt: skip
    finally:
        if args.keep:
            log(f"kept {root}")
        else:
            subprocess.run(["rm", "-rf", str(root)], check=False)
    argv = " ".join(sys.argv[1:])
    info = {
        "command": f".venv/bin/python bench/hostile_soak.py{' ' + argv if argv else ''}",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "wall": f"{time.time() - started:.0f}",
        "machine": _machine(),
        "load": load,
    }
    if args.dump:
        args.dump.write_text(json.dumps({"clean": asdict(clean), "hostile": asdict(hostile)}))
        log(f"wrote {args.dump}")
    figure = FIGURE if args.write else Path(tempfile.gettempdir()) / FIGURE.name
    plot(clean, hostile, figure)
    log(f"wrote {figure}")
    body = report(args, clean, hostile, kinds, info)
    print(body)
    if args.write:
        import model_bench  # lazy: torch; the one writer of BENCHMARKS.md sections

        model_bench.write_section(body, SECTION)
        log("wrote BENCHMARKS.md")


if __name__ == "__main__":
    main()
