"""Exchange benchmark: what compressed knowledge deltas cost and buy, on the wire and in rounds.

Usage:
    .venv/bin/python bench/exchange_bench.py            # full run, ~8 min on 2 cores
    .venv/bin/python bench/exchange_bench.py --quick    # every code path, fewer ticks, ~1.5 min
    .venv/bin/python bench/exchange_bench.py --write    # also rewrite its BENCHMARKS.md section

Figures, each measured in ONE run against baselines built here:
  1. the drone patrol scenario (same seed, one embedded Ray reused by every run): bytes per
     gossip round and final probe accuracy for each `gossip.compression` kind, against dense
     fp32 sharing and the isolated baseline; decentralized (ring) and coordinator topologies;
  2. gRPC throughput between two processes (deltas/s, MB/s) for a dense fp32 and a topk_int8
     delta of the default model's size, against serialization + verification alone in-process;
  3. rounds to consensus on ring / torus / random-regular graphs: plain gossip against the
     spectral prediction, and CHOCO-Gossip with topk_int8 at two step sizes.
Only the scenario's public knobs (compression kind and ratio) and the runner's byte counters are
used, so the figures follow whatever encoding protocols/ currently puts on the wire.
Progress goes to stderr, the tables to stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# One BLAS thread, as Ray gives its actors (OMP_NUM_THREADS=1): a 2-thread OpenBLAS team on 2
# shared cores waits on its descheduled thread, and the norm check in `wire.from_proto` (a 16k
# dot product, above OpenBLAS's threading threshold) then took milliseconds instead of
# microseconds in the driver's in-process baseline. Set before numpy loads OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: bench/ is on sys.path, the repo root is not

import model_bench  # noqa: E402  (one helper, one place)
from model_bench import best_time, fmt_bytes, machine, zones_kept  # noqa: E402

from protocols import wire  # noqa: E402
from protocols.compression import compress  # noqa: E402
from protocols.config import CompressionConfig, GraphConfig  # noqa: E402
from protocols.delta import Delta  # noqa: E402
from protocols.gossip import ChocoGossip, agent_name  # noqa: E402
from protocols.topology import build_graph, metropolis_weights, spectral_rho  # noqa: E402
from swarm.scenario import Scenario, load_scenario  # noqa: E402

BENCHMARKS_MD = REPO / "BENCHMARKS.md"
SECTION = (
    "## Knowledge exchange: compression, gRPC throughput, consensus (`bench/exchange_bench.py`)"
)
SCENARIO = REPO / "scenarios" / "drone_patrol.yaml"

# The acceptance goal for a compressed exchange.
GOAL_BYTES_X = 20.0  # at least 20x fewer bytes than dense fp32 sharing ...
GOAL_ACC_PTS = 2.0  # ... losing at most 2 points of final probe accuracy
CONSENSUS_TOL = 1e-3  # relative consensus error ||X - mean|| / ||X0 - mean0|| that counts as agreed
DIVERGED = 10.0  # relative error 10x its start: the iteration is diverging, stop
REF_GRPC = "python gRPC, one channel, 40 KB unary: ~2.4k msg/s, ~95 MB/s on loopback"
KEY = b"bench-key-".ljust(32, b".")  # HMAC key of the synthetic deltas (figures 2-3)
RPC_TIMEOUT_S = 60.0
SMALL_GAMMA = 0.2  # figure 3: the largest of 0.5 / 0.2 / 0.1 / 0.05 that agreed on ring 16


@dataclass(frozen=True)
class Variant:
    """One scenario run of figure 1."""

    label: str
    topology: str
    kind: str
    ratio: float


VARIANTS = (
    Variant("dense fp32", "decentralized", "none", 1.0),
    Variant("topk 0.1", "decentralized", "topk", 0.1),
    Variant("int8", "decentralized", "int8", 1.0),
    Variant("topk_int8 0.1", "decentralized", "topk_int8", 0.1),
    Variant("topk_int8 0.08 (scenario default)", "decentralized", "topk_int8", 0.08),
    Variant("topk_int8 0.05", "decentralized", "topk_int8", 0.05),
    Variant("dense fp32", "coordinator", "none", 1.0),
    Variant("topk_int8 0.08", "coordinator", "topk_int8", 0.08),
)


@dataclass(frozen=True)
class Settings:
    """Sizes and budgets of one benchmark run."""

    ticks: int | None
    """Scenario ticks of figure 1 (None: the scenario's own)."""
    grpc_target_s: float
    """Figure 2: each timed push loop is sized to last about this long."""
    repeats: int
    """Figure 2: best of this many timed loops."""
    concurrency: int
    """Figure 2: calls in flight on the one channel in the concurrent case."""
    dim: int
    """Figure 3: length of every agent's vector."""
    max_rounds: int
    """Figure 3: a run that has not agreed after this many rounds is reported as not agreed."""
    variants: tuple[Variant, ...]
    """Figure 1: the scenario runs."""


FULL = Settings(
    ticks=None,
    grpc_target_s=1.0,
    repeats=3,
    concurrency=4,
    dim=1000,
    max_rounds=2000,
    variants=VARIANTS,
)
QUICK = Settings(  # every code path: both topologies, dense and topk_int8
    ticks=60,
    grpc_target_s=0.25,
    repeats=2,
    concurrency=4,
    dim=1000,
    max_rounds=150,
    variants=(VARIANTS[0], VARIANTS[3], VARIANTS[5], VARIANTS[6]),
)

_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def variant_scenario(base: Scenario, v: Variant, ticks: int | None) -> Scenario:
    data = base.model_dump(mode="json")
    data["gossip"]["topology"] = v.topology
    data["gossip"]["compression"] = {"kind": v.kind, "ratio": v.ratio}
    data["ray"]["dashboard"] = False
    if ticks is not None:
        data["ticks"] = ticks
    return Scenario.model_validate(data)


def model_params(sc: Scenario) -> int:
    """Parameters per agent of the scenario's model (obs_dim 16, 5 classes: the drone patrol's
    feature sensor and event classes)."""
    from agents.yan.model import num_params, param_specs

    return num_params(param_specs(sc.model, 16, 5))


# ----------------------------------------------------------------------------------------------
# Figure 1: the drone patrol scenario, one run per compression variant


@dataclass
class RunRow:
    v: Variant
    rounds: int
    bytes_sent: int
    dense_bytes: int
    wire_bytes: int
    acc: float
    acc_min: float
    acc_iso: float
    consensus: float
    rejected: int
    wall_s: float


def bench_scenario(s: Settings, base: Scenario) -> list[RunRow]:
    from swarm.runner import Runner, new_run_dir

    p = model_params(base)
    rows = []
    with tempfile.TemporaryDirectory(prefix="exchange_bench-") as tmp:
        for v in s.variants:
            sc = variant_scenario(base, v, s.ticks)
            t0 = time.perf_counter()
            result = Runner(sc, new_run_dir(Path(tmp), sc)).run()
            m = result.summary["metrics"]
            row = RunRow(
                v=v,
                rounds=int(m["gossip/rounds"]),
                bytes_sent=int(m["gossip/bytes_sent"]),
                dense_bytes=int(m["gossip/dense_bytes"]),
                wire_bytes=int(m["gossip/wire_bytes"]),
                acc=float(m["learn/probe_acc"]),
                acc_min=float(m["learn/probe_acc_min"]),
                acc_iso=float(m["learn/probe_acc_isolated"]),
                consensus=float(m["learn/consensus_distance"]),
                rejected=int(m["gossip/deltas_rejected"]),
                wall_s=time.perf_counter() - t0,
            )
            # The dense reference the runner counts must be 4 bytes per parameter per message
            # the agents would send (2 ring neighbours each; 1 uplink each to the coordinator).
            msgs = sc.agents.count * (2 if v.topology == "decentralized" else 1)
            want = row.rounds * msgs * 4 * p
            if row.dense_bytes != want:
                raise SystemExit(
                    f"{v.topology} {v.label}: gossip/dense_bytes {row.dense_bytes:,} != "
                    f"{row.rounds} rounds x {msgs} messages x 4 x {p:,} params = {want:,}"
                )
            rows.append(row)
            log(
                f"scenario {v.topology:13s} {v.label:15s} {row.wall_s:5.1f} s: "
                f"{row.bytes_sent / max(row.rounds, 1):,.0f} B/round, acc {row.acc:.3f} "
                f"(isolated {row.acc_iso:.3f})"
            )
    return rows


# ----------------------------------------------------------------------------------------------
# Figure 2: gRPC throughput between two processes


def make_delta(p: int, kind: str, ratio: float, seed: int = 0) -> Delta:
    """A knowledge delta of p parameters compressed as the scenario would (Gaussian values, the
    scale of an online-learning step; the byte count depends only on p, kind and ratio)."""
    vec = np.random.default_rng(seed).normal(0.0, 1e-3, size=p).astype(np.float32)
    payload = compress(vec, CompressionConfig(kind=kind, ratio=ratio))  # type: ignore[arg-type]
    q = payload.decode()
    return Delta(
        sender=agent_name(1),
        round=0,
        base_version=0,
        layout="bench",
        payload=payload,
        norm=float(np.linalg.norm(q.astype(np.float64))),
        examples=16,
    )


class Endpoint:
    """One process of figure 2: a gossip gRPC server whose sink fully verifies and decodes every
    delta (`wire.from_proto`: HMAC, shape and norm checks) and then drops it, and a client that
    pushes one prepared DeltaBatch over and over. Ray runs it as an actor."""

    def __init__(self, p: int, max_message_bytes: int) -> None:
        from protocols.transport import GossipServicer, Peers, TrafficCounters, start_server

        self.p, self.max_bytes = p, max_message_bytes
        self.counters = TrafficCounters()
        self.accepted = 0
        self._lock = threading.Lock()
        servicer = GossipServicer(
            "bench",
            lambda m: wire.from_proto(m, key=KEY, num_params=p, layout="bench"),
            self._sink,
            self.counters,
        )
        self.server, port = start_server(
            "127.0.0.1", 0, gossip=servicer, max_message_bytes=max_message_bytes
        )
        self.address = f"127.0.0.1:{port}"
        self.peers = Peers(max_message_bytes, TrafficCounters())

    def _sink(self, deltas: list[Delta]) -> int:
        with self._lock:
            self.accepted += len(deltas)
        return len(deltas)

    def endpoint(self) -> str:
        return self.address

    def pid(self) -> int:
        return os.getpid()

    def received(self) -> dict[str, int]:
        return self.counters.snapshot()

    def push(self, address: str, batch_bytes: bytes, n: int, concurrency: int) -> float:
        """Seconds to push the batch n times to `address` with `concurrency` calls in flight
        (threads sharing the one channel), after one untimed call that opens the channel."""
        from swarm.proto.v1 import delta_pb2

        batch = delta_pb2.DeltaBatch.FromString(batch_bytes)
        self.peers.push(address, batch, RPC_TIMEOUT_S)
        counts = [n // concurrency + (t < n % concurrency) for t in range(concurrency)]

        def loop(k: int) -> None:
            for _ in range(k):
                self.peers.push(address, batch, RPC_TIMEOUT_S)

        workers = [threading.Thread(target=loop, args=(k,)) for k in counts[1:]]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        loop(counts[0])
        for w in workers:
            w.join()
        return time.perf_counter() - t0

    def close(self) -> None:
        self.peers.close()
        self.server.stop(grace=None)


@dataclass
class GrpcRow:
    label: str
    msg_bytes: int
    encode_s: float  # to_proto (encode + sign), one delta
    local_s: float  # serialize batch + parse + from_proto (verify + decode), one delta
    seq: tuple[float, int]  # (seconds per delta, n per loop), 1 call in flight
    conc: tuple[float, int]  # same, s.concurrency calls in flight


def bench_grpc(s: Settings, p: int, max_message_bytes: int) -> tuple[list[GrpcRow], dict]:
    import ray

    from swarm.proto.v1 import delta_pb2

    cls: Any = ray.remote(num_cpus=0)(Endpoint)
    sender, receiver = cls.remote(p, max_message_bytes), cls.remote(p, max_message_bytes)
    address = ray.get(receiver.endpoint.remote())
    pids = ray.get([sender.pid.remote(), receiver.pid.remote()])
    assert pids[0] != pids[1] != os.getpid(), "sender and receiver must be separate processes"
    rows, pushed = [], 0
    try:
        for label, kind, ratio in (
            ("dense fp32", "none", 1.0),
            ("topk_int8 0.1", "topk_int8", 0.1),
        ):
            delta = make_delta(p, kind, ratio)
            msg = wire.to_proto(delta, KEY)
            batch = delta_pb2.DeltaBatch(sender_node="shard-0", round=0, deltas=[msg])
            raw = batch.SerializeToString()
            # Check the in-process baseline against the real thing: it must decode to the delta.
            back = wire.from_proto(
                delta_pb2.DeltaBatch.FromString(raw).deltas[0],
                key=KEY,
                num_params=p,
                layout="bench",
            )
            assert np.array_equal(back.payload.decode(), delta.payload.decode())

            def local(raw: bytes = raw) -> None:
                for m in delta_pb2.DeltaBatch.FromString(raw).deltas:
                    wire.from_proto(m, key=KEY, num_params=p, layout="bench")

            def roundtrip(batch: Any = batch) -> None:
                local(batch.SerializeToString())

            # Best of many short repeats: other work shares the cores and comes in bursts.
            encode_s = best_time(lambda d=delta: wire.to_proto(d, KEY), 3 * s.repeats, 0.1)
            local_s = best_time(roundtrip, 3 * s.repeats, 0.1)
            timings = []
            for conc in (1, s.concurrency):
                # Size the loop from a short calibration so one loop lasts ~grpc_target_s.
                cal = ray.get(sender.push.remote(address, raw, 20, conc)) / 20
                n = max(20, int(s.grpc_target_s / max(cal, 1e-6)))
                best = math.inf
                for _ in range(s.repeats):
                    best = min(best, ray.get(sender.push.remote(address, raw, n, conc)) / n)
                pushed += (1 + 20) + s.repeats * (1 + n)  # each call opens with 1 untimed push
                timings.append((best, n))
            rows.append(GrpcRow(label, len(raw), encode_s, local_s, timings[0], timings[1]))
            log(
                f"grpc {label}: {len(raw):,} B/batch, in-process {1 / local_s:,.0f}/s, 1 call "
                f"{1 / timings[0][0]:,.0f}/s, {s.concurrency} calls {1 / timings[1][0]:,.0f}/s"
            )
        got = ray.get(receiver.received.remote())
    finally:
        ray.get([sender.close.remote(), receiver.close.remote()])
    # Every push must have arrived and passed verification, or the rates mean nothing.
    if got["deltas_accepted"] != pushed or got["deltas_rejected"]:
        raise SystemExit(f"figure 2: pushed {pushed} deltas, receiver counted {got}")
    return rows, got


# ----------------------------------------------------------------------------------------------
# Figure 3: rounds to consensus, plain gossip vs CHOCO-Gossip with topk_int8


GRAPHS = (
    ("ring 16", GraphConfig(kind="ring"), 16),
    ("8x8 torus", GraphConfig(kind="torus"), 64),
    ("random 4-regular 64", GraphConfig(kind="random_regular", degree=4), 64),
)


@dataclass
class ConsRow:
    graph: str
    n: int
    rho: float
    predicted: int
    method: str
    rounds: int | None  # None: did not agree within the cap (or diverged)
    final_err: float
    bytes_per_msg: float
    msgs_per_round: int
    wall_s: float


def consensus(
    w: np.ndarray, kind: str, ratio: float, gamma: float, dim: int, cap: int, seed: int
) -> tuple[int | None, float, float, float]:
    """Run CHOCO-Gossip with one node per agent, in process, until the relative consensus error
    drops below CONSENSUS_TOL. Returns (rounds or None, final error, mean signed message bytes,
    seconds). With kind none and gamma 1 this is plain gossip x <- W x (checked below)."""
    n = w.shape[0]
    x0 = np.zeros(dim, np.float32)  # the common init every public copy starts from
    nodes = [
        ChocoGossip(
            local=[i],
            weights=w,
            x0=x0,
            gamma=gamma,
            compression=CompressionConfig(kind=kind, ratio=ratio),  # type: ignore[arg-type]
            layout="bench",
            owner=lambda j: f"node-{j}",
        )
        for i in range(n)
    ]
    xs = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)  # (n, dim)
    plain = xs.astype(np.float64)
    err0 = float(np.linalg.norm(xs - xs.mean(0)))
    sizes: list[int] = []
    err, t0 = 1.0, time.perf_counter()
    for r in range(cap):
        outbox = [node.make_deltas(xs[i][None], r, [1])[0] for i, node in enumerate(nodes)]
        if r % 25 == 0:  # sample the signed wire size (it varies a little with the indices)
            sizes += [wire.to_proto(d, KEY).ByteSize() for d in outbox]
        for node in nodes:
            node.receive([outbox[j] for j in range(n) if node.known_sender(agent_name(j))])
        for i, node in enumerate(nodes):
            x = xs[i][None].copy()  # (1, dim)
            node.apply(x)
            xs[i] = x[0]
        if kind == "none" and gamma == 1.0 and r < 5:
            plain = w @ plain
            assert np.allclose(xs, plain, atol=1e-4), "CHOCO(identity, gamma 1) != W x"
        err = float(np.linalg.norm(xs - xs.mean(0))) / err0
        if err < CONSENSUS_TOL:
            return r + 1, err, float(np.mean(sizes)), time.perf_counter() - t0
        if not math.isfinite(err) or err > DIVERGED:
            break
    return None, err, float(np.mean(sizes)), time.perf_counter() - t0


def bench_consensus(s: Settings, gammas: tuple[float, ...]) -> list[ConsRow]:
    rows = []
    for name, cfg, n in GRAPHS:
        graph = build_graph(cfg, n, seed=7)
        w = metropolis_weights(graph)
        rho = spectral_rho(w)
        predicted = math.ceil(math.log(CONSENSUS_TOL) / math.log(rho))
        msgs = 2 * graph.number_of_edges()  # every agent sends its delta to each neighbour
        runs = [("plain gossip (dense fp32, gamma 1)", "none", 1.0, 1.0)] + [
            (f"CHOCO topk_int8 0.1, gamma {g:g}", "topk_int8", 0.1, g) for g in gammas
        ]
        for method, kind, ratio, gamma in runs:
            rounds, err, size, wall = consensus(w, kind, ratio, gamma, s.dim, s.max_rounds, 0)
            rows.append(ConsRow(name, n, rho, predicted, method, rounds, err, size, msgs, wall))
            log(
                f"consensus {name}: {method}: "
                + (f"{rounds} rounds" if rounds else f"not agreed, error {err:.3g}")
                + f" ({wall:.1f} s)"
            )
    return rows


# ----------------------------------------------------------------------------------------------
# Report


def fmt_rate(r: float) -> str:
    return f"{r:,.0f}" if r >= 100 else f"{r:.1f}"


def goal_verdict(bytes_x: float, pts: float) -> str:
    """pts = accuracy minus the dense run's, in points (negative = lost)."""
    fails = []
    if bytes_x < GOAL_BYTES_X:
        fails.append(f"{bytes_x:.1f}x < {GOAL_BYTES_X:g}x bytes")
    if -pts > GOAL_ACC_PTS:
        fails.append(f"{-pts:.1f} > {GOAL_ACC_PTS:g} points lost")
    return "**met**" if not fails else "**missed** (" + "; ".join(fails) + ")"


def report(
    args: argparse.Namespace,
    s: Settings,
    info: dict[str, str],
    base: Scenario,
    runs: list[RunRow],
    grpc_rows: list[GrpcRow],
    cons: list[ConsRow],
    gammas: tuple[float, ...],
) -> str:
    L: list[str] = []
    A = L.append
    cmd = (
        ".venv/bin/python bench/exchange_bench.py" + (" --quick" if args.quick else "") + " --write"
    )
    ticks = s.ticks or base.ticks
    p = model_params(base)
    A(SECTION)
    A("")
    A(f"Command: `{cmd}` · {info['date']} · {info['wall']:.0f} s wall")
    A("")
    A(
        f"Machine: {info['cores']} cores ({info['cpu']}), torch {info['torch']}, Python "
        f"{info['python']}; one embedded Ray (`num_cpus=2`) for figures 1-2, started once and "
        "reused by every run."
    )
    A("")

    # -- targets
    A("### Target: >= 20x fewer bytes than dense fp32 sharing, <= 2 points of accuracy lost")
    A("")
    A(
        f"`scenarios/drone_patrol.yaml` (seed {base.seed}, {base.agents.count} drones, "
        f"{ticks} ticks, a gossip round every {base.gossip.interval} ticks, gamma "
        f"{base.gossip.gamma:g}), one run per row, only `gossip.compression` (and the topology) "
        "changed. Bytes and accuracy are compared with the dense fp32 run of the same topology."
    )
    A("")
    A("| topology | compression | bytes vs dense | accuracy vs dense | verdict |")
    A("| --- | --- | ---: | ---: | --- |")
    dense = {r.v.topology: r for r in runs if r.v.kind == "none"}
    for r in runs:
        if r.v.kind == "none":
            continue
        d = dense[r.v.topology]
        bx = d.bytes_sent / r.bytes_sent
        pts = 100 * (r.acc - d.acc)
        A(f"| {r.v.topology} | {r.v.label} | {bx:.1f}x fewer | {pts:+.1f} pts | "
          f"{goal_verdict(bx, pts)} |")  # fmt: skip
    A("")

    # -- figure 1
    A(f"### 1. Drone patrol: bytes per round and final probe accuracy ({ticks} ticks)")
    A("")
    A(
        "Bytes are the runner's counters: `gossip/bytes_sent` counts every signed "
        "`KnowledgeDelta` once per recipient an agent would send it to as a standalone device "
        "(its ring neighbours, or the coordinator), divided by `gossip/rounds`; per agent = "
        f"that / {base.agents.count}. 'gRPC between shards' is `gossip/wire_bytes`, the "
        f"DeltaBatch bytes that actually crossed between the {base.n_shards} shard processes "
        "(neighbours on the same shard need no message). The coordinator rows count uplinks "
        "only (`gossip/bytes_sent` does not include the aggregate each agent downloads). "
        "Accuracy is `learn/probe_acc` at the end: balanced accuracy on "
        f"{base.metrics.probe_per_class} held-out windows per class, mean over the agents "
        "(min over agents in brackets); isolated = `learn/probe_acc_isolated`, shadow learners "
        "on the same observations that never share. Consensus distance = "
        "`learn/consensus_distance` (mean squared distance of the agents' parameters to their "
        "mean) at the end."
    )
    A("")
    A(
        "| topology | compression | bytes/round (swarm) | bytes/round per agent | gRPC between "
        "shards / round | vs dense | probe acc | vs dense | isolated | consensus distance |"
    )
    A("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in runs:
        d = dense[r.v.topology]
        per_round = r.bytes_sent / r.rounds
        bx = d.bytes_sent / r.bytes_sent
        A(
            f"| {r.v.topology} | {r.v.label} | {fmt_bytes(per_round)} | "
            f"{fmt_bytes(per_round / base.agents.count)} | {fmt_bytes(r.wire_bytes / r.rounds)} | "
            f"{'1x' if r is d else f'{bx:.1f}x fewer'} | {100 * r.acc:.1f} "
            f"({100 * r.acc_min:.1f}) | {'-' if r is d else f'{100 * (r.acc - d.acc):+.1f} pts'} | "
            f"{100 * r.acc_iso:.1f} | {r.consensus:.2e} |"
        )
    A("")
    rounds = sorted({r.rounds for r in runs})
    A(
        f"Every run: {'/'.join(map(str, rounds))} rounds, "
        f"{sum(r.rejected for r in runs)} deltas rejected; dense reference = 4 bytes x "
        f"{p:,} parameters per message (checked against `gossip/dense_bytes`). Wall per run: "
        + ", ".join(f"{r.wall_s:.0f} s" for r in runs)
        + "."
    )
    A("")

    # -- figure 2
    A("### 2. gRPC throughput between two processes")
    A("")
    A(
        f"Two Ray actor processes on 127.0.0.1, each with a gossip server (`start_server`); the "
        "sender pushes one prepared `DeltaBatch` holding one delta of the default model "
        f"({p:,} parameters) with `Peers.push` (unary `PushDeltas`, one channel), sequentially "
        f"or from {s.concurrency} threads sharing the channel. The receiver's servicer fully "
        "checks and decodes every delta (`wire.from_proto`: HMAC-SHA256, shape, norm) and then "
        "drops it (no CHOCO bookkeeping); every push is counted and must be accepted. "
        f"Best of {s.repeats} loops of ~{s.grpc_target_s:g} s. In-process = the same "
        "serialize, parse and `from_proto` with no network; encode + sign = `to_proto`, which "
        "the pushes do not repeat. MB = 2^20 bytes of serialized DeltaBatch."
    )
    A("")
    A(
        "| delta | batch bytes | encode + sign (to_proto) | in-process: serialize + verify "
        "| gRPC, 1 call in flight | gRPC, "
        f"{s.concurrency} in flight | network cost (1 call) |"
    )
    A("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    mb = 2**20
    for g in grpc_rows:

        def cell(sec: float, nbytes: int = g.msg_bytes) -> str:
            return f"{fmt_rate(1 / sec)}/s, {nbytes / sec / mb:,.1f} MB/s"

        A(
            f"| {g.label} | {g.msg_bytes:,} | {fmt_rate(1 / g.encode_s)}/s | {cell(g.local_s)} | "
            f"{cell(g.seq[0])} | {cell(g.conc[0])} | {g.seq[0] / g.local_s:.1f}x the "
            f"in-process time ({1e6 * (g.seq[0] - g.local_s):,.0f} us added) |"
        )
    A(f"| reference (REFERENCES.md) | 40 KB | | | {REF_GRPC} | | |")
    A("")

    # -- figure 3
    A(f"### 3. Rounds to consensus (relative error < {CONSENSUS_TOL:g}), vs the rho prediction")
    A("")
    A(
        f"One `ChocoGossip` node per agent, in process; every agent starts from a random normal "
        f"vector of dimension {s.dim} (seed 0), public copies from zeros; relative consensus "
        "error = ||X - mean|| / ||X0 - mean0||. Metropolis weights; rho = max(|lambda_2|, "
        "|lambda_n|) (`spectral_rho`); prediction for plain gossip = ceil(log(1e-3) / log(rho)), "
        "an asymptotic bound (the error falls at most as fast as rho^t once the slowest mode "
        "dominates, so a random start agrees a little sooner). Plain gossip = CHOCO with the "
        "identity compressor and gamma 1, checked equal to x <- W x on its first rounds. "
        f"'-' = not agreed within {s.max_rounds:,} rounds (error > 1 there: diverging), or "
        f"stopped once the error exceeded {DIVERGED:g}. Bytes to consensus = rounds x messages "
        "per round (one per directed edge) x mean signed message size; CHOCO's ratio is "
        "against plain gossip."
    )
    A("")
    A(
        "| graph | rho | predicted (plain) | method | rounds | vs predicted | message bytes "
        "| bytes to consensus | vs plain |"
    )
    A("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    plain = {c.graph: c for c in cons if c.method.startswith("plain")}
    for c in cons:
        total = c.rounds * c.msgs_per_round * c.bytes_per_msg if c.rounds else None
        pc = plain[c.graph]
        ptotal = pc.rounds * pc.msgs_per_round * pc.bytes_per_msg if pc.rounds else None
        vs = f"{total / ptotal:.2f}x" if (total and ptotal and c is not pc) else "-"
        A(
            f"| {c.graph} | {c.rho:.4f} | {c.predicted} | {c.method} | "
            + (f"{c.rounds:,}" if c.rounds else f"- (error {c.final_err:.3g})")
            + f" | {f'{c.rounds / c.predicted:.2f}x' if c.rounds else '-'} | "
            f"{c.bytes_per_msg:,.0f} | {fmt_bytes(total) if total else '-'} | {vs} |"
        )
    A("")

    notes = observations(runs, cons, gammas, base)
    if notes:
        A("### Observations")
        A("")
        L.extend(f"- {n}" for n in notes)
        A("")
    return "\n".join(L)


def observations(
    runs: list[RunRow], cons: list[ConsRow], gammas: tuple[float, ...], base: Scenario
) -> list[str]:
    """Facts a reader should not have to dig out of the tables (generated from the numbers)."""
    out = []
    n_probe = base.metrics.probe_per_class * 5
    out.append(
        f"Accuracy differences come from one seed each: one probe window is "
        f"{100 / n_probe:.2f} points of one agent's accuracy, and the runs diverge as soon as "
        "the shared weights differ (the drones act on their predictions), so differences of a "
        "point or two are within what another seed could change."
    )
    dec = [r for r in runs if r.v.topology == "decentralized"]
    d = next(r for r in dec if r.v.kind == "none")
    worst = max(dec, key=lambda r: r.consensus)
    if worst.consensus > 10 * d.consensus and worst is not d:
        out.append(
            f"Consensus distance at the end: {worst.v.label} {worst.consensus:.2e} vs dense "
            f"{d.consensus:.2e} ({worst.consensus / max(d.consensus, 1e-30):,.0f}x): with "
            "compression the agents' models stay further apart."
        )
    bad = [c for c in cons if c.method.startswith("CHOCO") and c.rounds is None and c.final_err > 1]
    if bad:
        by_gamma: dict[str, list[str]] = {}
        for c in bad:
            by_gamma.setdefault(c.method.split("gamma ")[1], []).append(c.graph)
        where = "; ".join(f"gamma {g} on {', '.join(gs)}" for g, gs in by_gamma.items())
        out.append(
            f"CHOCO-Gossip with topk_int8 0.1 diverges (error above its start) at {where}; the "
            f"scenario default gamma is {base.gossip.gamma:g}. CHOCO's consensus step must "
            "shrink with the spectral gap and with the compressor's quality omega (Koloskova et "
            "al. 2019, Theorem 2); a 10% top-k needs a step well below 1."
        )
    ok = [c for c in cons if c.method.startswith("CHOCO") and c.rounds]
    if ok:
        slow = [c.rounds / plain_rounds(cons, c.graph) for c in ok if c.rounds]
        best = min(ok, key=lambda c: (c.rounds or 0) / plain_rounds(cons, c.graph))
        out.append(
            f"Where CHOCO agrees, it needs {min(slow):.1f}-{max(slow):.1f}x the rounds of plain "
            f"gossip (best: {best.graph}, {best.method}), about 1/gamma: the consensus step, not "
            "the compressor, sets the pace."
        )
    return out


def plain_rounds(cons: list[ConsRow], graph: str) -> int:
    c = next(c for c in cons if c.graph == graph and c.method.startswith("plain"))
    return c.rounds or 1


def write_section(body: str) -> None:
    """This script's `##` section of BENCHMARKS.md, through model_bench's writer."""
    model_bench.write_section(body, SECTION)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"{QUICK.ticks} ticks, short loops")
    ap.add_argument("--write", action="store_true", help="rewrite this section of BENCHMARKS.md")
    args = ap.parse_args()
    s = QUICK if args.quick else FULL
    info = machine() | {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    base = zones_kept(load_scenario(SCENARIO))
    # The scenario's CHOCO step, 1 (plain gossip's), and a smaller one that can agree with a
    # 10% top-k (Koloskova et al. 2019 need gamma well below 1 for aggressive compressors).
    gammas = tuple(dict.fromkeys((base.gossip.gamma, 1.0, SMALL_GAMMA)))

    import ray
    import torch

    torch.set_num_threads(1)  # the driver only times protobuf and numpy; the actors use 1 each
    log("figure 3: consensus rounds (in process)")
    cons = bench_consensus(s, gammas)
    model_bench.start_ray(base)
    try:
        log(f"figure 1: {len(s.variants)} drone patrol runs")
        runs = bench_scenario(s, base)
        log("figure 2: gRPC throughput between two processes")
        grpc_rows, _ = bench_grpc(s, model_params(base), int(base.gossip.max_message_mb * 2**20))
    finally:
        ray.shutdown()
    info["wall"] = time.perf_counter() - _T0  # type: ignore[assignment]

    body = report(args, s, info, base, runs, grpc_rows, cons, gammas)
    print(body)
    if args.write:
        write_section(body)
        log(f"wrote {BENCHMARKS_MD.relative_to(REPO)}")


if __name__ == "__main__":
    main()
