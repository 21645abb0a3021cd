"""The Runner: starts Ray, places the World, AgentShards and Coordinator, drives the ticks.

The driver only schedules. Each tick it submits `shard.act(step)` for every shard and
`world.step(*predictions)`, passing object refs so Ray chains the calls without the driver
waiting; gossip rounds chain `share` -> `merge` the same way (in sync mode every `merge` takes
all `share` results as arguments: that is the round barrier). The driver waits (`ray.wait`) only
to bound the calls in flight and to show progress, and fetches metrics as lists.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

import numpy as np

from protocols.faults import FaultPlan
from protocols.topology import build_graph, build_graph_in_groups, mixing_summary
from swarm.accounting import account
from swarm.certs import make_certs
from swarm.exchange import exchange_for
from swarm.records import (
    Document,
    Figure,
    Row,
    RunInfo,
    RunSummary,
    ShardMeasure,
    Traffic,
    WorldInfo,
)
from swarm.report import write_plots
from swarm.resume import Marker, read_latest, tick_dir
from swarm.scenario import Scenario, dump_scenario, read_key_file
from swarm.tasks import task_named
from swarm.telemetry import Telemetry, row_figures


@dataclass
class RunResult:
    run_dir: Path
    summary: Document  # summary.json
    rows: list[Document] = field(default_factory=list)  # metrics.jsonl


def new_run_dir(root: Path, scenario: Scenario) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir = root / f"{scenario.name}-{stamp}-{secrets.token_hex(2)}"
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


def read_key(path: str) -> bytes:
    """The swarm's shared HMAC key from gossip.key_file (swarm.scenario.read_key_file: a
    regular file of 32 bytes to 64 KiB)."""
    try:
        return read_key_file(Path(path))
    except ValueError as exc:
        raise RunError(f"gossip.key_file {exc}") from None


def start_ray(scenario: Scenario, address: str | None) -> tuple[bool, str | None]:
    """Join `address` (or RAY_ADDRESS) if given, else start an embedded Ray.

    Returns (we started it, dashboard URL or None).
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:  # before Ray is imported: it reads RAY_AUTH_MODE when it loads its config
        _token_auth_for_clients()
    import ray  # lazy: importing swarm (the CLI, `swarm validate`) must not load Ray

    if ray.is_initialized():
        return False, None
    # Actors import our packages by name; make sure workers find them where the driver does.
    root = str(Path(__file__).resolve().parents[1])
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}}
    if address:
        try:
            ctx = ray.init(address=address, runtime_env=env, log_to_driver=False)
        except (ConnectionError, RuntimeError) as exc:
            raise RunError(
                f"cannot join the Ray cluster at {address}: {str(exc).splitlines()[0]} "
                "(is `ray start --head` running there, and is its auth token in "
                "~/.ray/auth_token or RAY_AUTH_TOKEN?)"
            ) from None
    else:
        ctx = ray.init(
            # a new instance even when a `ray start` cluster runs on this machine: without
            # "local", ray.init joins that one and then refuses object_store_memory
            address="local",
            num_cpus=scenario.ray.num_cpus,
            include_dashboard=scenario.ray.dashboard,
            object_store_memory=scenario.ray.object_store_mb * 2**20,
            runtime_env=env,
            log_to_driver=False,
            configure_logging=False,
            _system_config={"task_events_max_num_task_in_gcs": scenario.ray.task_events_kept},
        )
    url = getattr(ctx, "dashboard_url", None) or None
    return not address, (f"http://{url}" if url and not url.startswith("http") else url)


def stop_ray(started: bool) -> None:
    """Shut down the Ray instance `start_ray` started; a cluster it joined keeps running."""
    if started:
        import ray  # lazy: importing swarm must not load Ray

        ray.shutdown()


DIVERGED = (
    "learning diverged: from tick {tick} some agent's weights are not finite (consensus "
    "distance nan or inf); a smaller gossip.gamma (with top-k compression) or learning.lr "
    "keeps a swarm together"
)


def diverged_at(rows: list[Row]) -> int | None:
    """The tick of the first metrics row whose consensus distance is not finite: an agent's
    weights hold inf or NaN (the mean square distance to the mean takes in every parameter of
    every agent). None if there is none."""
    for row in rows:
        d = row.get("learn/consensus_distance")
        if d is not None and not math.isfinite(d):
            return row.tick
    return None


class RunError(Exception):
    """A run that cannot start or finish for a reason the user can act on."""


def dashboard_token_hint() -> str:
    """How to get the token the Ray dashboard asks for (Ray >= 2.59 starts clusters with token
    authentication; nothing in its page says where the token is)."""
    if os.environ.get("RAY_AUTH_MODE") == "disabled":
        return "no token: RAY_AUTH_MODE=disabled"
    if "RAY_AUTH_TOKEN" in os.environ:
        return "its token is in the environment variable RAY_AUTH_TOKEN"
    return f"it asks for a token: `cat {_token_file()}`"


def _token_file() -> Path:
    """Where Ray keeps its auth token: RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))


def _token_auth_for_clients() -> None:
    # Ray >= 2.59 enables token auth on clusters started with `ray start --head`, but a client
    # joining with ray.init(address=...) only sends the token when RAY_AUTH_MODE=token
    # (ray-project/ray#64755 review: "Clients skip auto token auth"). Opt in when a token exists,
    # before Ray is first imported in this process: it reads the variable when it loads (set
    # later, it was ignored and `swarm run --address` was refused: tests/test_cluster_join.py).
    has_token = "RAY_AUTH_TOKEN" in os.environ or _token_file().exists()
    if has_token and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"


class Runner:
    """Runs one scenario to completion and writes runs/<run-id>/."""

    def __init__(
        self,
        scenario: Scenario,
        run_dir: Path,
        *,
        address: str | None = None,
        on_start: Callable[[str | None], None] = lambda url: None,
        on_tick: Callable[[int], None] = lambda tick: None,
        on_info: Callable[[str], None] = lambda text: None,
        resume: bool = False,
    ):
        self.sc = scenario
        self.resume = resume
        self.run_dir = run_dir
        self.address = address
        self.on_start = on_start
        self.on_tick = on_tick
        self.on_info = on_info
        self.rho: float | None = None
        self.mixing: dict[str, float] = {}
        self.first_labels: dict[int, int] = {}
        self.graph: Document = {}
        self.ckpt_root = run_dir / "checkpoints"
        self.marker: Marker | None = None  # the checkpoint a resumed run starts from
        self.kills: list[Document] = []  # injected shard kills and what was restored
        self.placement: list[Document] = []
        self.last_traffic: list[Traffic] = []
        self.coordinator_traffic: dict[str, int] = {}
        self._rows_file: TextIO | None = None
        self.byzantine: frozenset[int] = frozenset()
        self.exchange = exchange_for(scenario.gossip.topology)
        self.telemetry = Telemetry("")  # the run's, once it starts

    def run(self) -> RunResult:
        if self.address or os.environ.get("RAY_ADDRESS"):  # before the driver imports Ray
            _token_auth_for_clients()
        from swarm.driver import Driver  # lazy: importing swarm (the CLI) must not load Ray

        t0 = time.perf_counter()
        started, url = start_ray(self.sc, self.address)
        try:
            self.on_start(url)
            rows = self._prepare(Driver.cpus())
            driver = Driver(self)
            self.telemetry = Telemetry(self.run_dir.name)  # live figures, labelled with the run id
            try:
                info = driver.start()
                setup = time.perf_counter() - t0
                rows = driver.loop(info, rows)
                trajectory, layout_map = driver.trajectories()
                self.first_labels = driver.first_labels()
                self.coordinator_traffic = driver.coordinator_traffic()
                wall = time.perf_counter() - t0
            finally:
                if self._rows_file is not None:
                    self._rows_file.close()
                self.telemetry.close()
                driver.close()
        finally:
            stop_ray(started)
        summary = self._summary(rows, info, wall, setup, url)
        self._write(summary, trajectory, layout_map)
        return RunResult(self.run_dir, summary.as_json(), [r.as_json() for r in rows])

    # -- set-up ----------------------------------------------------------------------------------

    def _prepare(self, cpus: float) -> list[Row]:
        """Settle the scenario on the cluster the run landed on (`cpus`) and write it; returns
        the metrics rows a resumed run already has."""
        # agents.per_shard 'auto': sized for the CPUs of the cluster the run landed on
        sc = self.sc.with_shards(cpus)
        if sc is not self.sc:
            self.on_info(f"shards: {sc.n_shards} of up to {sc.per_shard} agents (auto)")
        sc = self.sc = self._with_certs(sc)
        for k in sc.faults.kill:
            if k.shard >= sc.n_shards:
                raise RunError(
                    f"faults.kill: shard {k.shard} does not exist ({sc.n_shards} shards)"
                )
        (self.run_dir / "scenario.yaml").write_text(dump_scenario(sc))
        if self.exchange.rounds and not sc.shares:
            self.on_info("gossip: no rounds (rl.enabled is false: the weights never change)")
        if sc.faults.byzantine.active:
            seed = sc.seed if sc.faults.seed is None else sc.faults.seed
            self.byzantine = FaultPlan(sc.faults, sc.total_agents, seed).byzantine
            self.on_info(f"faults: Byzantine agents {sorted(self.byzantine)}")
        return self._resume_rows() if self.resume else []

    def _with_certs(self, sc: Scenario) -> Scenario:
        """TLS without a cert_dir: make a CA and certificates for this run's nodes in
        run_dir/certs (shard-<i>, coordinator), so `tls.mode: mtls` works out of the box."""
        if sc.gossip.tls.mode == "off" or sc.gossip.tls.cert_dir:
            return sc
        cert_dir = self.run_dir / "certs"
        make_certs(cert_dir, [f"shard-{i}" for i in range(sc.n_shards)] + ["coordinator"])
        data = sc.model_dump(mode="json")
        data["gossip"]["tls"]["cert_dir"] = str(cert_dir)
        self.on_info(f"TLS ({sc.gossip.tls.mode}): made a CA and node certificates in {cert_dir}")
        return Scenario.model_validate(data)

    def graph_edges(
        self, positions: np.ndarray | None, info: WorldInfo | None = None
    ) -> list[tuple[int, int]] | None:
        """Build the gossip graph once (every shard gets the same edges) and log its mixing
        figures: rho decides how fast gossip can agree (error <= rho^t). None when the
        exchange needs no graph.

        A world of two or more agent groups (`info.groups`) gets one graph of the scenario's
        kind per group, over that group's agents (`build_graph_in_groups`): a group's model
        layout is its own, so no edge joins two groups; rho is then the slowest group's.

        A proximity graph is built from the drones' start `positions` and kept for the run
        (rebuilding it as they move is not done yet: CHOCO's public copies would have to be
        handed to new neighbours)."""
        sc = self.sc
        if not self.exchange.needs_graph:
            return None
        groups = None if info is None or len(info.groups) < 2 else info.groups
        parts = None if groups is None else [(g.first, g.count) for g in groups]
        if parts is None:
            graph = build_graph(sc.gossip.graph, sc.total_agents, sc.seed, positions=positions)
        else:
            graph = build_graph_in_groups(sc.gossip.graph, parts, sc.seed)
        self.mixing = mixing = mixing_summary(graph, parts)
        self.rho = float(mixing["rho"])
        per_group = "" if groups is None else f" per group ({', '.join(g.name for g in groups)})"
        self.on_info(
            f"gossip graph: {sc.gossip.graph.kind}{per_group}, {mixing['nodes']} agents, "
            f"{mixing['edges']} edges, degree {mixing['degree_min']}-{mixing['degree_max']}, "
            f"rho = {self.rho:.4f} (~{mixing['rounds_to_1e-3']} rounds to agree to 1e-3)"
        )
        edges = sorted((int(i), int(j)) for i, j in graph.edges())
        per = sc.per_shard
        self.graph = {
            "kind": sc.gossip.graph.kind,
            "nodes": sc.total_agents,
            "edges": [[i, j] for i, j in edges],
            "rho": self.rho,
            # -1: an external device (swarm-node), not hosted by a shard
            "shard_of": [i // per if i < sc.agents.count else -1 for i in range(sc.total_agents)],
        }
        if groups is not None:  # the graph joins agents within each group only
            self.graph["groups"] = [
                {"name": g.name, "first": g.first, "count": g.count} for g in groups
            ]
        if sc.external_peers:
            self.on_info(
                "external peers: "
                + ", ".join(f"agent {p.agent} at {p.address}" for p in sc.external_peers)
            )
        return edges

    def _resume_rows(self) -> list[Row]:
        """The checkpoint a resumed run starts from, and the metrics rows recorded up to it."""
        try:
            marker = read_latest(self.ckpt_root)
        except ValueError as exc:
            raise RunError(str(exc)) from None
        if marker is None:
            raise RunError(
                f"{self.run_dir}: no complete checkpoint to resume from (checkpoint.every_ticks "
                "must be set, and the run must have reached its first checkpoint)"
            )
        if marker["ticks"] >= self.sc.ticks:
            raise RunError(
                f"{self.run_dir}: its checkpoint is at tick {marker['ticks']}, the run ends at "
                f"{self.sc.ticks}; nothing to resume (pass --ticks to run longer)"
            )
        self.marker = marker
        rows: list[Row] = []
        path = self.run_dir / "metrics.jsonl"
        with open(path) as fh:
            for line in fh:
                if len(rows) == marker["rows"]:
                    break
                rows.append(Row.from_json(json.loads(line)))
        if len(rows) != marker["rows"]:
            raise RunError(f"{path}: {len(rows)} rows, the checkpoint needs {marker['rows']}")
        self.on_info(f"resuming {self.run_dir.name} from its checkpoint at tick {marker['ticks']}")
        return rows

    def coordinator_counts(self) -> dict[str, int] | None:
        """What a resumed run's coordinator had received up to the checkpoint."""
        if self.marker is None:
            return None
        path = tick_dir(self.ckpt_root, self.marker["ticks"]) / "coordinator.json"
        return dict(json.loads(path.read_text())) if path.exists() else None

    # -- metrics rows ----------------------------------------------------------------------------

    def open_rows(self, rows: list[Row]) -> None:
        """Start metrics.jsonl with the rows a resumed run already has."""
        self._rows_file = open(self.run_dir / "metrics.jsonl", "w")  # noqa: SIM115
        for row in rows:
            self._write_row(row)

    def add_row(
        self,
        rows: list[Row],
        tick: int,
        world_m: dict[str, Figure],
        shard_m: list[ShardMeasure],
        info: WorldInfo,
        *,
        real_time_factor: float,
    ) -> None:
        """The metrics row after `tick` ticks from what the world and the shards measured:
        appended, written, and set as the swarm's live figures (the shards set their own)."""
        rows.append(self._row(tick, world_m, shard_m, info))
        self._write_row(rows[-1])
        if diverged_at(rows) == tick:  # this row is the first
            self.on_info(DIVERGED.format(tick=tick))
        row_figures(self.telemetry, rows[-1], rho=self.rho, real_time_factor=real_time_factor)

    def _write_row(self, row: Row) -> None:
        assert self._rows_file is not None, "open_rows first"
        self._rows_file.write(json.dumps(row.as_json(), sort_keys=True) + "\n")
        self._rows_file.flush()

    def _row(
        self, tick: int, world_m: dict[str, Figure], shard_m: list[ShardMeasure], info: WorldInfo
    ) -> Row:
        consensus = consensus_distance(shard_m, info)
        traffic = [m.traffic for m in shard_m]
        sent = np.concatenate(
            [t.sent_per_agent(len(m.agents)) for t, m in zip(traffic, shard_m, strict=True)]
        )
        row = Row(tick, round(tick * self.sc.world.tick_s, 6), figures={})
        row.figures.update({k: _clean(v) for k, v in world_m.items()})
        row.figures.update(
            {
                "learn/consensus_distance": consensus,
                "learn/activation_density": float(np.mean([m.density for m in shard_m])),
                "gossip/bytes_sent": int(sent.sum()),
                "gossip/dense_bytes": int(sum(sum(t.dense_bytes) for t in traffic)),
                "gossip/wire_bytes": sum(t.counter("wire_bytes_sent") for t in traffic),
                "gossip/deltas_accepted": sum(t.counter("deltas_accepted") for t in traffic),
                "gossip/deltas_rejected": sum(t.counter("deltas_rejected") for t in traffic),
                "gossip/rounds": max((t.rounds for t in traffic), default=0),
            }
        )
        if any("sightings_sent" in t.counters for t in traffic):  # gossip.sightings
            for k in ("sent", "taken", "duplicates", "lost"):
                row.figures[f"gossip/sightings_{k}"] = sum(
                    t.counter(f"sightings_{k}") for t in traffic
                )
        ledger: Counter[str] = Counter()
        for t in traffic:
            ledger.update({k: int(v) for k, v in t.ledger.items()})
        for key in ("sent", "delivered", "rejected", "dropped", "held", "snapshots"):
            row.figures[f"gossip/messages_{key}"] = ledger.get(key, 0)
        self.last_traffic = traffic
        row.agents["gossip/bytes_sent"] = [int(b) for b in sent]
        task_named(info.task).row(shard_m, info, self.byzantine, row)
        return row

    # -- results ---------------------------------------------------------------------------------

    def _summary(
        self,
        rows: list[Row],
        info: WorldInfo,
        wall: float,
        setup: float,
        url: str | None,
    ) -> RunSummary:
        sc = self.sc
        last = rows[-1]
        final: dict[str, Figure] = {"tick": last.tick, "sim_time_s": last.sim_time_s}
        final.update(last.figures)
        sent = last.value("gossip/bytes_sent")
        dense = last.value("gossip/dense_bytes")
        final["gossip/compression_ratio"] = dense / sent if sent else None
        final["gossip/rho"] = self.rho
        final.update(task_named(info.task).final(rows, info, self.first_labels, sc))
        faults: Document = {"kills": list(self.kills)}
        if self.byzantine:
            faults["byzantine"] = list(sorted(self.byzantine))
        return RunSummary(
            scenario=sc.name,
            seed=sc.seed,
            accounting=self._accounting(),
            faults=faults,
            isolated_baseline=sc.isolated_twins,
            placement=self.placement,
            agents=sc.agents.count,
            shards=sc.n_shards,
            topology=sc.gossip.topology,
            mode=sc.gossip.mode,
            task=info.task,
            classes=info.classes,
            metrics=final,
            run=RunInfo(
                run_dir=str(self.run_dir),
                wall_s=round(wall, 3),
                setup_s=round(setup, 3),
                ticks_per_s=round(sc.ticks / max(wall - setup, 1e-9), 3),
                real_time_factor=round(sc.ticks * sc.world.tick_s / max(wall - setup, 1e-9), 3),
                dashboard_url=url,
                resumed_from_tick=self.marker["ticks"] if self.marker else None,
            ),
            diverged_at_tick=diverged_at(rows),
        )

    def _accounting(self) -> Document:
        """The run's message accounting (swarm/accounting.py), and each shard's part of it in
        its placement entry."""
        receivers = [t.counters for t in self.last_traffic]  # what each shard received
        if self.coordinator_traffic:
            receivers.append(self.coordinator_traffic)
        accounting = account(
            [t.ledger for t in self.last_traffic], receivers, closed=not self.sc.external_peers
        )
        if not accounting["holds"]:
            self.on_info(f"message accounting does not add up: {accounting}")
        for place, traffic in zip(self.placement, self.last_traffic, strict=False):
            # what each shard took in from the others, and sent that they took
            place["deltas_accepted"] = traffic.counter("deltas_accepted")
            place["messages_delivered"] = int(traffic.ledger.get("delivered", 0))
        return accounting

    def _write(self, summary: RunSummary, trajectory: np.ndarray, layout_map: Document) -> None:
        # metrics.jsonl is written row by row as the run goes (a resumed run starts from it)
        (self.run_dir / "summary.json").write_text(
            json.dumps(summary.as_json(), indent=2, sort_keys=True)
        )
        if self.graph:
            (self.run_dir / "graph.json").write_text(json.dumps(self.graph))
        if layout_map:  # worlds with a map (the drone patrol): where everyone flew
            np.save(self.run_dir / "trajectory.npy", trajectory.astype(np.float32))
            (self.run_dir / "layout.json").write_text(json.dumps(layout_map, indent=2))
        write_plots(self.run_dir)


def consensus_distance(shards: list[ShardMeasure], info: WorldInfo) -> float:
    """The swarm's consensus distance: the mean over agents of ||x_i - xbar||^2, from each
    shard's sum of parameter vectors and of their squared norms. In a world of agent groups
    each group's models have a layout (a length P) of their own: the distance is taken within
    each group, to that group's mean, and the groups' are averaged weighted by their agents
    (so it is still the mean over agents of the distance to their own group's mean)."""
    by_group: dict[int, list[ShardMeasure]] = {}
    for m in shards:
        g = info.group_of(m.agents[0]).first if len(info.groups) > 1 else 0
        by_group.setdefault(g, []).append(m)
    if len(by_group) == 1:  # one layout: the swarm's own arithmetic, as it always was
        return _distance(shards)
    total = sum(len(m.agents) for m in shards)
    return float(
        sum(_distance(part) * sum(len(m.agents) for m in part) for part in by_group.values())
        / total
    )


def _distance(shards: list[ShardMeasure]) -> float:
    """The mean ||x_i - xbar||^2 over the agents of `shards` (one layout), never below 0
    (the sums' rounding)."""
    n = sum(len(m.agents) for m in shards)
    sum_x = np.sum([m.sum_x for m in shards], axis=0)
    return max(float(sum(m.sum_sq for m in shards) / n - np.sum((sum_x / n) ** 2)), 0.0)


def _clean(v: Figure) -> Figure:
    return None if v is None or not np.isfinite(v) else float(v)
