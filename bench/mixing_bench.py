"""What it costs a decentralized swarm to do as well as the centralized learner on the task.

Usage:
    .venv/bin/python bench/mixing_bench.py                  # every variant, seeds 7, 8, 9
    .venv/bin/python bench/mixing_bench.py --seeds 9 --variants shipped,exponential-int8
    .venv/bin/python bench/mixing_bench.py --quick          # every code path, 2 variants, ~3 min
    .venv/bin/python bench/mixing_bench.py --write          # also rewrite its BENCHMARKS.md section

scenarios/drone_patrol.yaml as shipped (re-tasking: zones rotate every 75 s, a newcomer at
150 s), run decentralized under each way of mixing (graph, CHOCO step gamma, compression, round
interval), and once centralized (the upper bound) on the same seeds. The figures: task score
(what the swarm did) and its share of the centralized score, first-encounter recall, how long
after its first label the altitude-limit sign was recognised by 90% of the drones
(`learn/spread_s/altitude_limit_sign`), and the bytes each drone sends per simulated second.
Every run goes through the real Runner on one embedded Ray; progress goes to stderr, the table
to stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: bench/ is on sys.path, the repo root is not

from model_bench import log, machine, start_ray, write_section  # noqa: E402

from swarm.runner import Runner, new_run_dir, stop_ray  # noqa: E402
from swarm.scenario import Scenario, load_scenario  # noqa: E402

SECTION = (
    "## Mixing: what decentralized gossip needs to match the centralized task score "
    "(`bench/mixing_bench.py`)"
)
DENSE = {"kind": "none", "ratio": 1.0}
NONE = {"per_round": 0}
INT8 = {"kind": "int8", "ratio": 1.0}
#: name -> (what it is, the gossip settings it changes)
VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    "shipped": (
        "ring, gamma 0.3, topk_int8 0.08, every 5 ticks, 4 sightings per round (the scenario)",
        {},
    ),
    "weights-only": ("as shipped without sightings: only the weights", {"sightings": NONE}),
    "sightings-1": ("as shipped, 1 sighting per round", {"sightings": {"per_round": 1}}),
    "sightings-2": ("as shipped, 2 sightings per round", {"sightings": {"per_round": 2}}),
    "sightings-8": ("as shipped, 8 sightings per round", {"sightings": {"per_round": 8}}),
    # weights only, as measured before sightings (issue 17): how close mixing alone comes
    "exponential": (
        "exponential graph, weights only, otherwise shipped",
        {"graph": {"kind": "exponential"}, "sightings": NONE},
    ),
    "every-2": (
        "a round every 2 ticks, weights only, otherwise shipped",
        {"interval": 2, "sightings": NONE},
    ),
    "exponential-gamma-0.5": (
        "exponential graph, gamma 0.5, weights only, otherwise shipped",
        {"graph": {"kind": "exponential"}, "gamma": 0.5, "sightings": NONE},
    ),
    "ring-int8": (
        "ring, gamma 1, int8, weights only",
        {"gamma": 1.0, "compression": INT8, "sightings": NONE},
    ),
    "exponential-int8": (
        "exponential graph, gamma 1, int8, weights only",
        {"graph": {"kind": "exponential"}, "gamma": 1.0, "compression": INT8, "sightings": NONE},
    ),
    "complete-dense": (
        "complete graph, gamma 1, dense fp32, weights only: exact averaging every round",
        {"graph": {"kind": "complete"}, "gamma": 1.0, "compression": DENSE, "sightings": NONE},
    ),
}
KEYS = (
    "task/score",
    "task/first_encounter_recall",
    "learn/spread_s/altitude_limit_sign",
    "learn/probe_acc",
    "gossip/bytes_sent",
)


def variant(base: Scenario, seed: int, gossip: dict[str, object] | None) -> Scenario:
    """The scenario for one run: decentralized with `gossip` changes, or centralized (None)."""
    data = base.model_dump(mode="json")
    data.update(seed=seed, name=f"{base.name}-mixing-s{seed}")
    data["baseline"]["isolated"] = False
    data["checkpoint"]["every_ticks"] = 0
    data["ray"]["dashboard"] = False
    if gossip is None:
        data["gossip"]["topology"] = "centralized"
        data["gossip"]["sightings"]["per_round"] = 0
        data["agents"]["per_shard"] = base.agents.count
    else:
        data["gossip"].update(topology="decentralized", **gossip)
    return Scenario.model_validate(data)


def figures(sc: Scenario, root: Path) -> tuple[dict[str, float | None], float]:
    """(the KEYS of one run's summary, wall s)."""
    t0 = time.perf_counter()
    m = Runner(sc, new_run_dir(root, sc)).run().summary["metrics"]
    assert isinstance(m, dict)
    out = {k: (None if m.get(k) is None else float(m[k])) for k in KEYS}
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="7,8,9")
    ap.add_argument("--variants", default=",".join(v for v in VARIANTS if "gamma" not in v))
    ap.add_argument("--quick", action="store_true", help="seed 9, 120 ticks, 2 variants")
    ap.add_argument("--write", action="store_true", help="rewrite this section of BENCHMARKS.md")
    args = ap.parse_args()
    base = load_scenario(REPO / "scenarios" / "drone_patrol.yaml")
    if args.quick:
        args.seeds, args.variants = "9", "shipped,exponential-int8"
        base = base.model_copy(update={"ticks": 120})
    seeds = [int(s) for s in args.seeds.split(",") if s]
    names = [v for v in args.variants.split(",") if v]
    start_ray(base)
    results: dict[str, list[dict[str, float | None]]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cells = [("centralized", None)] + [(n, VARIANTS[n][1]) for n in names]
            for i, (name, gossip) in enumerate(cells):
                for seed in seeds:
                    got, wall = figures(variant(base, seed, gossip), Path(tmp))
                    results.setdefault(name, []).append(got)
                    log(f"[{i + 1}/{len(cells)}] {name:17s} seed {seed}: task score "
                        f"{got['task/score']:.3f} ({wall:.0f} s)")  # fmt: skip
    finally:
        stop_ray(True)
    body = report(base, seeds, names, results, quick=args.quick)
    print(body)
    if args.write:
        write_section(body, SECTION)


def _mean(runs: list[dict[str, float | None]], key: str) -> float | None:
    v = [r[key] for r in runs if r[key] is not None]
    return float(np.mean(v)) if v else None


def _fmt(v: float | None, spec: str) -> str:
    return "never" if v is None else format(v, spec)


def report(
    base: Scenario,
    seeds: list[int],
    names: list[str],
    results: dict[str, list[dict[str, float | None]]],
    *,
    quick: bool,
) -> str:
    m = machine()
    cmd = ".venv/bin/python bench/mixing_bench.py" + (" --quick" if quick else " --write")
    per_s = base.agents.count * base.ticks * base.world.tick_s  # agent-seconds of a run
    central = _mean(results["centralized"], "task/score") or float("nan")
    lines = [
        SECTION,
        "",
        f"`{cmd}` ({dt.date.today()}, {m['cores']} cores, {m['cpu']}). scenarios/"
        f"drone_patrol.yaml as shipped ({base.agents.count} drones, {base.ticks} ticks), seeds "
        f"{', '.join(map(str, seeds))}, decentralized under each way of mixing; centralized "
        "is the upper bound. Means over the seeds; task score per seed in brackets. Sign "
        "spread: seconds from the sign's first label to 90% of the drones recognising it "
        "(`learn/spread_s/altitude_limit_sign`, mean over the seeds where it happened).",
        "",
        "| mixing | task score (per seed) | of centralized | first-encounter recall "
        "| sign spread (s) | bytes per drone per simulated s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in ["centralized", *names]:
        runs = results[name]
        score = _mean(runs, "task/score") or float("nan")
        seeds_s = ", ".join(f"{r['task/score']:.3f}" for r in runs)
        what = "one model on everyone's data" if name == "centralized" else VARIANTS[name][0]
        sent = (_mean(runs, "gossip/bytes_sent") or 0.0) / per_s
        lines.append(
            f"| {name}: {what} | {score:.3f} ({seeds_s}) | {100 * score / central:.1f}% "
            f"| {_fmt(_mean(runs, 'task/first_encounter_recall'), '.3f')} "
            f"| {_fmt(_mean(runs, 'learn/spread_s/altitude_limit_sign'), '.1f')} "
            f"| {sent / 1024:.1f} KiB |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
