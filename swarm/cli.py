"""`swarm`: run, validate and report on swarm scenarios.

    swarm run scenarios/drone_patrol.yaml        # embedded Ray; --address joins a cluster
    swarm validate scenarios/drone_patrol.yaml   # check a file without running it
    swarm report runs/<run-id>                   # redraw the plots of a finished run, replay.gif

A bad scenario file exits with status 2 and one paragraph naming file, key path and line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from protocols.tls import TlsError
from swarm.certs import make_certs
from swarm.compare import MODES, mode_scenario
from swarm.compare import compare as run_compare
from swarm.coordinator_service import main as serve
from swarm.node import main as node_main
from swarm.records import Document, Figure, WorldInfo, as_doc, as_number, figures_of
from swarm.report import ReplayUnavailable, write_plots, write_replay
from swarm.resume import read_latest
from swarm.runner import RunError, Runner, dashboard_token_hint, new_run_dir
from swarm.scenario import (
    MAX_SEED,
    Scenario,
    ScenarioError,
    groups_problem,
    load_scenario,
    override,
)
from swarm.sensors import SensorError, record_world
from swarm.tasks import task_named, task_of_world

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="yan-swarm: continually learning Yan agents that gossip knowledge over gRPC.",
)
console = Console(stderr=True)
out = Console()


def _load(path: Path, modes: tuple[str, ...] = (), **overrides: int | None) -> Scenario:
    """A scenario file and the files it names, with the top-level numbers a command overrides
    (--ticks, --seed) checked like the file's own; `modes`: the ways of sharing `swarm
    compare` will run it in, checked against its world too."""
    return _load_with_world(path, modes, **overrides)[0]


def _load_with_world(
    path: Path, modes: tuple[str, ...] = (), **overrides: int | None
) -> tuple[Scenario, WorldInfo | None]:
    """`_load`'s scenario, and what its world says of itself (a PettingZoo world's, built to
    check it; None for the drone patrol)."""
    scenario = load_scenario(path, check_files=True)
    sc = override(scenario, {k: v for k, v in overrides.items() if v is not None}, str(path))
    return sc, _check_world(sc, path, modes)


def _check_world(sc: Scenario, path: Path, modes: tuple[str, ...] = ()) -> WorldInfo | None:
    """Build a PettingZoo world once, here and without Ray, so that what the env itself refuses
    (its spaces, its agent count, an AEC env, kwargs it does not take) and what the scenario
    cannot do with its agent groups (swarm.scenario.groups_problem: shards, topology, graph)
    are said before any run directory or Ray start (ScenarioError, exit 2). The drone patrol
    is ours: its schema says all, and building it costs a physics start."""
    if sc.world.kind != "pettingzoo":
        return None
    from envs import make_world  # lazy: gymnasium and the env's package, only for these

    try:
        world = make_world(sc.world, sc.total_agents, sc.seed)
    except Exception as exc:  # a third-party constructor may raise anything for bad kwargs
        reason = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        raise ScenarioError(f"{path}: world: {reason}") from None
    try:
        info = task_of_world(sc.world.kind).describe(world)
    finally:
        world.close()
    if problem := groups_problem(sc, info):
        raise ScenarioError(f"{path}: {problem}")
    for mode in modes:
        if problem := groups_problem(mode_scenario(sc, mode, sc.seed), info):
            raise ScenarioError(f"{path}: --modes {mode}: {problem}")
    return info


def _progress_bar(enabled: bool) -> Progress:
    """A tick progress bar with elapsed time and ETA, on stderr (rich.progress.Progress)."""

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("ticks"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
    )


@app.command()
def validate(scenario: Path = typer.Argument(..., help="Scenario YAML file.")) -> None:
    """Check a scenario file (schema, types, values) without running it."""
    sc, info = _load_with_world(scenario)
    groups = info.groups if info is not None and len(info.groups) > 1 else []
    named = ", ".join(f"{g.name} {g.count}" for g in groups)
    out.print(
        f"[green]ok[/green] {scenario}: '{sc.name}', {sc.agents.count} agents "
        + (f"(groups {named}) " if groups else "")
        + f"in {sc.n_shards} shards, {sc.ticks} ticks, gossip {sc.gossip.topology}/"
        f"{sc.gossip.mode}"
    )


@app.command()
def run(
    scenario: Path = typer.Argument(
        None, help="Scenario YAML file (not with --resume: the run's own scenario is used)."
    ),
    address: str = typer.Option(
        None, "--address", envvar="RAY_ADDRESS", help="Join this Ray cluster (default: embedded)."
    ),
    runs: Path = typer.Option(Path("runs"), "--runs", help="Where run directories are made."),
    ticks: int = typer.Option(None, "--ticks", help="Override the scenario's tick count."),
    seed: int = typer.Option(None, "--seed", help="Override the scenario's seed."),
    resume: Path = typer.Option(
        None,
        "--resume",
        help="Continue the interrupted run in this directory from its last checkpoint "
        "(checkpoint.every_ticks); --ticks may lengthen it.",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Run a scenario: agents act, learn online and share knowledge; writes runs/<run-id>/."""
    sc, run_dir = _run_target(scenario, resume, runs, ticks, seed)
    console.print(
        f"[bold]{sc.name}[/bold]: {sc.agents.count} agents in {sc.n_shards} shards, "
        f"{sc.ticks} ticks, gossip {sc.gossip.topology}/{sc.gossip.mode} -> {run_dir}"
    )
    bar = _progress_bar(progress)
    task = bar.add_task("starting Ray", total=sc.ticks)

    def on_start(url: str | None) -> None:
        console.print(
            f"Ray dashboard: {url} ({dashboard_token_hint()})"
            if url
            else "Ray dashboard: not started (ray.dashboard: false, or an existing cluster's)"
        )
        bar.update(task, description="running")

    runner = Runner(
        sc,
        run_dir,
        address=address,
        on_start=on_start,
        on_tick=lambda tick: bar.update(task, completed=tick + 1),
        on_info=console.print,
        resume=resume is not None,
    )
    try:
        with bar:
            result = runner.run()
    except KeyboardInterrupt:
        marker = read_latest(run_dir / "checkpoints") if sc.checkpoint.every_ticks else None
        where = (
            f"resume it from tick {marker['ticks']} with: swarm run --resume {run_dir}"
            if marker
            else "it had no complete checkpoint (checkpoint.every_ticks), so it cannot resume"
        )
        console.print(f"interrupted: {where}")
        raise typer.Exit(130) from None
    print_summary(result.summary)


def _run_target(
    scenario: Path | None, resume: Path | None, runs: Path, ticks: int | None, seed: int | None
) -> tuple[Scenario, Path]:
    """The scenario to run and its run directory: a new one, or the one --resume names."""
    if resume is not None:
        if scenario is not None or seed is not None:
            raise typer.BadParameter("--resume continues a run with its own scenario and seed")
        if not (resume / "scenario.yaml").is_file():
            raise typer.BadParameter(f"{resume}: not a run directory (no scenario.yaml)")
        return _load(resume / "scenario.yaml", ticks=ticks), resume
    if scenario is None:
        raise typer.BadParameter("give a scenario file, or --resume RUN_DIR")
    sc = _load(scenario, ticks=ticks, seed=seed)
    return sc, new_run_dir(runs, sc)


def print_summary(summary: Document) -> None:
    """The final table of a run from its summary.json."""
    m = figures_of(as_doc(summary["metrics"]))
    r = as_doc(summary["run"])
    table = Table(
        title=f"{summary['scenario']} — {summary['agents']} agents, {summary['topology']}"
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    isolated_baseline = summary.get("isolated_baseline", True) is True
    for label, value in task_named(str(summary.get("task", "classify"))).table(
        m, isolated_baseline
    ):
        table.add_row(label, value)
    for label, value in _exchange_lines(m, summary):
        table.add_row(label, value)
    wall, rtf = as_number(r["wall_s"]), as_number(r["real_time_factor"])
    table.add_row("wall time", f"{wall:.1f} s ({rtf:.1f}x real time)")
    out.print(table)
    out.print(f"results: {r['run_dir']}")


def _exchange_lines(m: dict[str, Figure], summary: Document) -> list[tuple[str, str]]:
    """The table's lines on what the swarm sent, how it held together, and the faults."""
    lines = [("bytes sent (swarm)", f"{(m['gossip/bytes_sent'] or 0) / 2**20:.2f} MiB")]
    ratio = m.get("gossip/compression_ratio")
    lines.append(("vs dense fp32 sharing", "n/a" if not ratio else f"{ratio:.1f}x fewer"))
    if (rho := m.get("gossip/rho")) is not None:
        lines.append(("rho of gossip graph", f"{rho:.3f}"))
    if (honest := m.get("learn/probe_acc_honest")) is not None:
        lines.append(("probe accuracy, honest agents", f"{100 * honest:.1f}%"))
    if summary.get("diverged_at_tick") is not None:
        lines.append(("[red]learning diverged[/red]", f"from tick {summary['diverged_at_tick']}"))
    acct = as_doc(summary.get("accounting") or {})
    if acct and acct["sent"]:
        lines.append(
            (
                "messages: sent = delivered + rejected + dropped",
                f"{acct['sent']} = {acct['delivered']} + {acct['rejected']} + {acct['dropped']}"
                + ("" if acct["holds"] else " (does not add up!)"),
            )
        )
    kills = as_doc(summary.get("faults") or {}).get("kills") or []
    for kill in kills if isinstance(kills, list) else []:
        k = as_doc(kill)
        change = k.get("probe_acc_change")
        lines.append(
            (
                f"shard-{k['shard']} killed at tick {k['tick']}",
                f"restored from tick {k.get('checkpoint_ticks')}"
                + ("" if change is None else f", {100 * as_number(change):+.1f} points"),
            )
        )
    return lines


@app.command()
def compare(
    scenario: Path = typer.Argument(..., help="Scenario YAML file."),
    seeds: int = typer.Option(1, "--seeds", help="Seeds per mode (scenario seed, +1, ...)."),
    modes: str = typer.Option(
        "isolated,decentralized,coordinator,centralized", "--modes", help="Comma-separated."
    ),
    address: str = typer.Option(
        None, "--address", envvar="RAY_ADDRESS", help="Join this Ray cluster (default: embedded)."
    ),
    runs: Path = typer.Option(Path("runs"), "--runs", help="Where the comparison goes."),
    ticks: int = typer.Option(None, "--ticks", help="Override the scenario's tick count."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Run one scenario as isolated learners, decentralized gossip, coordinator and a
    centralized learner (same seeds); write one table and one set of plots."""
    chosen = tuple(m.strip() for m in modes.split(",") if m.strip())
    unknown = [m for m in chosen if m not in MODES]
    if unknown or not chosen:
        raise typer.BadParameter(f"unknown mode(s) {unknown}; known: {', '.join(MODES)}")
    sc = _load(scenario, chosen, ticks=ticks)
    if seeds < 1:
        raise typer.BadParameter("--seeds must be >= 1")
    if sc.seed + seeds - 1 > MAX_SEED:
        raise typer.BadParameter(
            f"--seeds {seeds} from seed {sc.seed} would go past the largest seed, {MAX_SEED}"
        )
    out_dir = new_run_dir(runs, sc.model_copy(update={"name": f"compare-{sc.name}"}))
    n_runs = len(chosen) * seeds
    console.print(
        f"[bold]compare {sc.name}[/bold]: {', '.join(chosen)} x {seeds} seed(s) = {n_runs} runs "
        f"of {sc.ticks} ticks -> {out_dir}"
    )
    bar = _progress_bar(progress)
    task = bar.add_task("starting", total=n_runs * sc.ticks)
    done = {"runs": 0}

    def on_run(mode: str, seed: int, i: int, n: int) -> None:
        done["runs"] = i
        bar.update(task, description=f"{mode} seed {seed} ({i + 1}/{n})")

    def on_tick(tick: int) -> None:
        bar.update(task, completed=done["runs"] * sc.ticks + tick + 1)

    with bar:
        result = run_compare(
            sc,
            out_dir,
            modes=chosen,
            seeds=[sc.seed + i for i in range(seeds)],
            address=address,
            on_run=on_run,
            on_tick=on_tick,
        )
    out.print(result.table, markup=False, soft_wrap=True)
    out.print(f"results: {out_dir}")


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A run directory (runs/<run-id>)."),
    replay: bool = typer.Option(
        True, "--replay/--no-replay", help="Also animate the run as replay.gif (a few seconds)."
    ),
    replay_step: int | None = typer.Option(
        None, "--replay-step", min=1, help="Ticks between replay frames (default: ~120 frames)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Redraw the plots of a finished run from its metrics.jsonl, and its replay.gif."""

    if not (run_dir / "metrics.jsonl").exists():
        raise typer.BadParameter(f"{run_dir} has no metrics.jsonl", param_hint="RUN_DIR")
    for path in write_plots(run_dir):
        out.print(f"wrote {path}")
    if replay:
        _report_replay(run_dir, replay_step, progress)
    summary = run_dir / "summary.json"
    if summary.exists():
        print_summary(json.loads(summary.read_text()))


def _report_replay(run_dir: Path, step: int | None, progress: bool) -> None:
    """Write the run's replay.gif with a frame progress bar, or say why there is none."""
    bar = Progress(
        TextColumn("replay.gif"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("frames"),
        TimeElapsedColumn(),
        console=console,
        disable=not progress,
        transient=True,
    )
    task = bar.add_task("replay", total=None)

    def on_frame(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    try:
        with bar:
            gif = write_replay(run_dir, step, on_frame)
    except ReplayUnavailable as e:
        out.print(f"no replay: {e}", markup=False, soft_wrap=True)
        return
    out.print(f"wrote {gif} ({bar.tasks[0].completed:.0f} frames)")


@app.command()
def certs(
    out_dir: Path = typer.Argument(..., help="Directory to write ca.pem and node certificates."),
    nodes: list[str] = typer.Option(
        ...,
        "--node",
        help="Node name (repeatable), e.g. agent-4; with =HOST[,HOST] also the IPs / DNS "
        "names peers dial it by (agent-4=10.0.0.14).",
    ),
    days: int = typer.Option(365, "--days", help="Validity of the certificates."),
) -> None:
    """Make a small CA and one certificate + key per node, for TLS / mutual TLS."""

    for path in make_certs(out_dir, nodes, days=days):
        out.print(f"wrote {path}")


@app.command()
def node(
    config: Path = typer.Option(..., "--config", help="Node config YAML (docs/node.md)."),
    status: bool = typer.Option(False, "--status", help="Show what the node is doing."),
    ticks: int | None = typer.Option(None, "--ticks", help="Readings to process."),
) -> None:
    """Run one agent as a device node (the same program as `swarm-node`; no Ray)."""

    argv = ["--config", str(config)] + (["--status"] if status else [])
    node_main(argv + (["--ticks", str(ticks)] if ticks else []))


@app.command()
def coordinator(
    scenario: Path = typer.Argument(..., help="Scenario YAML (gossip.topology: coordinator)."),
    listen: str = typer.Option("127.0.0.1:50050", "--listen", help="HOST:PORT to serve on."),
    advertise: str | None = typer.Option(None, "--advertise", help="HOST:PORT nodes dial."),
) -> None:
    """Serve the coordinator for device nodes (`coordinator:` in their node.yaml); no Ray."""

    serve(scenario, listen, advertise)


@app.command()
def record(
    scenario: Path = typer.Argument(..., help="Scenario YAML with a drone_patrol world."),
    agents: list[int] = typer.Option(..., "--agent", help="Agent whose stream to record."),
    ticks: int | None = typer.Option(None, "--ticks", help="Ticks (default: the scenario's)."),
    out_dir: Path = typer.Option(Path("recordings"), "--out", help="Output directory."),
) -> None:
    """Record drones' sensor streams (JSON lines) for `swarm-node` file or stdin sensors."""

    sc = load_scenario(scenario)
    n = ticks or sc.ticks
    try:
        with _progress_bar(True) as bar:
            task = bar.add_task("recording", total=n)
            paths = record_world(
                sc.world, sc.total_agents, sc.seed, agents, n, out_dir,
                window=sc.learning.window, probe_per_class=sc.metrics.probe_per_class,
                progress=lambda k: bar.advance(task, k),
            )  # fmt: skip
    except SensorError as exc:
        raise typer.BadParameter(str(exc)) from None
    for path in paths:
        out.print(f"wrote {path}")


def main() -> None:
    """Console entry point: user errors become one paragraph and exit code 2."""
    try:
        app()
    except ScenarioError as exc:
        # The message holds key paths like `zones[1]`: print it as plain text, not rich markup.
        console.print(Text("error: ", style="red") + Text(str(exc)), soft_wrap=True)
        sys.exit(2)
    except (RunError, TlsError) as exc:
        console.print(Text("error: ", style="red") + Text(str(exc)), soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
