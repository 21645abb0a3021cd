"""`swarm compare`: one scenario, the same seeds, every way of sharing, side by side.

Modes (each a full run through the Runner, on one Ray instance):

- ``isolated``: every agent learns alone (no exchange);
- ``decentralized``: peer-to-peer gossip over the scenario's graph (its `gossip:` settings);
- ``coordinator``: deltas through a coordinator (the scenario's `coordinator:` settings);
- ``centralized``: the upper bound, one model trained on every agent's data (all agents in one
  shard, their gradients averaged every step; no network).

Each run keeps the scenario's every other setting; the isolated twins inside a run are
switched off (the isolated mode is the baseline). The headline figure is the final probe
accuracy for a classification world, the team return of the last quarter for a world with
rewards. Results: ``compare.json`` (every run's final figures), ``compare.md`` (the table:
mean and spread per mode over the seeds, and the goals), ``compare_task.png`` (the task score
over time, where the world scores one), ``compare_curves.png`` (the headline
figure over time, mean and min-max band per mode) and ``compare_bytes.png``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from swarm.records import Figure, Row, as_doc, as_number, figures_of
from swarm.report import _pyplot
from swarm.runner import Runner, start_ray, stop_ray
from swarm.scenario import Scenario
from swarm.tasks import Task, task_named

MODES = ("isolated", "decentralized", "coordinator", "centralized")
#: The issue's goals for decentralized gossip, checked in the table.
GOAL_OF_CENTRALIZED = 0.95
GOAL_FEWER_BYTES = 20.0


def mode_scenario(sc: Scenario, mode: str, seed: int) -> Scenario:
    """The scenario as one mode of the comparison runs it."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    data = sc.model_dump(mode="json")
    data["seed"] = seed
    data["name"] = f"{sc.name}-{mode}-s{seed}"
    data["gossip"]["topology"] = mode
    if mode != "decentralized":  # sightings travel between gossip neighbours only
        data["gossip"]["sightings"]["per_round"] = 0
    data["baseline"]["isolated"] = False
    if mode == "centralized":
        data["agents"]["per_shard"] = sc.agents.count
    return Scenario.model_validate(data)


@dataclass
class ModeRun:
    """One run of the comparison (an entry of compare.json)."""

    mode: str
    seed: int
    run_dir: str
    task: str
    metrics: dict[str, Figure]  # summary.json's final figures
    wall_s: float
    curve: list[tuple[float, float]]  # (simulated s, the headline's row figure)
    #: (simulated s, task/score) where the world scores a task (what the swarm did, so far)
    task_curve: list[tuple[float, float]] = field(default_factory=list)

    def figure(self, key: str) -> Figure:
        return self.metrics.get(key)


@dataclass
class CompareResult:
    out_dir: Path
    runs: list[ModeRun] = field(default_factory=list)
    table: str = ""


def headline(task: str) -> tuple[str, str]:
    """(metrics key, label) of the figure a run of this task is judged by."""
    return task_named(task).headline


def compare(
    sc: Scenario,
    out_dir: Path,
    *,
    modes: tuple[str, ...] = MODES,
    seeds: list[int] | None = None,
    address: str | None = None,
    on_run: Callable[[str, int, int, int], None] = lambda mode, seed, i, n: None,
    on_tick: Callable[[int], None] = lambda tick: None,
) -> CompareResult:
    """Run every mode for every seed; write the table and plots into out_dir."""

    seeds = seeds or [sc.seed]
    out_dir.mkdir(parents=True, exist_ok=True)
    result = CompareResult(out_dir)
    started, _ = start_ray(sc, address)
    try:
        n = len(modes) * len(seeds)
        for i, (seed, mode) in enumerate((s, m) for s in seeds for m in modes):
            on_run(mode, seed, i, n)
            msc = mode_scenario(sc, mode, seed)
            run_dir = out_dir / "runs" / f"{mode}-seed{seed}"
            run_dir.mkdir(parents=True, exist_ok=True)
            run = Runner(msc, run_dir, address=address, on_tick=on_tick).run()
            task = str(run.summary["task"])
            rows = [Row.from_json(r) for r in run.rows]
            result.runs.append(
                ModeRun(
                    mode=mode,
                    seed=seed,
                    run_dir=str(run_dir),
                    task=task,
                    metrics=figures_of(as_doc(run.summary["metrics"])),
                    wall_s=as_number(as_doc(run.summary["run"])["wall_s"]),
                    curve=_curve(rows, task),
                    task_curve=_series(rows, "task/score"),
                )
            )
    finally:
        stop_ray(started)
    result.table = write_results(result, sc)
    return result


def _curve(rows: list[Row], task: str) -> list[tuple[float, float]]:
    return _series(rows, task_named(task).curve)


def _series(rows: list[Row], key: str) -> list[tuple[float, float]]:
    return [(r.sim_time_s, r.value(key)) for r in rows if r.get(key) is not None]


def _stats(values: list[Figure], missing: str = "n/a") -> str:
    """Mean ± standard deviation over the runs that have the figure; `missing` for a run
    without it (e.g. a newcomer that never caught up) is named with their count."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    gone = len(values) - v.size
    if not v.size:
        return missing
    text = f"{v[0]:.3f}" if v.size == 1 else f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"
    return text + (f" ({gone} of {len(values)}: {missing})" if gone else "")


def write_results(result: CompareResult, sc: Scenario) -> str:
    """compare.json, compare.md and the plots; returns the markdown table."""
    out = result.out_dir
    runs_json = [dataclasses.asdict(r) for r in result.runs]
    (out / "compare.json").write_text(json.dumps(runs_json, indent=2, sort_keys=True))
    task = task_named(result.runs[0].task)
    by_mode: dict[str, list[ModeRun]] = {}
    for r in result.runs:
        by_mode.setdefault(r.mode, []).append(r)
    seeds = sorted({r.seed for r in result.runs})
    lines = [
        f"# swarm compare: {sc.name}, {sc.agents.count} agents, {sc.ticks} ticks, "
        f"seeds {', '.join(map(str, seeds))}",
        "",
        *_mode_table(by_mode, task.headline),
        "",
        "Spread: ± one standard deviation over the seeds.",
        "",
        *_verdicts(by_mode, task),
    ]
    table = "\n".join(lines) + "\n"
    (out / "compare.md").write_text(table)
    _plot(by_mode, task.headline[1], out)
    return table


def _mean(runs: list[ModeRun], key: str) -> float:
    finite = [v for v in (r.figure(key) for r in runs) if v is not None]
    return float(np.mean(finite)) if finite else float("nan")


#: What the swarm did, beside what it knows: (metrics key, column) of the task table; a
#: column no run has is left out (a world with rewards has none of these).
#: A run without the figure shows the third field (n/a but for the newcomer: it never did).
TASK_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("task/score", "task score", "n/a"),
    ("task/f1", "detection F1", "n/a"),
    ("task/first_encounter_recall", "first-encounter recall", "n/a"),
    ("task/first_encounter_recall_all", "first-encounter recall, all", "n/a"),
    ("task/altitude_violations", "altitude violations", "n/a"),
    ("task/first_sign_violations", "violations at a first sign", "n/a"),
    ("learn/newcomer_catchup_s", "newcomer catch-up (s)", "never"),
)
#: The issue's goals for what the decentralized swarm does (issue 17).
GOAL_TASK_OVER_ISOLATED = 0.15
GOAL_FIRST_ENCOUNTER = 0.8
GOAL_FIRST_ENCOUNTER_ISOLATED = 0.3


def _mode_table(by_mode: dict[str, list[ModeRun]], headline: tuple[str, str]) -> list[str]:
    """One row per mode: what the swarm knows (the headline), what it sent, how long it took;
    then one row per mode of what it did (TASK_COLUMNS)."""
    key, label = headline
    lines = [
        f"| mode | {label} | bytes sent (MiB) | x fewer than dense fp32 | wall s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for mode, runs in by_mode.items():
        sent: list[Figure] = [(r.figure("gossip/bytes_sent") or 0) / 2**20 for r in runs]
        wall: list[Figure] = [r.wall_s for r in runs]
        cells = [
            [r.figure(key) for r in runs],
            sent,
            [r.figure("gossip/compression_ratio") for r in runs],
            wall,
        ]
        lines.append(f"| {mode} | " + " | ".join(_stats(c) for c in cells) + " |")
    every = [r for runs in by_mode.values() for r in runs]
    columns = [col for col in TASK_COLUMNS if any(r.figure(col[0]) is not None for r in every)]
    if not columns:
        return lines
    lines += [
        "",
        "What the swarm did:",
        "",
        "| mode | " + " | ".join(c for _, c, _ in columns) + " |",
        "| --- |" + " ---: |" * len(columns),
    ]
    for mode, runs in by_mode.items():
        stats = [_stats([r.figure(k) for r in runs], missing) for k, _, missing in columns]
        lines.append(f"| {mode} | " + " | ".join(stats) + " |")
    return lines


def _verdicts(by_mode: dict[str, list[ModeRun]], task: type[Task]) -> list[str]:
    """The goals: decentralized against centralized and isolated, in what the swarm knows and
    in what it did (the task score, first encounters), and in bytes."""
    if not {"decentralized", "centralized", "isolated"} <= set(by_mode):
        return []
    key, label = task.headline
    dec, cen, iso = (_mean(by_mode[m], key) for m in ("decentralized", "centralized", "isolated"))
    lines = []
    if task.headline_is_a_share:
        of = dec / cen if cen else float("nan")
        goal = of >= GOAL_OF_CENTRALIZED
        lines.append(
            f"- decentralized reaches {100 * of:.1f}% of the centralized learner's final "
            f"{label} (goal >= {100 * GOAL_OF_CENTRALIZED:.0f}%): "
            f"**{'met' if goal else 'missed'}**"
        )
    lines.append(
        f"- decentralized vs isolated: {dec - iso:+.3f} ({label}); "
        f"**{'above' if dec > iso else 'not above'}**"
    )
    lines += _task_verdicts(by_mode)
    ratios = [r.figure("gossip/compression_ratio") for r in by_mode["decentralized"]]
    fewer = float(np.mean([r for r in ratios if r])) if any(ratios) else float("nan")
    lines.append(
        f"- decentralized sends {fewer:.1f}x fewer bytes than dense sharing (goal >= "
        f"{GOAL_FEWER_BYTES:.0f}x): **{'met' if fewer >= GOAL_FEWER_BYTES else 'missed'}**"
    )
    return lines


def _met(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def _task_verdicts(by_mode: dict[str, list[ModeRun]]) -> list[str]:
    """Whether sharing won the task, by how much, and what drones knew at first encounters."""
    score = {m: _mean(by_mode[m], "task/score") for m in by_mode}
    if np.isnan(score["isolated"]):
        return []
    lines = []
    for mode in (m for m in by_mode if m != "isolated"):
        gain = score[mode] - score["isolated"]
        won = "won" if gain > 0 else "did not win"
        lines.append(
            f"- {mode} vs isolated in the task: score {gain:+.3f}; sharing **{won}** the task"
        )
    dec, cen, iso = score["decentralized"], score["centralized"], score["isolated"]
    lines.append(
        f"- decentralized task score {dec:.3f}: isolated + {dec - iso:.3f} (goal >= "
        f"+{GOAL_TASK_OVER_ISOLATED}): {_met(dec - iso >= GOAL_TASK_OVER_ISOLATED)}; "
        f"{100 * dec / cen:.1f}% of centralized (goal >= {100 * GOAL_OF_CENTRALIZED:.0f}%): "
        f"{_met(dec >= GOAL_OF_CENTRALIZED * cen)}"
    )
    first = {m: _mean(by_mode[m], "task/first_encounter_recall") for m in by_mode}
    if not np.isnan(first["decentralized"]):
        d, i = first["decentralized"], first["isolated"]
        lines.append(
            f"- first-encounter recall: decentralized {d:.3f} (goal >= "
            f"{GOAL_FIRST_ENCOUNTER}): {_met(d >= GOAL_FIRST_ENCOUNTER)}; isolated {i:.3f} "
            f"(goal <= {GOAL_FIRST_ENCOUNTER_ISOLATED}): "
            f"{_met(i <= GOAL_FIRST_ENCOUNTER_ISOLATED)}"
        )
    return lines


COLORS = {"isolated": "tab:red", "decentralized": "tab:blue", "coordinator": "tab:green",
          "centralized": "black"}  # fmt: skip


def _plot_curves(
    by_mode: dict[str, list[ModeRun]],
    curve_of: Callable[[ModeRun], list[tuple[float, float]]],
    label: str,
    path: Path,
) -> None:
    """One figure over simulated time per mode: the mean over seeds, and a min-max band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for mode, runs in by_mode.items():
        curves = [np.asarray(curve_of(r), dtype=float) for r in runs if curve_of(r)]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        t = curves[0][:n, 0]
        v = np.stack([c[:n, 1] for c in curves])  # (seeds, n)
        ax.plot(t, v.mean(0), color=COLORS.get(mode), linewidth=2, label=f"{mode} (mean)")
        if len(curves) > 1:
            ax.fill_between(t, v.min(0), v.max(0), color=COLORS.get(mode), alpha=0.15)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"{label} by way of sharing (band: min-max over seeds)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot(by_mode: dict[str, list[ModeRun]], label: str, out: Path) -> None:
    plt = _pyplot()
    _plot_curves(by_mode, lambda r: r.curve, label, out / "compare_curves.png")
    if any(r.task_curve for runs in by_mode.values() for r in runs):
        # what the swarm did, as it went: the score counts every decision from the start
        _plot_curves(by_mode, lambda r: r.task_curve, "task score", out / "compare_task.png")

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    names = list(by_mode)
    sent = [
        np.mean([r.figure("gossip/bytes_sent") or 0 for r in by_mode[m]]) / 2**20 for m in names
    ]
    dense = [
        np.mean([r.figure("gossip/dense_bytes") or 0 for r in by_mode[m]]) / 2**20 for m in names
    ]
    x = np.arange(len(names))
    ax.bar(x - 0.2, sent, width=0.4, label="sent (as configured)")
    ax.bar(x + 0.2, dense, width=0.4, label="dense fp32 equivalent", alpha=0.6)
    ax.set_xticks(x, names)
    ax.set_ylabel("MiB sent by the whole swarm")
    ax.set_title("Knowledge exchange traffic per mode (mean over seeds)")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out / "compare_bytes.png")
    plt.close(fig)
