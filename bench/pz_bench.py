"""PettingZoo benchmark: does online actor-critic on the Yan model learn MPE2 simple_spread, and
what does gossip add?

Usage:
    .venv/bin/python bench/pz_bench.py            # 3 variants x 2 seeds, 13-17 min on 2 cores
    .venv/bin/python bench/pz_bench.py --quick    # every code path: 1 seed, 500 ticks, ~1.5 min
    .venv/bin/python bench/pz_bench.py --write    # also rewrite its BENCHMARKS.md section

Runs scenarios/spread.yaml through the real Runner (one embedded Ray, started here once and
reused by every run) three ways, each with the same seeds:
  (a) no learning: rl.enabled false, the same agents acting from their initial policies; with
      gossip.topology isolated, since weights that never change leave nothing to send (the
      trajectories are the same either way: same weights, same seed);
  (b) learning, isolated: gossip.topology isolated, every agent learns from its own rollouts;
  (c) learning + gossip: the scenario as it is.
Reported: the team return (`rl/team_return`, the mean per-agent return of the episodes that
finished in a metrics interval) over the first and the last quarter of each run, mean and range
over the seeds, a coarse learning curve, and the gossip bytes sent. Goal: (c) above (a) on every
seed by more than the seeds' spread. Progress goes to stderr, the tables to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# One BLAS thread, as Ray gives its actors (see exchange_bench.py). Set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: bench/ is on sys.path, the repo root is not

import model_bench  # noqa: E402  (one helper, one place)
from model_bench import fmt_bytes, machine  # noqa: E402

from envs.pz_config import PettingZooConfig  # noqa: E402
from swarm.scenario import Scenario, load_scenario  # noqa: E402

BENCHMARKS_MD = REPO / "BENCHMARKS.md"
SECTION = "## PettingZoo: online actor-critic on MPE2 simple_spread (`bench/pz_bench.py`)"
SCENARIO = REPO / "scenarios" / "spread.yaml"
CURVE_POINTS = 6  # learning-curve columns: the run cut into this many equal blocks
MPE_MAX_CYCLES = 25  # simple_spread's episode length when kwargs do not set max_cycles


@dataclass(frozen=True)
class Variant:
    """One way of running the scenario."""

    key: str
    label: str
    learn: bool
    topology: str | None  # None: the scenario's own


VARIANTS = (
    Variant("a", "(a) no learning", learn=False, topology="isolated"),
    Variant("b", "(b) learning, isolated", learn=True, topology="isolated"),
    Variant("c", "(c) learning + gossip", learn=True, topology=None),
)


@dataclass(frozen=True)
class Settings:
    """Budget of one benchmark run."""

    seeds: tuple[int, ...] | None
    """Scenario seeds (None: the scenario's seed and the next one)."""
    ticks: int | None
    """Ticks per run (None: the scenario's own)."""
    metrics_interval: int | None
    """Ticks between two metric rows (None: the scenario's own)."""


FULL = Settings(seeds=None, ticks=None, metrics_interval=None)
QUICK = Settings(seeds=(0,), ticks=500, metrics_interval=50)

_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


@dataclass
class RunRow:
    v: Variant
    seed: int
    first: float
    last: float
    curve: list[float]
    """Mean team return of each of CURVE_POINTS equal blocks of the run."""
    bytes_sent: int
    rejected: int
    updated: bool
    """Some policy update ran (the runner logged an entropy)."""
    wall_s: float
    ticks_per_s: float


def variant_scenario(base: Scenario, v: Variant, seed: int, s: Settings) -> Scenario:
    data = base.model_dump(mode="json")
    data["seed"] = seed
    data["rl"]["enabled"] = v.learn
    if v.topology is not None:
        data["gossip"]["topology"] = v.topology
    data["ray"]["dashboard"] = False
    if s.ticks is not None:
        data["ticks"] = s.ticks
    if s.metrics_interval is not None:
        data["metrics"]["interval"] = s.metrics_interval
    return Scenario.model_validate(data)


def curve(returns: list[float], points: int) -> list[float]:
    """The run's team returns cut into `points` equal blocks, mean of each."""
    blocks = np.array_split(np.asarray(returns), points)
    return [float(b.mean()) if len(b) else float("nan") for b in blocks]


def run_all(s: Settings, base: Scenario, seeds: tuple[int, ...]) -> list[RunRow]:
    from swarm.runner import Runner, new_run_dir

    rows = []
    with tempfile.TemporaryDirectory(prefix="pz_bench-") as tmp:
        for seed in seeds:
            for v in VARIANTS:
                sc = variant_scenario(base, v, seed, s)
                t0 = time.perf_counter()
                result = Runner(sc, new_run_dir(Path(tmp), sc)).run()
                m = result.summary["metrics"]
                returns = [r["rl/team_return"] for r in result.rows if r["rl/team_return"]]
                row = RunRow(
                    v=v,
                    seed=seed,
                    first=float(m["rl/team_return_first"]),
                    last=float(m["rl/team_return_last"]),
                    curve=curve(returns, CURVE_POINTS),
                    bytes_sent=int(m["gossip/bytes_sent"]),
                    rejected=int(m["gossip/deltas_rejected"]),
                    updated=any(r.get("rl/entropy") is not None for r in result.rows),
                    wall_s=time.perf_counter() - t0,
                    ticks_per_s=float(result.summary["run"]["ticks_per_s"]),
                )
                # the variants must be what they claim: (a) never updates, only (c) sends
                if row.updated != v.learn or (row.bytes_sent > 0) != (v.topology is None):
                    raise SystemExit(
                        f"{v.label}, seed {seed}: updated {row.updated}, "
                        f"{row.bytes_sent} bytes sent; the variant is not what it claims"
                    )
                rows.append(row)
                log(
                    f"seed {seed} {v.label:24s} {row.wall_s:5.0f} s: team return "
                    f"{row.first:6.2f} -> {row.last:6.2f}, {fmt_bytes(row.bytes_sent)} sent"
                )
    return rows


def truncation_reaches_learner() -> bool:
    """Does the Runner hand time-limit truncations (and the cut-off observation) to the
    learner? Without them every simple_spread episode end looks terminal (agents/actor_critic.py
    measured the cost: the learner then falls below its initial policy)."""
    from swarm.records import Step

    names = {f.name for f in dataclasses.fields(Step)}
    return {"truncated", "final_obs"} <= names


def fmt_ret(values: list[float], sign: str = "") -> str:
    """Mean over seeds, with the range when there are several; sign "+" to show it always."""
    mean = f"{np.mean(values):{sign}.2f}"
    if len(values) == 1:
        return mean
    return f"{mean} ({min(values):{sign}.2f} .. {max(values):{sign}.2f})"


def report(
    args: argparse.Namespace,
    s: Settings,
    info: dict[str, str],
    base: Scenario,
    runs: list[RunRow],
    seeds: tuple[int, ...],
    truncation: bool,
) -> str:
    L: list[str] = []
    A = L.append
    cmd = ".venv/bin/python bench/pz_bench.py" + (" --quick" if args.quick else "") + " --write"
    ticks = s.ticks or base.ticks
    interval = s.metrics_interval or base.metrics.interval
    w = base.world
    assert isinstance(w, PettingZooConfig), "scenarios/spread.yaml must be a pettingzoo world"
    episode = int(w.kwargs.get("max_cycles", MPE_MAX_CYCLES))
    by = {(r.v.key, r.seed): r for r in runs}

    A(SECTION)
    A("")
    A(f"Command: `{cmd}` · {info['date']} · {info['wall']:.0f} s wall")
    A("")
    A(
        f"Machine: {info['cores']} cores ({info['cpu']}), torch {info['torch']}, Python "
        f"{info['python']}; one embedded Ray (`num_cpus=2`), started once and reused by every run."
    )
    A("")
    if not truncation:
        A(
            "**Warning: this Runner does not pass time-limit truncations to the learner "
            "(`swarm/shard.py` `Step` has no `truncated` / `final_obs`), so every episode end "
            "looked terminal to it; the learning rows are biased down.**"
        )
        A("")
    A(
        f"`scenarios/spread.yaml`: `{w.env}` with {w.kwargs}, {w.copies} copies = "
        f"{base.agents.count} agents in {base.n_shards} shards, {ticks} ticks "
        f"({ticks // episode} episodes per team), seeds "
        f"{', '.join(map(str, seeds))}; learning: PPO-clip every {base.rl.rollout} ticks, "
        f"{base.rl.epochs} epochs, gamma {base.rl.discount:g}, lr {base.learning.lr:g}; gossip "
        f"(c): {base.gossip.topology} {base.gossip.graph.kind}, a round every "
        f"{base.gossip.interval} ticks, CHOCO gamma {base.gossip.gamma:g}, "
        f"{base.gossip.compression.kind} {base.gossip.compression.ratio:g}. (a) runs isolated: "
        "weights that never change leave nothing to send, and its trajectories are those it "
        "would have with gossip (same weights, same seed; checked over 300 ticks: the same "
        "team returns, while gossip sent 9 MB of nothing)."
    )
    A("")

    # -- goal
    gains = [by[("c", sd)].last - by[("a", sd)].last for sd in seeds]
    spread = max((np.ptp([by[(k, sd)].last for sd in seeds]) for k in ("a", "c")), default=0.0)
    if len(seeds) > 1:
        met = all(g > 0 for g in gains) and min(gains) > spread
        verdict = f"**{'met' if met else 'missed'}**"
    else:
        verdict = "not judged (one seed: no spread to compare with)"
    A("### Goal: (c) learning + gossip clearly above (a) no learning")
    A("")
    A(
        f"Last-quarter team return, (c) - (a): {np.mean(gains):+.2f} on average, "
        f"{', '.join(f'{g:+.2f}' for g in gains)} per seed; largest spread between seeds of "
        f"(a) or (c): {spread:.2f}. Verdict: {verdict} (goal: above on every seed, by more "
        "than that spread)."
    )
    A("")

    # -- table
    A("### Team return, first and last quarter of each run")
    A("")
    A(
        "Team return = `rl/team_return`, the mean per-agent episode return (0.5 x minus the "
        "summed landmark-to-nearest-agent distances, 0.5 x -1 per collision, each step), over "
        "the episodes that finished in each metrics interval; first / last quarter = mean of "
        "the first / last quarter of those rows (`rl/team_return_first` / `_last` of the "
        "summary). Mean over seeds (range). Bytes = `gossip/bytes_sent` at the end, mean over "
        "seeds."
    )
    A("")
    A("| variant | first quarter | last quarter | last - first | last vs (a) | bytes sent | wall |")
    A("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for v in VARIANTS:
        rs = [by[(v.key, sd)] for sd in seeds]
        firsts, lasts = [r.first for r in rs], [r.last for r in rs]
        vs_a = [r.last - by[("a", r.seed)].last for r in rs]
        sent = fmt_bytes(float(np.mean([r.bytes_sent for r in rs]))) if v.topology is None else "0"
        A(
            f"| {v.label} | {fmt_ret(firsts)} | {fmt_ret(lasts)} | "
            f"{np.mean(lasts) - np.mean(firsts):+.2f} | "
            f"{'-' if v.key == 'a' else fmt_ret(vs_a, '+')} | "
            f"{sent} | "
            f"{np.mean([r.wall_s for r in rs]):.0f} s |"
        )
    A("")
    per_seed = "; ".join(
        f"seed {sd}: " + ", ".join(f"({k}) {by[(k, sd)].last:.2f}" for k in "abc") for sd in seeds
    )
    A(f"Last quarter per seed: {per_seed}.")
    A("")

    # -- curve
    block = ticks // CURVE_POINTS
    A(f"### Learning curve: mean team return per block of {block} ticks, mean over seeds")
    A("")
    cols = [f"{(i + 1) * block}" for i in range(CURVE_POINTS)]
    A("| variant | " + " | ".join(f"ticks ..{c}" for c in cols) + " |")
    A("| --- |" + " ---: |" * CURVE_POINTS)
    for v in VARIANTS:
        pts = np.nanmean([by[(v.key, sd)].curve for sd in seeds], axis=0)
        A(f"| {v.label} | " + " | ".join(f"{p:.2f}" for p in pts) + " |")
    A("")
    rejected = sum(r.rejected for r in runs)
    tps = {v.key: np.mean([by[(v.key, sd)].ticks_per_s for sd in seeds]) for v in VARIANTS}
    A(
        f"Metric rows every {interval} ticks ({interval // episode} "
        f"episodes per team, {w.copies} teams); {rejected} gossip deltas rejected. Runner "
        f"speed: {tps['a']:.0f} / {tps['b']:.0f} / {tps['c']:.0f} ticks/s for (a) / (b) / (c)."
    )
    return "\n".join(L) + "\n"


def write_section(body: str) -> None:
    """This script's `##` section of BENCHMARKS.md, through model_bench's writer."""
    model_bench.write_section(body, SECTION)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, 500 ticks, every code path")
    ap.add_argument("--write", action="store_true", help="rewrite this section of BENCHMARKS.md")
    args = ap.parse_args()
    s = QUICK if args.quick else FULL
    info = machine() | {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    base = load_scenario(SCENARIO)
    seeds = s.seeds or (base.seed, base.seed + 1)
    truncation = truncation_reaches_learner()
    if not truncation:
        log("warning: the Runner does not pass time-limit truncations to the learner")

    import ray
    import torch

    torch.set_num_threads(1)
    model_bench.start_ray(base)
    try:
        log(f"{len(VARIANTS)} variants x {len(seeds)} seeds of {SCENARIO.name}")
        runs = run_all(s, base, seeds)
    finally:
        ray.shutdown()
    info["wall"] = time.perf_counter() - _T0  # type: ignore[assignment]

    body = report(args, s, info, base, runs, seeds, truncation)
    print(body)
    if args.write:
        write_section(body)
        log(f"wrote {BENCHMARKS_MD.relative_to(REPO)}")


if __name__ == "__main__":
    main()
