"""Soak benchmark: the drone patrol under every fault at once for a long run, and whether any
process's memory grows beyond a stated bound (issue 8).

Usage:
    .venv/bin/python bench/soak_bench.py --minutes 2           # development run, ~5 min in all
    .venv/bin/python bench/soak_bench.py --write               # 20-minute soak, ~25-30 min in
                                                               # all; rewrites its BENCHMARKS.md
                                                               # section
    .venv/bin/python bench/soak_bench.py --dump F.json         # also keep every measurement
    .venv/bin/python bench/soak_bench.py --report-from F.json  # report (and plot) them again

Runs scenarios/drone_patrol.yaml (12 drones, 3 AgentShards of 4) through the real Runner on one
embedded Ray started here (2 CPUs, no dashboard), with the isolated twins off, a checkpoint
every 100 ticks and a `faults:` section that injects everything at once: 20% of the messages
dropped, 5% duplicated, 5% delayed two rounds; a two-way partition of 40 ticks every ~T/8
ticks; and shard kills spread over the middle of the run, every shard twice (Ray restarts the
actor, which restores its agents from the last checkpoint).

  1. Calibration: a 150-tick run with the same faults (one kill) measures ticks per wall
     second, the set-up time and a restart; the soak's tick count T is chosen from them so the
     soak lasts about --minutes of wall time.
  2. The soak: a sampler thread reads, every SAMPLE_S seconds, the memory of every process
     descended from this one (the embedded Ray's raylet and gcs_server are our children, its
     workers the raylet's) from /proc: RSS, PSS and USS (private pages, what psutil calls
     uss; psutil is not a dependency of this project). Processes are summed by role, not by
     pid, since a killed shard comes back as a new process: driver, world (ray::WorldHost),
     shards (ray::AgentShard), ray system (raylet, gcs_server with the object store inside
     the raylet, Ray's agents and log monitor) and other workers (idle or starting). The
     run's tick at each sample comes from the Runner's on_tick callback.
  3. Verdict: the mean of each role over an early window (after warm-up: 15-30% of the tick
     loop, about minutes 3-6 of 20) against the last 15% (minutes 17-20), with the bound
     BOUND_FRAC / BOUND_MB stated before the run; plus each process's own RSS slope, which a
     restart cannot hide; and what grows by design (per-tick bookkeeping), estimated in bytes
     per tick from the real objects.
  4. Unless --no-compare: a fault-free run of the same scenario for COMPARE_TICKS ticks, its
     probe accuracy and consensus distance beside the soak's at the same ticks (the shipped
     scenario runs 600 ticks; a soak runs 20 times longer, and whether the swarm stays stable
     that long, with or without faults, is part of what a soak finds).

Also reported: ticks, real-time factor, every kill with its restart time and the restored
agents' accuracy change, and the message accounting identity. The memory plot goes to
bench/figures/soak_memory.png with --write (else to the temp directory). Progress to stderr,
the report to stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# One BLAS thread, as Ray gives its actors (see exchange_bench.py). Set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: bench/ is on sys.path, the repo root is not

import model_bench  # noqa: E402  (one helper, one place)
import procs  # noqa: E402  (the /proc readers scale_bench.py uses too)
from model_bench import machine, zones_kept  # noqa: E402
from procs import Memory  # noqa: E402

from swarm.scenario import Scenario, load_scenario  # noqa: E402

BENCHMARKS_MD = model_bench.BENCHMARKS_MD
SECTION = "## Soak: drone patrol under faults, memory over a long run (`bench/soak_bench.py`)"
SCENARIO = REPO / "scenarios" / "drone_patrol.yaml"
FIGURE = REPO / "bench" / "figures" / "soak_memory.png"
OBJECT_STORE_MB = 256

SAMPLE_S = 5.0  # memory sampling period: 240 samples in 20 minutes, each /proc pass < 50 ms
EARLY = (0.15, 0.30)  # after warm-up, as fractions of the tick loop (minutes 3-6 of 20)
LATE = (0.85, 1.00)  # the last 15% (minutes 17-20 of 20)
# The bound, fixed before the run: the total RSS of every process of the run grows between the
# two windows by at most 5% of the early window's AND at most 100 MB. 100 MB is ~4.5% of the
# ~2.2 GB the run holds (development runs), over 10x what the per-tick bookkeeping adds
# between the windows (~1 KB per tick, reported below), and what a leak of ~15 KB per tick,
# or ~10 KB per gossip message (~1.6 per tick), would add over the ~7,000 ticks between them.
BOUND_FRAC = 0.05
BOUND_MB = 100.0
KILLS_PER_SHARD = 2
# Kills well between the two windows, so both see 3 settled shards: kills are placed by tick
# and the windows by wall time, and in the 2026-11-29 run a slower second half brought the
# last kill (at 0.75 of the ticks) to 10 s before the last window.
KILL_SPAN = (0.38, 0.70)
# A restarted shard is back to its settled size within a sample or two of its restart (the
# plot): samples closer to a kill than this (after the restart) are "resettling".
RESETTLE_S = 30.0
PARTITION_TICKS = 40  # 20 simulated seconds, 8 gossip rounds cut
CHECKPOINT_EVERY = 100
CALIBRATE_TICKS = 150
COMPARE_TICKS = 2000  # long enough to see whether the fault-free swarm stays stable
COMPARE_AT = (600, 1000, 1500, 2000)  # 600: the shipped scenario's length
MESSAGES = {"drop": 0.2, "duplicate": 0.05, "delay": 0.05, "delay_rounds": 2}
MIN_SLOPE_MIN = 3.0  # minutes of samples before a process's slope is worth stating
# Ray's own default of task_events_max_num_task_in_gcs, the task events its GCS stores: the
# cap of the soaks recorded before the scenario's `ray.task_events_kept` set it.
RAY_TASK_EVENTS_DEFAULT = 100_000
ROLES = ("driver", "world", "shards", "ray system", "other workers")

# Found by this benchmark (2026-11-29) and fixed in 7dca6eb (swarm/shard.py); kept so a
# report that shows the gap again says where to look.
KNOWN_ACCOUNTING_GAP = (
    "A gap earlier soaks found when kills met delay faults (unaccounted -2 / +3) was fixed in "
    "7dca6eb: a restarted shard revived the messages held at its checkpoint, which the dead "
    "process had already sent, and those the dead process held vanished. If it shows again, "
    "look at `Networked.load_state` in swarm/exchange.py and `AgentShard.load_traffic` in "
    "swarm/shard.py."
)

# Found by this benchmark (2026-11-29) and fixed in 5441e6f: the report says it either way, so
# a reader of a diverging or a steady soak knows what the step size did before.
DIVERGENCE_HISTORY = (
    "History: up to 5441e6f the scenario's CHOCO step was `gossip.gamma: 0.5`, too large for "
    "its compressor (`topk_int8`, ratio 0.08). The soak then diverged (consensus distance "
    "1.2e12-fold from its low, not finite from tick 6140, accuracy at chance), and so did the "
    "scenario without faults (152-fold from tick 960 to 2000). Fault-free 2000-tick runs (seed "
    "7) stayed flat with gamma 0.2 (2.12 / 2.15 / 2.08 / 1.66 at ticks 500 / 1000 / 1500 / "
    "2000) and with dense deltas at 0.5 (0.58 / 0.63 / 0.51 / 0.46), as Koloskova et al. 2019 "
    "predict for aggressive compressors; gamma 0.3, the default now, stayed flat over 3,000 "
    "fault-free ticks (seed 1, 1.3 at the end, probe accuracy 0.876)."
)

_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ---- the scenario -----------------------------------------------------------------------------


def faults_for(ticks: int, n_shards: int, kills_per_shard: int) -> dict[str, Any]:
    """The faults section of a soak of `ticks` ticks: message faults throughout, a partition
    every ~ticks/8, and `kills_per_shard` kills of every shard spread over KILL_SPAN."""
    n_part = max(2, min(8, ticks // 250))
    period = ticks / n_part
    partitions = []
    for i in range(n_part):
        start = 5 * round(period * (i + 0.5) / 5)  # on a gossip round
        partitions.append({"from_tick": start, "to_tick": start + PARTITION_TICKS, "split": 2})
    n_kill = kills_per_shard * n_shards
    at = np.linspace(KILL_SPAN[0] * ticks, KILL_SPAN[1] * ticks, n_kill).tolist()
    kills = []
    for i, t in enumerate(at):
        tick = 10 * round(t / 10)
        # 20 ticks or more past a checkpoint and 10 before the next: the restored shard loses
        # the learning since its checkpoint, as after a real crash
        tick += {0: 30, 10: 20, 90: 40}.get(tick % CHECKPOINT_EVERY, 0)
        kills.append({"shard": i % n_shards, "at_tick": int(max(tick, CHECKPOINT_EVERY + 30))})
    return {"messages": dict(MESSAGES), "partitions": partitions, "kill": kills}


def soak_scenario(
    base: Scenario, ticks: int, faults: dict[str, Any] | None, every: int = CHECKPOINT_EVERY
) -> Scenario:
    data = base.model_dump(mode="json")
    data["ticks"] = ticks
    data["baseline"]["isolated"] = False
    data["ray"]["dashboard"] = False
    data["checkpoint"] = {"every_ticks": every}
    if faults is not None:
        data["faults"] = faults
    return Scenario.model_validate(data)


# ---- memory sampling --------------------------------------------------------------------------


def role_of(pid: int, driver: int) -> tuple[str, str]:
    """(role, short name) of one process of the run."""
    if pid == driver:
        return "driver", "driver"
    cmd = " ".join(procs.cmdline(pid)).strip()
    if cmd.startswith("ray::AgentShard"):
        return "shards", "ray::AgentShard"
    if cmd.startswith("ray::WorldHost"):
        return "world", "ray::WorldHost"
    if cmd.startswith("ray::IDLE"):
        return "other workers", "ray::IDLE"
    if cmd.startswith("ray::"):
        return "ray system", cmd.split()[0]
    exe = os.path.basename(cmd.split()[0]) if cmd else "?"
    if exe.startswith("python"):  # Ray's Python helpers: name them by their script
        script = next((a for a in cmd.split()[1:] if a.endswith(".py")), exe)
        exe = "/".join(Path(script).parts[-2:])
        if exe.startswith("workers/"):  # a worker starting, before it names itself ray::...
            return "other workers", exe
    return "ray system", exe


@dataclass
class Sample:
    t: float
    """Seconds since the soak started."""
    tick: int
    """The last tick the Runner reported done."""
    procs: list[tuple[int, str, str, Memory]]
    """(pid, role, name, memory) of every process of the run."""

    def total(self, role: str | None = None, kind: str = "rss", name: str | None = None) -> float:
        """MB of `role` (None: all; `name`: only processes of that name); `kind` a Memory field:
        "rss", "pss" or "uss"."""
        return (
            sum(
                getattr(mem, kind)
                for _, r, n, mem in self.procs
                if (role is None or r == role) and (name is None or n == name)
            )
            / 2**20
        )


@dataclass
class Sampler:
    """Reads the memory of this process's tree every SAMPLE_S seconds on a thread."""

    period: float = SAMPLE_S
    samples: list[Sample] = field(default_factory=list)
    names: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    tick: int = 0
    ticks: list[tuple[float, int]] = field(default_factory=list)
    """(seconds since the start, tick) of every on_tick call."""
    infos: list[tuple[float, str]] = field(default_factory=list)
    """(seconds since the start, text) of every on_info call."""
    wall0: float = 0.0
    """time.time() at the start, to place the GCS log's timestamps."""
    gcs_log_dir: str = ""
    """The log directory of our gcs_server (from its --log_dir argument)."""

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.t0 = time.perf_counter()

    def on_tick(self, tick: int) -> None:
        self.tick = tick + 1  # the Runner reports a tick index; tick + 1 are done
        self.ticks.append((time.perf_counter() - self.t0, self.tick))

    def on_info(self, text: str) -> None:
        self.infos.append((time.perf_counter() - self.t0, text))

    def kill_times(self, kills: list[dict[str, Any]]) -> list[float]:
        """Second each kill started: the Runner reports a kill once the shard is back
        (on_info), `restart_s` after it killed it; on_tick lags the submitted ticks by up to
        MAX_TICKS_IN_FLIGHT and stalls during the restart, so it cannot date a kill."""
        back = [t for t, text in self.infos if text.startswith("faults: killed")]
        return [t - k["restart_s"] for t, k in zip(back, kills, strict=True)]

    def start(self) -> None:
        self.t0, self.wall0 = time.perf_counter(), time.time()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.take()  # one last sample, after the run

    def take(self) -> None:
        me = os.getpid()
        seen = []
        for pid in procs.descendants(me):
            mem = procs.memory(pid)
            if mem is None:
                continue
            role, name = role_of(pid, me)
            self.names[role].add(name)
            seen.append((pid, role, name, mem))
            if name == "gcs_server" and not self.gcs_log_dir:
                self.gcs_log_dir = next(
                    (a.split("=", 1)[1] for a in procs.cmdline(pid) if a.startswith("--log_dir=")),
                    "",
                )
        self.samples.append(Sample(time.perf_counter() - self.t0, self.tick, seen))

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self.take()

    def state(self) -> dict[str, Any]:
        """Everything recorded, as JSON (`--dump`)."""
        return {
            # per process [pid, role, name, [RSS, PSS, USS]]: a Memory is written as a list in
            # its field order, which older dumps have too
            "samples": [[x.t, x.tick, x.procs] for x in self.samples],
            "names": {k: sorted(v) for k, v in self.names.items()},
            "ticks": self.ticks,
            "infos": self.infos,
            "wall0": self.wall0,
            "gcs_log_dir": self.gcs_log_dir,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Sampler:
        out = cls()
        out.samples = [
            Sample(t, tick, [(p, r, n, Memory(*m)) for p, r, n, m in seen])
            for t, tick, seen in state["samples"]
        ]
        out.names = defaultdict(set, {k: set(v) for k, v in state["names"].items()})
        out.ticks = [tuple(x) for x in state["ticks"]]
        out.infos = [tuple(x) for x in state["infos"]]
        out.wall0, out.gcs_log_dir = state["wall0"], state["gcs_log_dir"]
        return out


# The GCS prints its state every minute (gcs_server.out), the task events it stores among it.
_GCS_STATE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*Gcs Debug state:", re.M)
_GCS_STORED = re.compile(r"Current num of task events stored: (\d+)")


def gcs_task_events(log_dir: str, wall0: float) -> list[tuple[float, int]]:
    """(seconds since wall0, task events the GCS stores) from each of its debug dumps."""
    text = procs.read(os.path.join(log_dir, "gcs_server.out")) if log_dir else ""
    out = []
    stamps = list(_GCS_STATE.finditer(text))
    for i, stamp in enumerate(stamps):
        end = stamps[i + 1].start() if i + 1 < len(stamps) else len(text)
        stored = _GCS_STORED.search(text, stamp.end(), end)
        if stored:
            local = time.mktime(time.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S"))
            out.append((local + int(stamp.group(2)) / 1000 - wall0, int(stored.group(1))))
    return out


# ---- bookkeeping that grows by design ------------------------------------------------------


def deep_size(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of a row of plain Python containers and numbers (sys.getsizeof, recursively)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        size += sum(deep_size(v, seen) for v in obj)
    return size


def bookkeeping(rows: list[dict[str, Any]], n_agents: int, interval: int) -> dict[str, float]:
    """Bytes per tick kept for the whole run, by design: the world's positions (trajectory
    plot) and decisions (replay on resume), and the driver's metrics rows."""
    ptr = 8  # one list slot
    traj = sys.getsizeof(np.zeros((n_agents, 3), np.float32)) + ptr  # positions() is float32
    dec = sys.getsizeof(np.zeros(n_agents, np.int64)) + ptr
    row = float(np.mean([deep_size(r) for r in rows[-10:]])) + ptr
    return {
        "world_trajectory": traj,
        "world_decisions": dec,
        "driver_row": row,
        "driver_per_tick": row / interval,
        "world_per_tick": traj + dec,
    }


# ---- runs -------------------------------------------------------------------------------------


@dataclass
class Soak:
    ticks: int
    faults: dict[str, Any]
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    sampler: Sampler
    wall_s: float
    infos: list[str]
    gcs_events: list[tuple[float, int]] = field(default_factory=list)
    """(seconds since the soak's start, task events the GCS stores), once a minute."""
    task_events_cap: int = 0
    """Ray's task_events_max_num_task_in_gcs as the driver read it in this run (0: not
    recorded): the cap in force."""
    task_events_kept: int | None = None
    """The soak scenario's `ray.task_events_kept`, the cap the Runner asks of an embedded Ray
    it starts (None: a dump from before it was recorded, whose runs had Ray's default)."""


def run(sc: Scenario, tmp: Path, sampler: Sampler | None = None) -> tuple[Any, float, list[str]]:
    from swarm.runner import Runner, new_run_dir

    infos: list[str] = []

    def on_info(text: str) -> None:
        infos.append(text)
        if sampler is not None:
            sampler.on_info(text)
        log(text)

    kwargs: dict[str, Any] = {"on_info": on_info}
    if sampler is not None:
        kwargs["on_tick"] = sampler.on_tick
        sampler.start()
    t0 = time.perf_counter()
    try:
        result = Runner(sc, new_run_dir(tmp, sc), **kwargs).run()
    finally:
        if sampler is not None:
            sampler.stop()
    return result, time.perf_counter() - t0, infos


def calibrate(base: Scenario, tmp: Path) -> dict[str, float]:
    """Ticks per wall second of the faulted scenario, its set-up time and one restart."""
    faults = {
        "messages": dict(MESSAGES),
        "partitions": [{"from_tick": 60, "to_tick": 100, "split": 2}],
        "kill": [{"shard": 0, "at_tick": 120}],
    }
    sc = soak_scenario(base, CALIBRATE_TICKS, faults, every=50)
    clock = Sampler(period=3600.0)  # only its tick clock: one sample at the end
    result, wall, _ = run(sc, tmp, clock)
    ticks = np.array(clock.ticks)
    # from tick 20 on: the first ticks pay torch's first calls and gRPC connections
    late = ticks[ticks[:, 1] >= 20]
    restart = float(sum(k["restart_s"] for k in result.summary["faults"]["kills"]))
    rate = (late[-1, 1] - late[0, 1]) / max(late[-1, 0] - late[0, 0] - restart, 1e-9)
    setup = float(ticks[0, 0])
    return {
        "ticks_per_s": float(rate),
        "setup_s": setup,
        "tail_s": wall - float(ticks[-1, 0]),  # after the last tick: summary, plots
        "restart_s": restart,
        "wall_s": wall,
    }


def soak(base: Scenario, tmp: Path, minutes: float, cal: dict[str, float]) -> Soak:
    n_kill = KILLS_PER_SHARD * base.n_shards
    budget = minutes * 60 - cal["setup_s"] - cal["tail_s"] - n_kill * cal["restart_s"]
    ticks = max(400, 10 * round(cal["ticks_per_s"] * budget / 10))
    faults = faults_for(ticks, base.n_shards, KILLS_PER_SHARD)
    log(
        f"soak: {ticks} ticks ({cal['ticks_per_s']:.2f} ticks/s calibrated) for ~{minutes:g} "
        f"min; {len(faults['partitions'])} partitions, kills at "
        + ", ".join(f"s{k['shard']}@{k['at_tick']}" for k in faults["kill"])
    )
    sampler = Sampler()
    sc = soak_scenario(base, ticks, faults)
    result, wall, infos = run(sc, tmp, sampler)
    import ray._raylet

    return Soak(
        ticks,
        faults,
        result.summary,
        result.rows,
        sampler,
        wall,
        infos,
        gcs_task_events(sampler.gcs_log_dir, sampler.wall0),
        # Ray's config, as the driver read it (RAY_* environment variables included)
        int(ray._raylet.Config.task_events_max_num_task_in_gcs()),  # type: ignore[attr-defined]
        task_events_kept=sc.ray.task_events_kept,
    )


# ---- analysis ---------------------------------------------------------------------------------


def ticking(sampler: Sampler) -> tuple[float, float]:
    """(first, last) second of the tick loop: the windows are fractions of it, so neither the
    actors' start-up nor their close after the last tick falls in one."""
    return sampler.ticks[0][0], sampler.ticks[-1][0]


def window(samples: list[Sample], phase: tuple[float, float], frac: tuple[float, float]):
    lo, hi = (phase[0] + f * (phase[1] - phase[0]) for f in frac)
    return [s for s in samples if lo <= s.t <= hi]


def mean_of(
    samples: list[Sample], role: str | None, kind: str = "rss", name: str | None = None
) -> float:
    return float(np.mean([s.total(role, kind, name) for s in samples])) if samples else np.nan


def slope(pts: list[tuple[float, float]]) -> tuple[float, float]:
    """(minutes covered, least-squares slope in MB per hour) of (seconds, MB) points."""
    t, m = np.array(pts).T
    return (t[-1] - t[0]) / 60, float(np.polyfit(t / 3600, m, 1)[0])


def slopes(samples: list[Sample], span: tuple[float, float], role: str):
    """Per process of `role`: (pid, minutes, RSS slope in MB per hour) over `span` (seconds),
    skipping each process's first minute (a restarted shard loads its checkpoint then);
    processes sampled for less than MIN_SLOPE_MIN minutes are left out."""
    series: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for s in samples:
        for pid, r, _, mem in s.procs:
            if r == role:
                series[pid].append((s.t, mem.rss / 2**20))
    out = []
    for pid, pts in series.items():
        first = pts[0][0]
        pts = [(t, m) for t, m in pts if max(span[0], first + 60) <= t <= span[1]]
        if len(pts) > 2 and pts[-1][0] - pts[0][0] >= 60 * MIN_SLOPE_MIN:
            out.append((pid, *slope(pts)))
    return sorted(out, key=lambda x: -x[1])


def plot(s: Soak, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = s.sampler.samples
    t = np.array([x.t for x in samples]) / 60
    fig, ax = plt.subplots(figsize=(11, 5.5))
    for role in ROLES:
        y = np.array([x.total(role) for x in samples])
        if y.max() > 0:
            ax.plot(t, y, label=role, lw=1.4)
    gcs = [x.total("ray system", name="gcs_server") for x in samples]
    ax.plot(t, gcs, label="· gcs_server", color="tab:red", lw=1, ls="--")
    ax.plot(t, [x.total() for x in samples], label="total", color="black", lw=1.8)
    pss = [x.total(kind="pss") for x in samples]
    ax.plot(t, pss, label="total PSS", color="black", lw=1, ls="--")
    t0, t1 = ticking(s.sampler)
    for lo, hi in (EARLY, LATE):
        ax.axvspan((t0 + lo * (t1 - t0)) / 60, (t0 + hi * (t1 - t0)) / 60, color="0.9", zorder=0)
    top = ax.get_ylim()[1]
    kills = s.summary["faults"]["kills"]
    for k, t_kill in zip(kills, s.sampler.kill_times(kills), strict=True):
        x = t_kill / 60
        ax.axvline(x, color="dimgray", lw=0.8, ls=":")
        ax.text(x, top, f" kill s{k['shard']}", color="dimgray", fontsize=7, rotation=90, va="top")
    ax.set_xlabel("wall time (min)")
    ax.set_ylabel("RSS (MB)")
    ax.set_title(
        f"Soak: drone patrol, {s.ticks} ticks under faults; memory by role "
        "(grey: the windows compared)"
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def gcs_lines(s: Soak, base: Scenario, early: list[Sample], late: list[Sample]) -> list[str]:
    """What the GCS's growth is: its RSS against the task events it stores (its own log), and
    where the cap on those events stops it."""
    loop = [(t, n) for t, n in s.gcs_events if s.sampler.ticks[0][0] <= t <= s.sampler.ticks[-1][0]]
    gcs = [x.total("ray system", name="gcs_server") for x in s.sampler.samples]
    pts = [(n, float(np.interp(t, [x.t for x in s.sampler.samples], gcs))) for t, n in loop]
    if len(pts) < 3:
        return ["(The GCS log gave too few task-event counts for a fit.)"]
    n, mb = np.array(pts).T
    per_event, base_mb = np.polyfit(n, mb, 1)
    r2 = 1 - np.sum((mb - (base_mb + per_event * n)) ** 2) / np.sum((mb - mb.mean()) ** 2)
    # the cap: the scenario's (a dump without it: Ray's default), unless Ray says otherwise
    kept = s.task_events_kept
    asked = RAY_TASK_EVENTS_DEFAULT if kept is None else kept
    cap = s.task_events_cap or asked
    stored = int(max(n))
    # events per tick while the store fills (at the cap the count stays put)
    filling = [(t, k) for t, k in loop if k < cap]
    ticks_at = np.interp([t for t, _ in filling], *np.array(s.sampler.ticks).T)
    per_tick = np.polyfit(ticks_at, [k for _, k in filling], 1)[0] if len(filling) >= 2 else 0.0
    if kept is None:
        source = (
            "Ray's default `task_events_max_num_task_in_gcs`: the run predates the scenario's "
            f"`ray.task_events_kept`, now {base.ray.task_events_kept:,} in {SCENARIO.name}, "
            "which the Runner passes to an embedded Ray it starts"
        )
    elif cap == kept:
        source = (
            "the scenario's `ray.task_events_kept`, which the Runner passes to Ray as "
            "`task_events_max_num_task_in_gcs`"
        )
    else:
        source = (
            "`task_events_max_num_task_in_gcs` as this run's Ray had it, not the scenario's "
            f"`ray.task_events_kept` of {kept:,}: the Runner passes that only to a Ray it "
            "starts itself, and this benchmark starts Ray before the Runner"
        )
    at_cap = base_mb + per_event * cap
    if stored < cap:
        end = (
            f"so it should level off at about {at_cap:.0f} MB (extrapolated) after "
            f"~{cap / per_tick:,.0f} ticks of this scenario. That is bounded bookkeeping, but "
            f"Ray's, not ours, and this run ended before the cap (it stored at most "
            f"{stored:,}), still climbing."
        )
    else:
        when = f" after ~{cap / per_tick:,.0f} ticks of this scenario" if per_tick > 0 else ""
        gcs_mb = [mean_of(w, "ray system", name="gcs_server") for w in (early, late)]
        end = (
            f"which it reached{when} (Ray's bookkeeping, not ours): at the cap the fit gives "
            f"about {at_cap:.0f} MB; the gcs_server's RSS averaged {gcs_mb[0]:.0f} MB over the "
            f"early window and {gcs_mb[1]:.0f} MB over the last."
        )
    rest = [mean_of(w, None) - mean_of(w, "ray system", name="gcs_server") for w in (early, late)]
    return [
        f"Where the ray system's growth goes: gcs_server RSS = {base_mb:.0f} MB + "
        f"**{per_event * 2**20 / 1024:.1f} KB per task event it stores** (least squares over "
        f"{len(pts)} of the once-a-minute state dumps in its own log, gcs_server.out; "
        f"R² = {r2:.3f})"
        + (
            f", and it stored {per_tick:.1f} more events per tick (the `act`, `step`, `share`, "
            "`merge`, `measure` and `checkpoint` calls)"
            if per_tick > 0
            else ""
        )
        + ". The GCS keeps every task's state and profile events for the dashboard and the "
        f"state API up to a cap, then overwrites the oldest; this run's cap was {cap:,} "
        f"({source}), {end} Without "
        f"gcs_server the run grew {rest[1] - rest[0]:+.1f} MB "
        f"({100 * (rest[1] - rest[0]) / rest[0]:+.1f}%) between the windows (not the "
        "verdict, which counts every process)."
    ]


def learning_lines(rows: list[dict[str, Any]], clean: dict[str, Any] | None) -> list[str]:
    """Probe accuracy and consensus distance over the soak (and the fault-free run beside
    it), and whether the swarm diverged."""
    peak = max(rows, key=lambda r: r["learn/probe_acc"])
    base: dict[int, list[float]] = {int(r[0]): r[1:] for r in clean["rows"]} if clean else {}
    pick = {rows[int(i)]["tick"] for i in np.linspace(0, len(rows) - 1, 9)} | {peak["tick"]}
    pick |= {t for t in COMPARE_AT if t in base}

    def fmt(d: float | None) -> str:
        return "nan" if d is None or not np.isfinite(d) else f"{d:.3g}"

    out = [
        "| tick | soak: probe acc (mean) | min agent | consensus distance | "
        "no faults: probe acc | min agent | consensus distance |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if r["tick"] in pick:
            b = base.get(r["tick"])
            ref = f"{b[0]:.3f} | {b[1]:.3f} | {fmt(b[2])}" if b else "| |"
            out.append(
                f"| {r['tick']} | {r['learn/probe_acc']:.3f} | {r['learn/probe_acc_min']:.3f} | "
                f"{fmt(r['learn/consensus_distance'])} | {ref} |"
            )
    dist = [r["learn/consensus_distance"] for r in rows]
    bad = next((r for r, d in zip(rows, dist, strict=True) if not np.isfinite(d or np.nan)), None)
    finite = [d for d in dist if d is not None and np.isfinite(d)]
    grew = max(finite) / max(peak["learn/consensus_distance"], 1e-12)
    if bad is not None or grew > 100:
        line = (
            f"**The swarm diverged**: probe accuracy peaked at {peak['learn/probe_acc']:.3f} "
            f"(tick {peak['tick']}); from there the consensus distance grew {grew:.3g}-fold"
        )
        if bad is not None:
            line += (
                f" and from tick {bad['tick']} it is not finite (some agent's weights are inf/NaN)"
            )
        line += (
            f"; at the end the agents score {rows[-1]['learn/probe_acc']:.3f} on average "
            "(chance on 5 balanced classes: 0.200)."
        )
        if base:

            def soak_at(tick: int) -> float:
                return float(next(r["learn/consensus_distance"] for r in rows if r["tick"] >= tick))

            last = max(base)
            at = min(base, key=lambda t: abs(t - peak["tick"]))
            ratio = base[last][2] / max(base[at][2], 1e-12)
            line += (
                f" The fault-free run's consensus distance grew {ratio:.3g}-fold from tick "
                f"{at} to tick {last}"
                + (
                    ": it diverges too, so the faults are not the cause (the shipped scenario "
                    f"runs {COMPARE_AT[0]} ticks); they speed it up: at tick {last} the soak's "
                    f"distance is {soak_at(last) / max(base[last][2], 1e-12):.3g}x the "
                    "fault-free run's."
                    if ratio > 10
                    else ": it does not diverge, so the faults are the cause."
                )
            )
        out += ["", line]
    else:
        # from the shipped scenario's length on (a short development soak: every row)
        late = [r for r in rows if r["tick"] >= COMPARE_AT[0]] or rows
        out += [
            "",
            f"**The swarm stays together**: from tick {late[0]['tick']} to the end the consensus "
            f"distance stays between {min(r['learn/consensus_distance'] for r in late):.3g} and "
            f"{max(r['learn/consensus_distance'] for r in late):.3g} (at most {grew:.3g}x its "
            f"value at the accuracy peak), and the swarm-mean probe accuracy between "
            f"{min(r['learn/probe_acc'] for r in late):.3f} and "
            f"{max(r['learn/probe_acc'] for r in late):.3f}.",
        ]
    out += ["", DIVERGENCE_HISTORY]
    return out


def report(
    args: argparse.Namespace,
    base: Scenario,
    info: dict[str, Any],
    cal: dict[str, float],
    s: Soak,
    clean: dict[str, Any] | None,
) -> tuple[str, bool]:
    L: list[str] = []
    A = L.append
    samples = s.sampler.samples
    phase = ticking(s.sampler)
    early, late = window(samples, phase, EARLY), window(samples, phase, LATE)
    m = s.summary
    run_ = m["run"]
    g = base.gossip
    cmd = ".venv/bin/python bench/soak_bench.py"
    cmd += f" --minutes {args.minutes:g}" if args.minutes != 20 else ""
    cmd += " --no-compare" if args.no_compare else ""
    cmd += " --write" if args.write else ""
    shown = f"`{cmd}`"
    if args.report_from:  # the numbers are the dump's; only the analysis ran again
        argv = args.measured_argv or ["--dump", "FILE"]
        measured = " ".join("FILE" if a.endswith(".json") else a for a in argv)
        shown = (
            f"`.venv/bin/python bench/soak_bench.py {measured}`, then this report rendered "
            f"again from its `--dump` file by `{cmd} --report-from {args.report_from.name}`"
        )
    A(SECTION)
    A("")
    A(f"Command: {shown} · {info['date']} · {info['wall']:.0f} s wall (soak {s.wall_s:.0f} s)")
    A("")
    A(
        f"Machine: {info['cores']} cores ({info['cpu']}), torch {info['torch']}, Python "
        f"{info['python']}; one embedded Ray (`num_cpus=2`, no dashboard, object store "
        f"{OBJECT_STORE_MB} MB) started by the script. Other work shares the cores (load "
        f"average {info['load']}): it slows the run, which changes the tick count, not what "
        "is measured (memory)."
    )
    A("")
    A(
        f"Run: scenarios/drone_patrol.yaml ({base.agents.count} drones, {m['shards']} "
        f"AgentShards, {g.mode} {g.graph.kind} gossip every {g.interval} ticks, "
        f"{g.compression.kind}), `baseline.isolated: false`, `checkpoint.every_ticks: "
        f"{CHECKPOINT_EVERY}`, **{s.ticks} ticks** ({s.ticks * base.world.tick_s / 60:.0f} "
        f"simulated minutes), chosen from a {CALIBRATE_TICKS}-tick calibration run with the "
        f"same faults ({cal['ticks_per_s']:.2f} ticks/s, set-up {cal['setup_s']:.0f} s, one "
        f"restart {cal['restart_s']:.1f} s) to last ~{args.minutes:g} minutes. Measured: "
        f"{run_['ticks_per_s']:.2f} ticks/s, **{run_['real_time_factor']:.2f}x real time**, "
        f"set-up {run_['setup_s']:.0f} s. Faults: messages dropped {MESSAGES['drop']:.0%}, "
        f"duplicated {MESSAGES['duplicate']:.0%}, delayed {MESSAGES['delay']:.0%} "
        f"({MESSAGES['delay_rounds']} rounds); {len(s.faults['partitions'])} two-way "
        f"partitions of {PARTITION_TICKS} ticks (from ticks "
        + ", ".join(str(p["from_tick"]) for p in s.faults["partitions"])
        + f"); {len(s.faults['kill'])} shard kills, every shard {KILLS_PER_SHARD}x."
    )
    A("")
    A(
        f"Memory: every {SAMPLE_S:g} s ({len(samples)} samples) a thread reads RSS, PSS and "
        "USS (private pages) of every process descended from the script from "
        "`/proc/<pid>/smaps_rollup`, summed by role (a killed shard returns as a new "
        "process): "
        + "; ".join(
            f"{role} = {', '.join(sorted(s.sampler.names[role]))}"
            for role in ROLES
            if s.sampler.names.get(role)
        )
        + ". RSS counts shared pages (torch's libraries, the object store) in every process "
        "that maps them, so the RSS total exceeds the machine memory used; PSS splits them."
    )
    A("")
    e0, e1, l0, l1 = ((phase[0] + x * (phase[1] - phase[0])) / 60 for x in (*EARLY, *LATE))
    A(
        f"**Bound (set before the run):** the total RSS grows by at most {BOUND_FRAC:.0%} and "
        f"at most {BOUND_MB:.0f} MB between the early window (after warm-up, minutes "
        f"{e0:.1f}-{e1:.1f}, {len(early)} samples) and the last one (minutes {l0:.1f}-{l1:.1f}, "
        f"{len(late)} samples), means over each window."
    )
    A("")
    A("| role | early window MB | last window MB | growth MB | growth % | USS early | USS last |")
    A("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    # the ray system's two servers apart: the GCS keeps the cluster's tables (task events
    # among them), the raylet schedules every task and hosts the object store
    table: list[tuple[str, str | None, str | None]] = [(r, r, None) for r in ROLES[:4]]
    table += [(f"· {n}", "ray system", n) for n in ("gcs_server", "raylet")]
    table += [(ROLES[4], ROLES[4], None), ("**total RSS**", None, None)]
    for label, role, proc in table:
        a, b = mean_of(early, role, name=proc), mean_of(late, role, name=proc)
        if not (a or b):
            continue
        ua, ub = mean_of(early, role, "uss", proc), mean_of(late, role, "uss", proc)
        A(
            f"| {label} | {a:,.0f} | {b:,.0f} | {b - a:+,.1f} | "
            f"{100 * (b - a) / max(a, 1e-9):+.1f}% | {ua:,.0f} | {ub:,.0f} |"
        )
    pa, pb = mean_of(early, None, "pss"), mean_of(late, None, "pss")
    A(f"| total PSS | {pa:,.0f} | {pb:,.0f} | {pb - pa:+,.1f} | {100 * (pb - pa) / pa:+.1f}% | | |")
    a, b = mean_of(early, None), mean_of(late, None)
    growth = b - a
    met = growth <= BOUND_FRAC * a and growth <= BOUND_MB
    A("")
    A(
        f"**Verdict: {'met' if met else 'missed'}**: the total RSS grew {growth:+.1f} MB "
        f"({100 * growth / a:+.2f}%) against a bound of {min(BOUND_FRAC * a, BOUND_MB):.0f} MB."
    )
    # a window that holds a restart compares a shard short of memory
    kills = m["faults"]["kills"]
    bounds = [[phase[0] + f * (phase[1] - phase[0]) for f in frac] for frac in (EARLY, LATE)]
    gaps = [
        (t, t + k["restart_s"] + RESETTLE_S)
        for k, t in zip(kills, s.sampler.kill_times(kills), strict=True)
    ]
    inside = [
        (k, name)
        for k, (g0, g1) in zip(kills, gaps, strict=True)
        for name, (lo, hi) in zip(("early", "last"), bounds, strict=True)
        if g0 < hi and g1 > lo
    ]
    A("")
    if inside:
        settled = [
            [x for x in w if not any(g0 <= x.t <= g1 for g0, g1 in gaps)] for w in (early, late)
        ]
        d_shards = mean_of(settled[1], "shards") - mean_of(settled[0], "shards")
        d_total = mean_of(settled[1], None) - mean_of(settled[0], None)
        A(
            "**Caution:** a shard restart falls in a window ("
            + ", ".join(f"shard {k['shard']} at tick {k['tick']}: {w}" for k, w in inside)
            + "; kills are placed by tick, the windows by wall time, and a slower stretch of "
            "the run moves one towards the other), so that window's shards mean includes a "
            f"shard still starting. Without the samples from each kill to {RESETTLE_S:.0f} s "
            f"after its restart ({len(early) - len(settled[0])} early, "
            f"{len(late) - len(settled[1])} last): shards {d_shards:+.1f} MB, total "
            f"{d_total:+.1f} MB (for information; the verdict keeps the rule stated above)."
        )
    else:
        A(f"No shard restart falls in either window (nor {RESETTLE_S:.0f} s before one).")
    if not met:
        A("")
        worst = max(ROLES, key=lambda r: mean_of(late, r) - mean_of(early, r))
        names = sorted(s.sampler.names[worst])
        top = max(names, key=lambda n: mean_of(late, worst, name=n) - mean_of(early, worst, name=n))
        A(
            f"The role that grew most: {worst} "
            f"({mean_of(late, worst) - mean_of(early, worst):+.1f} MB), and in it {top} "
            f"({mean_of(late, worst, name=top) - mean_of(early, worst, name=top):+.1f} MB)."
        )
    A("")
    # what grows by design, per tick
    n = base.agents.count
    bk = bookkeeping(s.rows, n, base.metrics.interval)
    dt_ticks = float(np.mean([x.tick for x in late]) - np.mean([x.tick for x in early]))
    world_mb = bk["world_per_tick"] * dt_ticks / 2**20
    driver_mb = bk["driver_per_tick"] * dt_ticks / 2**20
    A(
        "What grows with run length by design (sizes of the real objects, `sys.getsizeof`): the "
        f"world keeps every tick's positions (`WorldHost.trajectory`, a ({n}, 3) float32 "
        f"array: {bk['world_trajectory']:.0f} B with its list slot) for the trajectory plot "
        f"and every tick's decisions (`WorldHost.decisions`, ({n},) int64: "
        f"{bk['world_decisions']:.0f} B) to rebuild the world on resume: "
        f"**{bk['world_per_tick']:.0f} B per tick**; the driver keeps every metrics row "
        f"(`Runner` rows, one per {base.metrics.interval} ticks, "
        f"{bk['driver_row'] / 1024:.1f} KB each as Python objects): "
        f"**{bk['driver_per_tick']:.0f} B per tick**. Between the two windows' mean "
        f"ticks ({dt_ticks:,.0f} ticks apart) that is {world_mb:.2f} MB in the world and "
        f"{driver_mb:.2f} MB in the driver; at {s.ticks} ticks, "
        f"{bk['world_per_tick'] * s.ticks / 2**20:.1f} MB and "
        f"{bk['driver_per_tick'] * s.ticks / 2**20:.1f} MB in all (plus the world's event "
        "log, one small record per event). Measured between the windows: world "
        f"{mean_of(late, 'world') - mean_of(early, 'world'):+.1f} MB, driver "
        f"{mean_of(late, 'driver') - mean_of(early, 'driver'):+.1f} MB (the estimate counts "
        "the objects' sizes, not the allocator's overhead per allocation). A growth well "
        "beyond these figures is not bookkeeping."
    )
    A("")
    # slopes from the early window's start to the last tick: a restart resets a shard's
    # memory, so each process is fitted on its own life, which no restart can hide
    span = (phase[0] + EARLY[0] * (phase[1] - phase[0]), phase[1])
    per_pid = {r: slopes(samples, span, r) for r in ("driver", "world", "shards")}
    ray_system = slope([(x.t, x.total("ray system")) for x in samples if span[0] <= x.t <= span[1]])
    A(
        "RSS slopes (least squares, MB per hour) from the early window's start to the last "
        "tick. Per process (each one's first minute skipped; processes sampled under "
        f"{MIN_SLOPE_MIN:g} minutes left out): "
        + "; ".join(
            f"{role}: "
            + (
                ", ".join(f"{v:+.1f} (pid {pid}, {mins:.0f} min)" for pid, mins, v in rows)
                or "none sampled long enough"
            )
            for role, rows in per_pid.items()
        )
        + f". Ray system (the sum of its processes): {ray_system[1]:+.1f}. A restart resets a "
        "shard's memory, so a leak in the shards shows in the slope of each shard process "
        "over its own life, not in the window means alone."
    )
    A("")
    if s.gcs_events:
        L.extend(gcs_lines(s, base, early, late))
        A("")
    A(f"![memory by role over the soak](bench/figures/{FIGURE.name})")
    A("")
    A("### Kills")
    A("")
    A(
        "Probe accuracy of the killed shard's agents (mean of its 4): in the metrics row at "
        "the kill tick (before the kill), in the checkpoint it restored, and right after the "
        "restore (`summary.json` `faults.kills`: `probe_acc_change` = restored - checkpoint)."
    )
    A("")
    A(
        "| shard | tick | restart s | checkpoint tick | before the kill | at the checkpoint | "
        "restored | change | restored - before the kill |"
    )
    A("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for k in m["faults"]["kills"]:
        row = [r for r in s.rows if r["tick"] <= k["tick"]][-1]
        pre = float(np.mean([row["agents"]["learn/probe_acc"][a] for a in k["agents"]]))
        ckpt, after = k.get("probe_acc_checkpoint"), k.get("probe_acc_restored")
        cells = (
            [f"{np.mean(ckpt):.3f}", f"{np.mean(after):.3f}"]
            + [f"{k['probe_acc_change']:+.3f}", f"{np.mean(after) - pre:+.3f}"]
            if ckpt and after
            else ["-"] * 4
        )
        A(
            f"| {k['shard']} | {k['tick']} | {k['restart_s']:.1f} | "
            f"{k.get('checkpoint_ticks', '-')} | {pre:.3f} (tick {row['tick']}) | "
            + " | ".join(cells)
            + " |"
        )
    before = [
        np.mean(
            [
                [r for r in s.rows if r["tick"] <= k["tick"]][-1]["agents"]["learn/probe_acc"][a]
                for a in k["agents"]
            ]
        )
        for k in m["faults"]["kills"]
    ]
    if m["faults"]["kills"] and all(k.get("probe_acc_change") == 0 for k in m["faults"]["kills"]):
        A("")
        A(
            "Every restore is exact: the restored agents score what they scored at the "
            "checkpoint (change 0.000); what a kill costs is the learning since the "
            "checkpoint (last column; negative: lost)."
            + (
                " Here the kills came after the swarm had diverged (see Accuracy), so the "
                "accuracies are near chance (0.200)."
                if before and max(before) < 0.3
                else ""
            )
        )
    acc = m["accounting"]
    A("")
    A("### Message accounting (`summary.json` `accounting`)")
    A("")
    A(
        f"Identity sent = delivered + rejected + dropped, and the receivers' counts equal the "
        f"senders': **{'holds' if acc['holds'] else 'does NOT hold'}** (unaccounted "
        f"{acc['unaccounted']})."
    )
    if s.faults["messages"].get("delay") and s.faults["kill"]:
        A("")
        A(
            ("" if acc["holds"] else "**")
            + (
                "It holds in this run, with kills and delay faults. "
                if acc["holds"]
                else "It does not hold.** "
            )
            + KNOWN_ACCOUNTING_GAP
        )
    A("")
    A(
        "| sent | delivered | rejected | dropped | of which partition | held at end | delayed | "
        "duplicated | snapshots | receivers: delivered / duplicates / refused |"
    )
    A("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    rec = acc["received"]
    A(
        f"| {acc['sent']:,} | {acc['delivered']:,} | {acc['rejected']:,} | {acc['dropped']:,} | "
        f"{acc['dropped_partition']:,} | {acc['dropped_held_at_end']:,} | {acc['delayed']:,} | "
        f"{acc['duplicated']:,} | {acc['snapshots']:,} | {rec['delivered']:,} / "
        f"{rec['duplicates']:,} / {rec['refused']:,} |"
    )
    A("")
    A("### Accuracy")
    A("")
    final = m["metrics"]["learn/probe_acc"]
    line = (
        f"Swarm-mean probe accuracy at the end of the soak: **{final:.3f}** (minimum agent "
        f"{m['metrics']['learn/probe_acc_min']:.3f}); consensus distance "
        f"{m['metrics']['learn/consensus_distance']:.3g}."
    )
    if clean is not None:
        at = min(COMPARE_AT[0], clean["ticks"])
        line += (
            f" Beside it, the same scenario without faults for {clean['ticks']} ticks (same "
            f"seed, run after the soak); at tick {at}"
            + (" (the shipped scenario's length)" if at == COMPARE_AT[0] else "")
            + " the soak "
            f"had seen the message faults, "
            f"{sum(1 for p in s.faults['partitions'] if p['from_tick'] < at)} partition(s) and "
            f"{sum(1 for k in s.faults['kill'] if k['at_tick'] < at)} kill(s)."
        )
    A(line)
    A("")
    L.extend(learning_lines(s.rows, clean))
    return "\n".join(L) + "\n", met


def measure(args: argparse.Namespace, base: Scenario) -> dict[str, Any]:
    """Calibrate, soak, compare: everything the report needs, as JSON-able values."""
    info: dict[str, Any] = machine() | {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    }
    load = [os.getloadavg()]

    import ray
    import torch

    torch.set_num_threads(1)  # the driver only schedules; the actors use one thread each
    model_bench.start_ray(base, OBJECT_STORE_MB)
    clean: dict[str, Any] | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="soak_bench-") as tmp:
            log(f"calibration: {CALIBRATE_TICKS} ticks with faults")
            cal = calibrate(base, Path(tmp))
            log(
                f"calibration: {cal['ticks_per_s']:.2f} ticks/s, set-up {cal['setup_s']:.0f} s, "
                f"restart {cal['restart_s']:.1f} s"
            )
            load.append(os.getloadavg())
            s = soak(base, Path(tmp), args.minutes, cal)
            load.append(os.getloadavg())
            if not args.no_compare:
                ticks = min(COMPARE_TICKS, s.ticks)
                log(f"comparison: {ticks} ticks without faults")
                result, _, _ = run(soak_scenario(base, ticks, None), Path(tmp))
                keys = ("learn/probe_acc", "learn/probe_acc_min", "learn/consensus_distance")
                clean = {
                    "ticks": ticks,
                    "rows": [[r["tick"], *(r[k] for k in keys)] for r in result.rows],
                }
    finally:
        ray.shutdown()
    info["wall"] = time.perf_counter() - _T0
    info["load"] = (
        f"1/5/15 min {load[0][0]:.1f}/{load[0][1]:.1f}/{load[0][2]:.1f} at the start, "
        f"{load[2][0]:.1f}/{load[2][1]:.1f}/{load[2][2]:.1f} at the end of the soak"
    )
    soak_state = {k: v for k, v in vars(s).items() if k != "sampler"}
    soak_state["sampler"] = s.sampler.state()
    return {
        "args": {"minutes": args.minutes, "no_compare": args.no_compare, "argv": sys.argv[1:]},
        "info": info,
        "cal": cal,
        "soak": soak_state,
        "clean": clean,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=20.0, help="wall time of the soak")
    ap.add_argument("--no-compare", action="store_true", help="skip the fault-free run")
    ap.add_argument("--write", action="store_true", help="rewrite this section of BENCHMARKS.md")
    ap.add_argument("--dump", type=Path, help="also save every measurement to this JSON file")
    ap.add_argument(
        "--report-from", type=Path, help="no runs: report (and plot) a --dump file again"
    )
    args = ap.parse_args()
    base = zones_kept(load_scenario(SCENARIO))
    if args.report_from:
        data = json.loads(args.report_from.read_text())
        args.minutes, args.no_compare = data["args"]["minutes"], data["args"]["no_compare"]
        args.measured_argv = data["args"].get("argv", [])
    else:
        data = measure(args, base)
        if args.dump:
            args.dump.write_text(json.dumps(data))
            log(f"wrote {args.dump}")
    state = dict(data["soak"])
    s = Soak(**(state | {"sampler": Sampler.from_state(state["sampler"])}))
    info, cal, clean = data["info"], data["cal"], data["clean"]
    # the linked figure changes only with its section; other runs draw theirs in /tmp
    figure = FIGURE if args.write else Path(tempfile.gettempdir()) / FIGURE.name
    plot(s, figure)
    log(f"wrote {figure}")
    body, _ = report(args, base, info, cal, s, clean)
    print(body)
    if args.write:
        model_bench.write_section(body, SECTION)
        log(f"wrote {BENCHMARKS_MD.relative_to(REPO)}")


if __name__ == "__main__":
    main()
