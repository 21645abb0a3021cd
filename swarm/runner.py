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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from swarm.scenario import Scenario, dump_scenario
from swarm.telemetry import Telemetry, metrics_endpoint, row_figures

#: Ticks the driver lets run ahead of the last finished world step.
MAX_TICKS_IN_FLIGHT = 4
#: An agent "recognises" an event kind when its probe accuracy on that kind reaches this.
RECOGNISED = 0.5
#: Knowledge spread of a kind: from its first label anywhere until this share of agents
#: recognise it.
SPREAD_SHARE = 0.9


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)


def new_run_dir(root: Path, scenario: Scenario) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir = root / f"{scenario.name}-{stamp}-{secrets.token_hex(2)}"
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


def read_key(path: str) -> bytes:
    """The swarm's shared HMAC key from gossip.key_file (32 bytes or more)."""
    try:
        key = Path(path).read_bytes()
    except OSError as exc:
        raise RunError(f"gossip.key_file {path}: {exc.strerror}") from None
    if len(key) < 32:
        raise RunError(f"gossip.key_file {path}: {len(key)} bytes; the key needs 32 or more")
    return key


def start_ray(scenario: Scenario, address: str | None) -> tuple[bool, str | None]:
    """Join `address` (or RAY_ADDRESS) if given, else start an embedded Ray.

    Returns (we started it, dashboard URL or None).
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        return False, None
    # Actors import our packages by name; make sure workers find them where the driver does.
    root = str(Path(__file__).resolve().parents[1])
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}}
    if address:
        _token_auth_for_clients()
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
        import ray

        ray.shutdown()


DIVERGED = (
    "learning diverged: from tick {tick} some agent's weights are not finite (consensus "
    "distance nan or inf); a smaller gossip.gamma (with top-k compression) or learning.lr "
    "keeps a swarm together"
)


def diverged_at(rows: list[dict[str, Any]]) -> int | None:
    """The tick of the first metrics row whose consensus distance is not finite: an agent's
    weights hold inf or NaN (the mean square distance to the mean takes in every parameter of
    every agent). None if there is none."""
    for row in rows:
        d = row.get("learn/consensus_distance")
        if d is not None and not math.isfinite(d):
            return int(row["tick"])
    return None


class RunError(Exception):
    """A run that cannot start or finish for a reason the user can act on."""


def _token_auth_for_clients() -> None:
    # Ray >= 2.59 enables token auth on clusters started with `ray start --head`, but a client
    # joining with ray.init(address=...) only sends the token when RAY_AUTH_MODE=token
    # (ray-project/ray#64755 review: "Clients skip auto token auth"). Opt in when a token exists.
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    has_token = "RAY_AUTH_TOKEN" in os.environ or token_file.exists()
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
        self.mixing: dict[str, Any] = {}
        self.info: dict[str, Any] = {}
        self.first_labels: dict[int, int] = {}
        self.graph: dict[str, Any] = {}
        self.ckpt_root = run_dir / "checkpoints"
        self.marker: dict[str, Any] | None = None  # the checkpoint a resumed run starts from
        self.kills: list[dict[str, Any]] = []  # injected shard kills and what was restored
        self.placement: list[dict[str, Any]] = []
        self.last_traffic: list[dict[str, Any]] = []
        self.coordinator_traffic: dict[str, int] = {}
        self.coordinator: Any = None
        self._rows_file: Any = None
        self.endpoints: list[str] = []
        self.coord_addr = ""
        self.byzantine: frozenset[int] = frozenset()

    def run(self) -> RunResult:
        import ray

        from swarm.shard import AgentShard, CoordinatorHost, WorldHost

        t0 = time.perf_counter()
        started, url = start_ray(self.sc, self.address)
        self.on_start(url)
        # agents.per_shard 'auto': sized for the CPUs of the cluster the run landed on
        sc = self.sc.with_shards(float(ray.cluster_resources().get("CPU", 1.0)))
        if sc is not self.sc:
            self.on_info(f"shards: {sc.n_shards} of up to {sc.per_shard} agents (auto)")
        sc = self.sc = self._with_certs(sc)
        self._check_shards(sc)
        (self.run_dir / "scenario.yaml").write_text(dump_scenario(sc))
        if sc.faults.byzantine.active:
            from protocols.faults import FaultPlan

            seed = sc.seed if sc.faults.seed is None else sc.faults.seed
            self.byzantine = FaultPlan(sc.faults, sc.total_agents, seed).byzantine
            self.on_info(f"faults: Byzantine agents {sorted(self.byzantine)}")
        rows_before = self._resume_rows() if self.resume else []
        # Live figures as Ray metrics (swarm/telemetry.py), labelled with the run id.
        self.telemetry = Telemetry(self.run_dir.name)
        spec = sc.model_dump(mode="json")
        # HMAC key of this run's deltas: the swarm's shared key when devices join (key_file),
        # else a secret of this run that never leaves Ray.
        key = read_key(sc.gossip.key_file) if sc.gossip.key_file else secrets.token_bytes(32)
        shards: list[Any] = []
        world: Any = None
        coordinator: Any = None
        group: Any = None
        try:
            endpoint = metrics_endpoint()  # where Prometheus can scrape them
            self.on_info(
                f"metrics: {endpoint} (Prometheus)"
                if endpoint
                else "metrics: not exported (no Ray metrics agent: pip install 'ray[default]')"
            )
            cpus = float(ray.cluster_resources().get("CPU", 1.0))
            per_shard_cpu = min(1.0, cpus / sc.n_shards)
            world = ray.remote(num_cpus=0)(WorldHost).remote(spec)
            try:
                info: dict[str, Any] = ray.get(world.info.remote())
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, ValueError):
                    raise RunError(f"cannot build the world: {exc.cause}") from None
                raise
            self.info = info
            probe = (
                world.probe.remote(
                    sc.metrics.probe_per_class, sc.learning.window, sc.seed + 1_000_003
                )
                if info["task"] == "classify"
                else None
            )
            n, per = sc.agents.count, sc.per_shard
            edges = self._graph_edges(world)
            # Shards spread over the cluster's nodes, one bundle each (on one machine: packed).
            from ray.util.placement_group import placement_group, remove_placement_group
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            group = placement_group([{"CPU": per_shard_cpu}] * sc.n_shards, strategy="SPREAD")
            try:
                ray.get(group.ready(), timeout=120)
            except ray.exceptions.GetTimeoutError:
                raise RunError(
                    f"the Ray cluster cannot place {sc.n_shards} shards of {per_shard_cpu:g} "
                    "CPU each within 120 s; add nodes, or lower agents.count / raise per_shard"
                ) from None
            restarts = {k.shard: 0 for k in sc.faults.kill}
            for k in sc.faults.kill:
                restarts[k.shard] += 1
            # On a cluster of several nodes a shard must be reachable from the others: it
            # listens on, and advertises, its node's address. On one machine: loopback only.
            multi_node = sum(1 for n in ray.nodes() if n.get("Alive")) > 1
            host = "node" if multi_node else "127.0.0.1"
            shard_cls: Any = ray.remote(num_cpus=per_shard_cpu)(AgentShard)
            if sc.checkpoint.every_ticks:
                self.ckpt_root.mkdir(exist_ok=True)
            shards = [
                shard_cls.options(
                    name=None,
                    max_restarts=restarts.get(s, 0),
                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                        placement_group=group, placement_group_bundle_index=s
                    ),
                ).remote(
                    spec,
                    s,
                    list(range(s * per, min(n, (s + 1) * per))),
                    info.get("inputs") or info["obs_dim"],
                    info["n_classes"],
                    probe,
                    key,
                    host=host,
                    edges=edges,
                    n_actions=info["n_actions"],
                    run=self.run_dir.name,
                    ckpt_dir=str(self.ckpt_root) if sc.checkpoint.every_ticks else "",
                    resume=self.resume,
                )
                for s in range(sc.n_shards)
            ]
            endpoints: list[str] = ray.get([s.endpoint.remote() for s in shards])
            nodes: list[str] = ray.get([s.node_id.remote() for s in shards])
            self.placement = [
                {"shard": i, "node": node, "endpoint": e}
                for i, (node, e) in enumerate(zip(nodes, endpoints, strict=True))
            ]
            if len(set(nodes)) > 1:
                self.on_info(
                    f"shards on {len(set(nodes))} Ray nodes: "
                    + ", ".join(
                        f"shard-{i} {e or '-'} ({n[:8]})"
                        for i, n, e in zip(range(len(nodes)), nodes, endpoints, strict=True)
                    )
                )
            coord_addr: str = ""
            if sc.gossip.topology == "coordinator":
                num_params, layout = ray.get(shards[0].model_info.remote())
                coordinator = ray.remote(num_cpus=0)(CoordinatorHost).remote(  # type: ignore[attr-defined]
                    spec,
                    num_params,
                    layout,
                    key,
                    start_round=self.marker["round"] if self.marker else 0,
                    counts=self._coordinator_counts(),
                )
                self.coordinator = coordinator
                coord_addr = ray.get(coordinator.address.remote())
            ray.get([s.connect.remote(endpoints, coord_addr) for s in shards])
            self.endpoints, self.coord_addr = endpoints, coord_addr
            step = self._start_world(world)
            t_setup = time.perf_counter() - t0
            rows = self._loop(world, shards, info, step, rows_before)
            trajectory, layout_map = ray.get(world.trajectories.remote())
            self.first_labels = ray.get(world.first_labels.remote())
            if coordinator is not None:
                self.coordinator_traffic = ray.get(coordinator.traffic.remote())
            wall = time.perf_counter() - t0
        finally:
            if self._rows_file is not None:
                self._rows_file.close()
            self.telemetry.close()
            if shards:
                ray.get([s.close.remote() for s in shards])
            if coordinator is not None:
                ray.get(coordinator.close.remote())
            if world is not None:
                ray.get(world.close.remote())
            if group is not None:
                remove_placement_group(group)
            stop_ray(started)
        summary = self._summary(rows, info, wall, t_setup, url)
        self._write(rows, summary, trajectory, layout_map, info)
        return RunResult(self.run_dir, summary, rows)

    def _with_certs(self, sc: Scenario) -> Scenario:
        """TLS without a cert_dir: make a CA and certificates for this run's nodes in
        run_dir/certs (shard-<i>, coordinator), so `tls.mode: mtls` works out of the box."""
        if sc.gossip.tls.mode == "off" or sc.gossip.tls.cert_dir:
            return sc
        from swarm.certs import make_certs

        cert_dir = self.run_dir / "certs"
        make_certs(cert_dir, [f"shard-{i}" for i in range(sc.n_shards)] + ["coordinator"])
        data = sc.model_dump(mode="json")
        data["gossip"]["tls"]["cert_dir"] = str(cert_dir)
        self.on_info(f"TLS ({sc.gossip.tls.mode}): made a CA and node certificates in {cert_dir}")
        return Scenario.model_validate(data)

    def _graph_edges(self, world: Any) -> list[tuple[int, int]] | None:
        """Build the gossip graph once (every shard gets the same edges) and log its mixing
        figures: rho decides how fast gossip can agree (REFERENCES: error <= rho^t).

        A proximity graph is built from the drones' start positions and kept for the run
        (rebuilding it as they move is not done yet: CHOCO's public copies would have to be
        handed to new neighbours)."""
        import ray

        sc = self.sc
        if sc.gossip.topology != "decentralized":
            return None
        from protocols.topology import build_graph, mixing_summary

        positions = None
        if sc.gossip.graph.kind == "proximity":
            positions = ray.get(world.positions.remote())
        graph = build_graph(sc.gossip.graph, sc.total_agents, sc.seed, positions=positions)
        self.mixing = mixing = mixing_summary(graph)
        self.rho = float(mixing["rho"])
        self.on_info(
            f"gossip graph: {sc.gossip.graph.kind}, {mixing['nodes']} agents, {mixing['edges']} "
            f"edges, degree {mixing['degree_min']}-{mixing['degree_max']}, "
            f"rho = {self.rho:.4f} (~{mixing['rounds_to_1e-3']} rounds to agree to 1e-3)"
        )
        edges = sorted((int(i), int(j)) for i, j in graph.edges())
        per = sc.per_shard
        self.graph = {
            "kind": sc.gossip.graph.kind,
            "nodes": sc.total_agents,
            "edges": edges,
            "rho": self.rho,
            # -1: an external device (swarm-node), not hosted by a shard
            "shard_of": [i // per if i < sc.agents.count else -1 for i in range(sc.total_agents)],
        }
        if sc.external_peers:
            self.on_info(
                "external peers: "
                + ", ".join(f"agent {p.agent} at {p.address}" for p in sc.external_peers)
            )
        return edges

    # -- the tick loop ---------------------------------------------------------------------------

    def _check_shards(self, sc: Scenario) -> None:
        for k in sc.faults.kill:
            if k.shard >= sc.n_shards:
                raise RunError(
                    f"faults.kill: shard {k.shard} does not exist ({sc.n_shards} shards)"
                )

    def _resume_rows(self) -> list[dict[str, Any]]:
        """The checkpoint a resumed run starts from, and the metrics rows recorded up to it."""
        from swarm.resume import read_latest

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
        rows: list[dict[str, Any]] = []
        path = self.run_dir / "metrics.jsonl"
        with open(path) as fh:
            for line in fh:
                if len(rows) == marker["rows"]:
                    break
                rows.append(json.loads(line))
        if len(rows) != marker["rows"]:
            raise RunError(f"{path}: {len(rows)} rows, the checkpoint needs {marker['rows']}")
        self.on_info(f"resuming {self.run_dir.name} from its checkpoint at tick {marker['ticks']}")
        return rows

    def _coordinator_counts(self) -> dict[str, int] | None:
        """What a resumed run's coordinator had received up to the checkpoint."""
        if self.marker is None:
            return None
        from swarm.resume import tick_dir

        path = tick_dir(self.ckpt_root, self.marker["ticks"]) / "coordinator.json"
        return dict(json.loads(path.read_text())) if path.exists() else None

    def _start_world(self, world: Any) -> Any:
        """The first Step: a fresh reset, or the world of a resumed run rebuilt by replaying
        the decisions recorded up to its checkpoint."""
        if self.marker is None:
            return world.reset.remote()
        from swarm import checkpoint
        from swarm.resume import tick_dir

        arrays, _ = checkpoint.load(tick_dir(self.ckpt_root, self.marker["ticks"]) / "world.npz")
        return world.replay.remote(arrays["decisions"])

    def _loop(
        self,
        world: Any,
        shards: list[Any],
        info: dict[str, Any],
        step: Any,
        rows: list[dict[str, Any]],
    ) -> list[dict[str, Any]]:
        import ray

        from swarm.resume import tick_dir

        sc = self.sc
        sharing = sc.gossip.topology not in ("isolated", "centralized")
        every = sc.checkpoint.every_ticks
        kills: dict[int, list[int]] = {}
        for k in sc.faults.kill:
            kills.setdefault(k.at_tick, []).append(k.shard)
        start = self.marker["ticks"] if self.marker else 0
        round_ = self.marker["round"] if self.marker else 0
        self._rows_file = open(self.run_dir / "metrics.jsonl", "w")  # noqa: SIM115
        for row in rows:
            self._write_row(row)
        in_flight: list[Any] = []
        pending: list[tuple[int, list[Any]]] = []
        checkpoints: list[tuple[int, int, list[Any]]] = []  # (ticks, next round, receipts)
        exchanges: list[Any] = []
        t_ticks = time.perf_counter()  # for the live real-time factor

        def take_rows(last: bool) -> None:
            while pending and (last or len(pending) > 1):
                at, refs = pending.pop(0)
                world_m, *shard_m = ray.get(refs)
                rows.append(self._row(at, world_m, shard_m, info))
                self._write_row(rows[-1])
                if diverged_at(rows) == rows[-1]["tick"]:  # this row is the first
                    self.on_info(DIVERGED.format(tick=rows[-1]["tick"]))
                # The swarm's live figures (Ray metrics); the shards set their own in measure().
                rtf = (rows[-1]["sim_time_s"] - start * sc.world.tick_s) / max(
                    time.perf_counter() - t_ticks, 1e-9
                )
                row_figures(self.telemetry, rows[-1], rho=self.rho, real_time_factor=rtf)
                ray.get(exchanges)  # all done by now; raises if a round failed
                exchanges.clear()

        for tick in range(start, sc.ticks):
            done = tick + 1  # ticks completed once this one is
            predictions = [s.act.remote(step) for s in shards]
            step = world.step.remote(*predictions)
            if sharing and done % sc.gossip.interval == 0:
                sent = [s.share.remote(round_, done) for s in shards]
                barrier = sent if sc.gossip.mode == "sync" else []
                # Kept so a failed round surfaces as an error instead of vanishing.
                exchanges.extend(s.merge.remote(round_, *barrier) for s in shards)
                round_ += 1
            last = done == sc.ticks
            if done % sc.metrics.interval == 0 or last:
                refs = [world.measure.remote(), *[s.measure.remote(done) for s in shards]]
                pending.append((done, refs))
            if every and done % every == 0 and not last:
                where = tick_dir(self.ckpt_root, done)
                where.mkdir(parents=True, exist_ok=True)
                receipts = [s.checkpoint.remote(done, str(where)) for s in shards]
                receipts.append(world.checkpoint.remote(done, str(where)))
                if self.coordinator is not None:  # its counts once this round's merges ran
                    receipts.append(self.coordinator.counts.remote(*exchanges[-len(shards) :]))
                checkpoints.append((done, round_, receipts))
            in_flight.append(step)
            if len(in_flight) > MAX_TICKS_IN_FLIGHT:
                ray.wait([in_flight.pop(0)], num_returns=1)
                self.on_tick(tick - MAX_TICKS_IN_FLIGHT)
            take_rows(last)
            self._commit(checkpoints, pending, rows, block=False)
            if done in kills:
                # let everything submitted finish, so the kill lands between two ticks
                ray.get(in_flight + exchanges + [r for _, refs in pending for r in refs])
                take_rows(True)
                self._commit(checkpoints, pending, rows, block=True)
                for index in kills[done]:
                    self._kill(shards, index, done)
        ray.get(in_flight + exchanges)
        self._commit(checkpoints, pending, rows, block=True)
        self.on_tick(sc.ticks - 1)
        return rows

    def _write_row(self, row: dict[str, Any]) -> None:
        self._rows_file.write(json.dumps(row, sort_keys=True) + "\n")
        self._rows_file.flush()

    def _commit(
        self,
        checkpoints: list[tuple[int, int, list[Any]]],
        pending: list[tuple[int, list[Any]]],
        rows: list[dict[str, Any]],
        *,
        block: bool,
    ) -> None:
        """Mark checkpoints complete (latest.json), oldest first: once every shard and the
        world have written theirs, and the metrics rows up to them are in metrics.jsonl."""
        import ray

        from swarm.resume import commit, tick_dir

        while checkpoints:
            ticks, round_, refs = checkpoints[0]
            if any(at <= ticks for at, _ in pending):
                return  # rows up to this tick not written yet
            if not block and len(ray.wait(refs, num_returns=len(refs), timeout=0)[0]) < len(refs):
                return
            done = ray.get(refs)
            checkpoints.pop(0)
            receipts = done[: len(self.placement)]  # the shards', then the world's, coordinator's
            if self.coordinator is not None:  # its counts came last
                path = tick_dir(self.ckpt_root, ticks) / "coordinator.json"
                path.write_text(json.dumps(done[-1]))
            marker = {
                "ticks": ticks,
                "round": round_,
                "rows": sum(1 for r in rows if r["tick"] <= ticks),
                "dir": tick_dir(self.ckpt_root, ticks).name,
                "bytes": int(sum(r["bytes"] for r in receipts)),
            }
            commit(self.ckpt_root, marker)

    def _kill(self, shards: list[Any], index: int, tick: int) -> None:
        """Kill shard `index`'s process (a fault the scenario asked for); Ray restarts the
        actor, which restores its agents from the last complete checkpoint. Its traffic
        counts are read before the kill and handed to the new process: an observer's
        bookkeeping, so the run's message accounting stays whole."""
        import ray

        shard = shards[index]
        counts, pid = ray.get([shard.traffic_state.remote(), shard.pid.remote()])
        t0 = time.perf_counter()
        ray.kill(shard, no_restart=False)
        deadline = t0 + 120
        while True:
            try:
                if ray.get(shard.pid.remote(), timeout=30) != pid:
                    break
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                pass
            if time.perf_counter() > deadline:
                raise RunError(f"faults.kill: shard {index} did not come back within 120 s")
            time.sleep(0.1)
        restored = ray.get(shard.restore_info.remote()) or {}
        ray.get(shard.load_traffic.remote(counts))
        # the new process serves on a new port: every shard learns it
        self.endpoints[index] = ray.get(shard.endpoint.remote())
        self.placement[index]["endpoint"] = self.endpoints[index]
        ray.get(shard.connect.remote(self.endpoints, self.coord_addr))
        ray.get(
            [s.set_endpoints.remote(self.endpoints) for i, s in enumerate(shards) if i != index]
        )
        event = {"shard": index, "tick": tick, "restart_s": round(time.perf_counter() - t0, 3)}
        event.update(restored)
        before, after = restored.get("probe_acc_checkpoint"), restored.get("probe_acc_restored")
        if before and after:
            event["probe_acc_change"] = float(np.mean(after) - np.mean(before))
        self.kills.append(event)
        self.on_info(
            f"faults: killed shard-{index} at tick {tick}; Ray restarted it in "
            f"{event['restart_s']:.1f} s, its agents restored from the checkpoint at tick "
            f"{restored.get('checkpoint_ticks')}"
        )

    def _row(
        self, tick: int, world_m: dict[str, Any], shard_m: list[dict[str, Any]], info: dict
    ) -> dict[str, Any]:
        n = sum(len(m["agents"]) for m in shard_m)
        sum_x = np.sum([m["sum_x"] for m in shard_m], axis=0)
        consensus = float(sum(m["sum_sq"] for m in shard_m) / n - np.sum((sum_x / n) ** 2))
        traffic = [m["traffic"] for m in shard_m]
        sent = np.concatenate(
            [
                t.get("bytes_sent", [0] * len(m["agents"]))
                for t, m in zip(traffic, shard_m, strict=True)
            ]
        )
        dense = sum(sum(t.get("dense_bytes", [])) for t in traffic)
        row: dict[str, Any] = {"tick": tick, "sim_time_s": round(tick * self.sc.world.tick_s, 6)}
        row.update({k: _clean(v) for k, v in world_m.items()})
        row.update(
            {
                "learn/consensus_distance": max(consensus, 0.0),
                "learn/activation_density": float(np.mean([m["density"] for m in shard_m])),
                "gossip/bytes_sent": int(sent.sum()),
                "gossip/dense_bytes": int(dense),
                "gossip/wire_bytes": int(sum(t.get("wire_bytes_sent", 0) for t in traffic)),
                "gossip/deltas_accepted": int(sum(t.get("deltas_accepted", 0) for t in traffic)),
                "gossip/deltas_rejected": int(sum(t.get("deltas_rejected", 0) for t in traffic)),
                "gossip/rounds": int(max((t.get("rounds", 0) for t in traffic), default=0)),
            }
        )
        ledger: dict[str, int] = {}
        for t in traffic:
            for key, value in t.get("ledger", {}).items():
                ledger[key] = ledger.get(key, 0) + int(value)
        for key in ("sent", "delivered", "rejected", "dropped", "held", "snapshots"):
            row[f"gossip/messages_{key}"] = ledger.get(key, 0)
        self.last_traffic = traffic
        row["agents"] = {"gossip/bytes_sent": [int(b) for b in sent]}
        if info["task"] == "rl":
            stats = [m["rl"] for m in shard_m if m["rl"]]
            for key in ("entropy", "value_loss", "approx_kl", "clip_frac"):
                row[f"rl/{key}"] = float(np.mean([s[key] for s in stats])) if stats else None
            return row
        acc = np.concatenate([m["probe_acc"] for m in shard_m])
        iso = np.concatenate([m["probe_acc_isolated"] for m in shard_m])
        per_class = np.concatenate([np.asarray(m["per_class"]) for m in shard_m])
        present = per_class >= 0
        class_acc = np.where(present, per_class, 0).sum(0) / np.maximum(present.sum(0), 1)
        if self.byzantine:  # what the liars did to everyone else
            agents = np.concatenate([m["agents"] for m in shard_m])
            honest = ~np.isin(agents, sorted(self.byzantine))
            row["learn/probe_acc_honest"] = float(acc[honest].mean())
        row.update(
            {
                "learn/probe_acc": float(acc.mean()),
                "learn/probe_acc_min": float(acc.min()),
                "learn/probe_acc_isolated": float(iso.mean()),
            }
        )
        for c, name in enumerate(info["classes"]):
            row[f"learn/class_acc/{name}"] = float(class_acc[c])
            if c > 0:  # knowledge spread: the share of agents that recognise the event kind
                row[f"learn/recognised/{name}"] = float(np.mean(per_class[:, c] >= RECOGNISED))
        row["agents"]["learn/probe_acc"] = [round(float(a), 6) for a in acc]
        row["agents"]["learn/probe_acc_isolated"] = [round(float(a), 6) for a in iso]
        return row

    # -- results ---------------------------------------------------------------------------------

    def _summary(
        self,
        rows: list[dict[str, Any]],
        info: dict[str, Any],
        wall: float,
        setup: float,
        url: str | None,
    ) -> dict[str, Any]:
        sc = self.sc
        final = {k: v for k, v in rows[-1].items() if k != "agents"}
        rho = self.rho
        dense = final["gossip/dense_bytes"]
        final["gossip/compression_ratio"] = (
            dense / final["gossip/bytes_sent"] if final["gossip/bytes_sent"] else None
        )
        final["gossip/rho"] = rho
        if info["task"] == "rl":
            # one interval's episodes are few: summarise the first and last quarter of the run
            returns = [r["rl/team_return"] for r in rows if r.get("rl/team_return") is not None]
            q = max(1, len(returns) // 4)
            final["rl/team_return_first"] = float(np.mean(returns[:q])) if returns else None
            final["rl/team_return_last"] = float(np.mean(returns[-q:])) if returns else None
        else:
            final["learn/sharing_gain"] = (
                final["learn/probe_acc"] - final["learn/probe_acc_isolated"]
            )
            final.update(self._spread(rows, info))
            final.update(continual_figures(rows, info["classes"], self.first_labels, self.sc))
        from swarm.accounting import account

        receivers = [t for t in self.last_traffic]
        if self.coordinator_traffic:
            receivers.append(self.coordinator_traffic)
        accounting = account(
            [t.get("ledger", {}) for t in self.last_traffic],
            receivers,
            closed=not sc.external_peers,
        )
        if not accounting["holds"]:
            self.on_info(f"message accounting does not add up: {accounting}")
        for place, traffic in zip(self.placement, self.last_traffic, strict=False):
            # what each shard took in from the others, and sent that they took
            place["deltas_accepted"] = int(traffic.get("deltas_accepted", 0))
            place["messages_delivered"] = int(traffic.get("ledger", {}).get("delivered", 0))
        faults: dict[str, Any] = {"kills": self.kills}
        if self.byzantine:
            faults["byzantine"] = sorted(self.byzantine)
        return {
            "scenario": sc.name,
            "seed": sc.seed,
            "accounting": accounting,
            "faults": faults,
            # whether learn/probe_acc_isolated is a measured twin (else it repeats probe_acc)
            "isolated_baseline": bool(
                sc.baseline.isolated and sc.gossip.topology not in ("isolated", "centralized")
            ),
            "placement": self.placement,
            "agents": sc.agents.count,
            "shards": sc.n_shards,
            "topology": sc.gossip.topology,
            "mode": sc.gossip.mode,
            "task": info["task"],
            "classes": info["classes"],
            "metrics": final,
            # Wall-clock figures differ between identical runs; kept apart from `metrics`.
            "run": {
                "run_dir": str(self.run_dir),
                "wall_s": round(wall, 3),
                "setup_s": round(setup, 3),
                "ticks_per_s": round(sc.ticks / max(wall - setup, 1e-9), 3),
                "real_time_factor": round(sc.ticks * sc.world.tick_s / max(wall - setup, 1e-9), 3),
                "dashboard_url": url,
                "resumed_from_tick": self.marker["ticks"] if self.marker else None,
            },
            # the first metrics tick with non-finite weights somewhere (None: never)
            "diverged_at_tick": diverged_at(rows),
        }

    def _spread(self, rows: list[dict[str, Any]], info: dict[str, Any]) -> dict[str, Any]:
        """Per event kind: when its first label arrived anywhere (s), and how long after that
        SPREAD_SHARE of the agents recognised it (s; None if they never did)."""
        out: dict[str, Any] = {}
        tick_s = self.sc.world.tick_s
        for c, name in enumerate(info["classes"]):
            if c == 0 or c not in self.first_labels:
                continue
            first = self.first_labels[c] * tick_s
            out[f"learn/first_label_s/{name}"] = first
            reached = [
                r["sim_time_s"]
                for r in rows
                if r["sim_time_s"] >= first and r[f"learn/recognised/{name}"] >= SPREAD_SHARE
            ]
            out[f"learn/spread_s/{name}"] = reached[0] - first if reached else None
        return out

    def _write(
        self,
        rows: list[dict[str, Any]],
        summary: dict[str, Any],
        trajectory: np.ndarray,
        layout_map: dict[str, Any],
        info: dict[str, Any],
    ) -> None:
        # metrics.jsonl is written row by row as the run goes (a resumed run starts from it)
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
        if self.graph:
            (self.run_dir / "graph.json").write_text(json.dumps(self.graph))
        if layout_map:  # worlds with a map (the drone patrol): where everyone flew
            np.save(self.run_dir / "trajectory.npy", trajectory.astype(np.float32))
            (self.run_dir / "layout.json").write_text(json.dumps(layout_map, indent=2))
        from swarm.report import write_plots

        write_plots(self.run_dir)


def continual_figures(
    rows: list[dict[str, Any]], classes: list[str], first_labels: dict[int, int], sc: Scenario
) -> dict[str, float | None]:
    """The swarm's continual-learning figures over the event kinds, each kind a "task" that
    starts with its first label (swarm-mean probe accuracy per kind, `learn/class_acc/<kind>`):

    - ``learn/acc``: average final accuracy over the kinds labelled during the run;
    - ``learn/bwt``: backward transfer, mean over those kinds of (final accuracy - best accuracy
      reached after the kind's first label): 0 when nothing learnt was lost, negative when the
      swarm forgot (Lopez-Paz & Ranzato 2017 measure against the accuracy right after the task;
      with kinds that overlap in time, the best accuracy reached is that reference).
    """
    final, back = [], []
    for c, name in enumerate(classes):
        if c == 0 or c not in first_labels:
            continue
        t0 = first_labels[c] * sc.world.tick_s
        acc = [r[f"learn/class_acc/{name}"] for r in rows if r["sim_time_s"] >= t0]
        if not acc:
            continue
        final.append(acc[-1])
        back.append(acc[-1] - max(acc))
    return {
        "learn/acc": float(np.mean(final)) if final else None,
        "learn/bwt": float(np.mean(back)) if back else None,
    }


def _clean(v: float) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)
