"""Reinforcement learning on vectorised PettingZoo worlds: how fast the platform runs the env,
and how well its learners do against an outside anchor at the same budget of env steps.

Usage:
    .venv/bin/python bench/rl_bench.py throughput            # raw env vs the platform, ~3 min
    .venv/bin/python bench/rl_bench.py learning --steps 1000000 --seeds 0,1,2
    .venv/bin/python bench/rl_bench.py learning --steps 20000 --seeds 0 --variants greedy,gossip
    .venv/bin/python bench/rl_bench.py ... --write          # rewrite its BENCHMARKS.md section

Both parts run `scenarios/spread_64.yaml` (MPE2 simple_spread, N = 3, 64 copies = 192 agents)
through the real Runner on one embedded Ray, started here once and reused by every run.

throughput: the raw env first, in this process: the same 64 copies stepped one after the
other with uniformly random actions (what any vectorised loop does at best on one core; the
env is pure Python), then the scenario as it is (learning and gossip on), with gossip off,
with learning off too, with world.pipeline off (the world and the shards taking turns), and
with each update on a thread (rl.update_lag). The raw env runs again at the end; its mean is
the denominator. Ticks/s of a run is its tick loop's (`run.ticks_per_s`: start-up excluded).

learning: every variant at the same budget of env steps (one step of the 3-agent env = one
env step; a tick of 64 copies = 64 env steps), the same seeds, the same score:
  random, greedy   the baselines of bench/rl_baselines.py, on the same episode seeds;
  isolated, gossip, coordinator, centralized   the scenario with gossip.topology set so
                   (centralized: one shard, one policy trained on everyone's experience, the
                   parameter-sharing upper bound);
  rllib            RLlib's PPO, one shared policy (bench/rl_anchor.py).
Score: the mean team return (sum of the agents' rewards over an episode, over the agent
count) of the episodes that ended in the last 10% of the budget; normalised score
(R - R_random) / (R_greedy - R_random): 0 is random play, 1 the greedy controller.
Progress goes to stderr, the tables to stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
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
import rl_baselines  # noqa: E402
from model_bench import machine  # noqa: E402

from envs.pz_config import PettingZooConfig  # noqa: E402
from swarm.scenario import Scenario, load_scenario  # noqa: E402

BENCHMARKS_MD = REPO / "BENCHMARKS.md"
SECTION_SPEED = "## PettingZoo at the speed of the env: 64 copies (`bench/rl_bench.py throughput`)"
SECTION_LEARN = "## PettingZoo learning against an anchor (`bench/rl_bench.py learning`)"
SCENARIO = REPO / "scenarios" / "spread_64.yaml"
FIGURE = REPO / "bench" / "figures" / "rl_learning.png"
FINAL_FRACTION = 0.1  # the score: episodes that ended in this last part of the budget
OURS = ("isolated", "gossip", "coordinator", "centralized")
TOPOLOGY = {
    "isolated": "isolated",
    "gossip": "decentralized",
    "coordinator": "coordinator",
    "centralized": "centralized",
}
VARIANTS = ("random", "greedy", *OURS, "rllib")

_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def world_of(sc: Scenario) -> PettingZooConfig:
    w = sc.world
    assert isinstance(w, PettingZooConfig), f"{SCENARIO.name} must be a pettingzoo world"
    return w


def with_changes(base: Scenario, **changes: Any) -> Scenario:
    """The scenario with dotted keys changed ("rl.enabled": False) and no dashboard."""
    data = base.model_dump(mode="json")
    data["ray"]["dashboard"] = False
    for key, value in changes.items():
        *path, last = key.split(".")
        at = data
        for part in path:
            at = at[part]
        at[last] = value
    return Scenario.model_validate(data)


def run(sc: Scenario) -> Any:
    from swarm.runner import Runner, new_run_dir

    with tempfile.TemporaryDirectory(prefix="rl_bench-") as tmp:
        return Runner(sc, new_run_dir(Path(tmp), sc)).run()


# -- throughput --------------------------------------------------------------------------------


def raw_ticks_per_s(w: PettingZooConfig, ticks: int, seed: int) -> float:
    """Ticks/s of the env's copies stepped directly with uniformly random actions: `copies`
    env steps a tick, each copy reset when its episode ends (as the platform does)."""
    factory = rl_baselines.make_env
    envs = [factory(w.kwargs) for _ in range(w.copies)]
    rng = np.random.default_rng(seed)
    for c, env in enumerate(envs):
        env.reset(seed=rl_baselines.episode_seed(seed, c, 1))

    def tick() -> None:
        for env in envs:
            acts = {a: int(rng.integers(env.action_space(a).n)) for a in env.agents}
            env.step(acts)
            if not env.agents:
                env.reset()

    for _ in range(min(ticks, 20)):  # warm-up
        tick()
    t0 = time.perf_counter()
    for _ in range(ticks):
        tick()
    rate = ticks / (time.perf_counter() - t0)
    for env in envs:
        env.close()
    return rate


@dataclass
class SpeedRow:
    label: str
    ticks_per_s: float
    note: str = ""


def throughput(base: Scenario, ticks: int) -> tuple[list[float], list[SpeedRow]]:
    w = world_of(base)
    raws = [raw_ticks_per_s(w, max(ticks // 2, 50), base.seed)]
    log(f"raw env: {raws[0]:.1f} ticks/s ({raws[0] * w.copies:.0f} env steps/s)")
    # the other way of updating than the scenario's: in the tick, or on a thread beside half
    # a rollout of acting
    lag = 0 if base.rl.update_lag else max(base.rl.rollout // 2, 1)
    variants = [
        ("the scenario: learning and gossip on", {}),
        ("learning on, gossip off (isolated)", {"gossip.topology": "isolated"}),
        ("no learning, no gossip", {"rl.enabled": False, "gossip.topology": "isolated"}),
        ("the scenario, world.pipeline off (turns)", {"world.pipeline": False}),
        (
            f"the scenario, rl.update_lag {lag}"
            + (" (updates in the tick)" if not lag else " (updates on a thread)"),
            {"rl.update_lag": lag},
        ),
    ]
    rows = []
    for label, changes in variants:
        result = run(with_changes(base, ticks=ticks, **changes))
        rate = float(result.summary["run"]["ticks_per_s"])
        m = result.summary["metrics"]
        note = f"{m['gossip/bytes_sent'] / 2**20:.0f} MiB gossip" if m["gossip/bytes_sent"] else ""
        rows.append(SpeedRow(label, rate, note))
        log(f"{label}: {rate:.1f} ticks/s")
    raws.append(raw_ticks_per_s(w, max(ticks // 2, 50), base.seed))
    log(f"raw env again: {raws[1]:.1f} ticks/s")
    return raws, rows


def report_throughput(
    info: dict[str, Any], base: Scenario, ticks: int, raws: list[float], rows: list[SpeedRow]
) -> str:
    w = world_of(base)
    raw = float(np.mean(raws))
    L = [SECTION_SPEED, ""]
    L.append(
        f"Command: `.venv/bin/python bench/rl_bench.py throughput --ticks {ticks} --write` · "
        f"{info['date']} · {info['wall']:.0f} s wall"
    )
    L.append("")
    L.append(
        f"Machine: {info['cores']} cores ({info['cpu']}), torch {info['torch']}, Python "
        f"{info['python']}; one embedded Ray (`num_cpus=2`)."
    )
    L.append("")
    L.append(
        f"`scenarios/spread_64.yaml`: `{w.env}` {w.kwargs}, {w.copies} copies = "
        f"{base.agents.count} agents in {base.n_shards} shards of {base.per_shard}; PPO every "
        f"{base.rl.rollout} ticks ({base.rl.epochs} epochs), gossip "
        f"{base.gossip.topology} {base.gossip.graph.kind} every {base.gossip.interval} ticks "
        f"({base.gossip.compression.kind}). Each run {ticks} ticks. Raw env: the {w.copies} "
        f"copies stepped in this process with random actions, {raws[0]:.1f} ticks/s before the "
        f"runs and {raws[1]:.1f} after; the ratio is against their mean, {raw:.1f} ticks/s "
        f"({raw * w.copies:.0f} env steps/s)."
    )
    L.append("")
    L.append("| run | ticks/s | env steps/s | of the raw env | |")
    L.append("| --- | ---: | ---: | ---: | --- |")
    for r in rows:
        L.append(
            f"| {r.label} | {r.ticks_per_s:.1f} | {r.ticks_per_s * w.copies:.0f} | "
            f"{r.ticks_per_s / raw:.0%} | {r.note} |"
        )
    goal = rows[0].ticks_per_s / raw
    L.append("")
    L.append(
        f"Goal (issue 19): the scenario with learning and gossip on at >= 50% of the raw env's "
        f"ticks/s: **{goal:.0%}, {'met' if goal >= 0.5 else 'missed'}**."
    )
    return "\n".join(L) + "\n"


# -- learning ----------------------------------------------------------------------------------


@dataclass
class LearnRun:
    variant: str
    seed: int
    final: float
    curve: list[tuple[int, float]] = field(default_factory=list)  # (env steps, team return)
    env_steps: int = 0
    wall_s: float = 0.0
    bytes_sent: int = 0


def final_of(curve: list[tuple[int, float, int]], budget: int) -> float:
    """Mean team return of the episodes that ended in the last FINAL_FRACTION of the budget,
    from (env steps, mean team return, episodes) per metrics interval."""
    cut = budget * (1 - FINAL_FRACTION)
    late = [(r, n) for steps, r, n in curve if steps > cut and n > 0]
    if not late:
        raise SystemExit("no episode ended in the last 10% of the budget: metrics too sparse")
    return float(sum(r * n for r, n in late) / sum(n for _, n in late))


def learn_ours(base: Scenario, variant: str, seed: int, steps: int) -> LearnRun:
    w = world_of(base)
    ticks = -(-steps // w.copies)
    changes: dict[str, Any] = {
        "seed": seed,
        "ticks": ticks,
        "gossip.topology": TOPOLOGY[variant],
        # 10% of the budget spans >= 2 rows, so the score holds every episode of that part
        "metrics.interval": max(1, min(base.metrics.interval, ticks // 20)),
    }
    if variant == "centralized":
        changes["agents.per_shard"] = base.agents.count
    t0 = time.perf_counter()
    result = run(with_changes(base, **changes))
    rows = [(r["tick"] * w.copies, r["rl/team_return"], r["rl/episodes"]) for r in result.rows]
    per: list[tuple[int, float, int]] = []
    before = 0
    for steps_at, ret, episodes in rows:
        n = int(episodes) - before
        before = int(episodes)
        if ret is not None:
            per.append((int(steps_at), float(ret), n))
    return LearnRun(
        variant,
        seed,
        final_of(per, ticks * w.copies),
        [(s, r) for s, r, _ in per],
        ticks * w.copies,
        time.perf_counter() - t0,
        int(result.summary["metrics"]["gossip/bytes_sent"]),
    )


def learn_baseline(base: Scenario, variant: str, seed: int) -> LearnRun:
    w = world_of(base)
    t0 = time.perf_counter()
    episodes = 200
    returns = rl_baselines.evaluate(variant, w.kwargs, episodes, seed, copies=w.copies)
    return LearnRun(variant, seed, float(np.mean(returns)), wall_s=time.perf_counter() - t0)


def learn_rllib(base: Scenario, seed: int, steps: int) -> LearnRun:
    import rl_anchor

    t0 = time.perf_counter()
    res = rl_anchor.train_ppo(world_of(base).kwargs, steps, seed, progress=log)
    return LearnRun(
        "rllib", seed, res.final, list(res.curve), res.env_steps, time.perf_counter() - t0
    )


def learning(
    base: Scenario, variants: list[str], seeds: list[int], steps: int
) -> dict[str, list[LearnRun]]:
    out: dict[str, list[LearnRun]] = {v: [] for v in variants}
    for seed in seeds:
        for v in variants:
            if v in ("random", "greedy"):
                r = learn_baseline(base, v, seed)
            elif v == "rllib":
                r = learn_rllib(base, seed, steps)
            else:
                r = learn_ours(base, v, seed, steps)
            out[v].append(r)
            log(f"seed {seed} {v:12s} final {r.final:7.2f}  ({r.wall_s:.0f} s)")
    return out


def normalised(r: float, rand: float, greedy: float) -> float:
    return (r - rand) / (greedy - rand)


def plot(runs: dict[str, list[LearnRun]], steps: int, path: Path) -> None:
    from swarm.report import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for v, rs in runs.items():
        if v in ("random", "greedy"):
            ax.axhline(np.mean([r.final for r in rs]), ls="--", lw=1, label=v, color="grey")
            continue
        for i, r in enumerate(rs):
            xs, ys = zip(*r.curve, strict=True) if r.curve else ((), ())
            ax.plot(
                xs, ys, lw=1, alpha=0.8, label=v if i == 0 else None, color=f"C{VARIANTS.index(v)}"
            )
    ax.set_xlabel("env steps")
    ax.set_ylabel("team return")
    ax.set_xlim(0, steps)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("MPE2 simple_spread (N = 3): team return while learning")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_learning(
    info: dict[str, Any],
    base: Scenario,
    runs: dict[str, list[LearnRun]],
    seeds: list[int],
    steps: int,
    command: str,
) -> str:
    w = world_of(base)
    L = [SECTION_LEARN, ""]
    L.append(f"Command: `{command}` · {info['date']} · {info['wall']:.0f} s wall")
    L.append("")
    L.append(
        f"Machine: {info['cores']} cores ({info['cpu']}), torch {info['torch']}. Budget "
        f"{steps:,} env steps per run (one step of the {w.kwargs.get('N', 3)}-agent env; "
        f"{w.copies} copies a tick), seeds {', '.join(map(str, seeds))}. Ours: "
        f"`scenarios/spread_64.yaml`, PPO every {base.rl.rollout} ticks, {base.rl.epochs} epochs, "
        f"lr {base.learning.lr:g}, gamma {base.rl.discount:g}; gossip "
        f"{base.gossip.graph.kind} every {base.gossip.interval} ticks. Score: mean team return "
        f"of the episodes that ended in the last {FINAL_FRACTION:.0%} of the budget (random and "
        "greedy: 200 episodes on the same episode seeds); normalised (R - R_random) / "
        "(R_greedy - R_random)."
    )
    L.append("")
    have = {v: rs for v, rs in runs.items() if rs}
    rand = float(np.mean([r.final for r in have["random"]])) if "random" in have else None
    greedy = float(np.mean([r.final for r in have["greedy"]])) if "greedy" in have else None
    L.append("| variant | team return (mean over seeds) | per seed | normalised | wall per run |")
    L.append("| --- | ---: | --- | ---: | ---: |")
    for v, rs in have.items():
        finals = [r.final for r in rs]
        norm = (
            f"{normalised(float(np.mean(finals)), rand, greedy):.2f}"
            if rand is not None and greedy is not None
            else "-"
        )
        L.append(
            f"| {v} | {np.mean(finals):.2f} | {', '.join(f'{f:.2f}' for f in finals)} | {norm} | "
            f"{np.mean([r.wall_s for r in rs]):.0f} s |"
        )
    L.append("")
    if FIGURE.exists():
        L.append(f"![team return while learning]({FIGURE.relative_to(REPO)})")
        L.append("")
    return "\n".join(L) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=("throughput", "learning"))
    ap.add_argument("--ticks", type=int, default=600, help="throughput: ticks per run")
    ap.add_argument("--steps", type=int, default=1_000_000, help="learning: env steps per run")
    ap.add_argument("--seeds", default="0,1,2", help="learning: comma-separated seeds")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="learning: which, in order")
    ap.add_argument(
        "--write", action="store_true", help="rewrite this part's BENCHMARKS.md section"
    )
    args = ap.parse_args()
    info: dict[str, Any] = machine() | {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    }
    base = load_scenario(SCENARIO)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]

    import ray
    import torch

    torch.set_num_threads(1)
    model_bench.start_ray(base)
    try:
        if args.part == "throughput":
            raws, rows = throughput(base, args.ticks)
            info["wall"] = time.perf_counter() - _T0
            body = report_throughput(info, base, args.ticks, raws, rows)
            section = SECTION_SPEED
        else:
            runs = learning(base, variants, seeds, args.steps)
            info["wall"] = time.perf_counter() - _T0
            if args.write:
                plot(runs, args.steps, FIGURE)
            command = " ".join(["bench/rl_bench.py", *sys.argv[1:]])
            body = report_learning(info, base, runs, seeds, args.steps, command)
            section = SECTION_LEARN
    finally:
        ray.shutdown()
    print(body)
    if args.write:
        model_bench.write_section(body, section)
        log(f"wrote {BENCHMARKS_MD.relative_to(REPO)}")


if __name__ == "__main__":
    main()
