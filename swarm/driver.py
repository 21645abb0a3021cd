"""The Runner's work on Ray: the actors of a run and the tick loop that drives them.

The driver only schedules. Each tick it submits `shard.act(step)` for every shard and
`world.step(*predictions)` (with an isolated baseline whose twins fly their own world,
`shard.act_twins(step, twin_step)` and both worlds' steps), passing object refs so Ray chains
the calls without the driver waiting; gossip rounds chain `share` -> `merge` the same way (in
sync mode every `merge` takes all `share` results as arguments: that is the round barrier). The
driver waits (`ray.wait`) only to bound the calls in flight and to show progress, and fetches
metrics as records.

Kept apart from swarm/runner.py, which imports it when a run starts: importing swarm (the CLI,
`swarm validate`) must not load Ray.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import numpy as np
import ray
from ray import ObjectRef
from ray.actor import ActorHandle
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from swarm import checkpoint
from swarm.exchange import Counts
from swarm.records import Document, Probe, Receipt, Restored, Row, Step, WorldInfo
from swarm.resume import Marker, commit, tick_dir
from swarm.runner import RunError, read_key
from swarm.scenario import groups_problem
from swarm.shard import AgentShard, CoordinatorHost, CoordinatorSpec, ShardSpec, WorldHost
from swarm.tasks import task_named, task_of_world
from swarm.telemetry import metrics_endpoint

if TYPE_CHECKING:
    from swarm.runner import Runner

#: Ticks the driver lets run ahead of the last finished world step.
MAX_TICKS_IN_FLIGHT = 4


@dataclass
class Actors:
    """The Ray actors of one run, closed together whatever happened."""

    world: ActorHandle[WorldHost]
    twin: ActorHandle[WorldHost] | None = None  # the world the isolated twins fly
    shards: list[ActorHandle[AgentShard]] = field(default_factory=list)
    coordinator: ActorHandle[CoordinatorHost] | None = None
    group: PlacementGroup | None = None  # the shards' placement group

    def close(self) -> None:
        if self.shards:
            ray.get([s.close.remote() for s in self.shards])
        if self.coordinator is not None:
            ray.get(self.coordinator.close.remote())
        ray.get(self.world.close.remote())
        if self.twin is not None:
            ray.get(self.twin.close.remote())
        if self.group is not None:
            remove_placement_group(self.group)


@dataclass
class Pending:
    """What the tick loop submitted and has not read back yet."""

    ticks: list[ObjectRef[Step]] = field(default_factory=list)  # world steps in flight
    rows: list[tuple[int, list[ObjectRef]]] = field(default_factory=list)  # (tick, measures)
    # (ticks, next round, receipts) of checkpoints not yet committed
    checkpoints: list[tuple[int, int, list[ObjectRef]]] = field(default_factory=list)
    exchanges: list[ObjectRef[int]] = field(default_factory=list)  # merges: a failure raises

    def refs(self) -> list[ObjectRef]:
        return self.ticks + self.exchanges + [r for _, refs in self.rows for r in refs]


class Driver:
    """Starts a run's actors on the Ray instance the Runner joined, drives its ticks, and
    closes them. What the run records (rows, summary, files) is the Runner's."""

    def __init__(self, runner: Runner):
        self.runner = runner
        self.sc = runner.sc
        spec = self.sc.model_dump(mode="json")
        host = ray.remote(num_cpus=0)(WorldHost)
        self.actors = Actors(world=cast("ActorHandle[WorldHost]", host.remote(spec)))
        # The isolated baseline as a swarm of its own: the twins fly the same world (seed,
        # events) on their own decisions, and learn from their own reports' labels.
        if self.sc.isolated_twins and task_of_world(self.sc.world.kind).twin_world:
            self.actors.twin = cast("ActorHandle[WorldHost]", host.remote(spec))
        self.endpoints: list[str] = []
        self.coord_addr = ""
        self._firsts: list[int] | None = None  # each shard's first agent: parts (`_parts`)

    @staticmethod
    def cpus() -> float:
        """CPUs of the cluster the run landed on."""
        return float(ray.cluster_resources().get("CPU", 1.0))

    def start(self) -> WorldInfo:
        """Start the world, the shards and the coordinator, and connect them."""
        sc, actors = self.sc, self.actors
        endpoint = metrics_endpoint()  # where Prometheus can scrape them
        self.runner.on_info(
            f"metrics: {endpoint} (Prometheus)"
            if endpoint
            else "metrics: not exported (no Ray metrics agent: pip install 'ray[default]')"
        )
        spec = sc.model_dump(mode="json")
        try:
            info = cast(WorldInfo, ray.get(actors.world.info.remote()))
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, ValueError):
                raise RunError(f"cannot build the world: {exc.cause}") from None
            raise
        if problem := groups_problem(sc, info):  # `swarm validate` says so too (exit 2)
            raise RunError(f"cannot run the world's agent groups: {problem}")
        # HMAC key of this run's deltas: the swarm's shared key when devices join (key_file),
        # else a secret of this run that never leaves Ray.
        key = read_key(sc.gossip.key_file) if sc.gossip.key_file else secrets.token_bytes(32)
        probe = None
        if task_named(info.task).needs_probe:
            probe = actors.world.probe.remote(
                sc.metrics.probe_per_class, sc.learning.window, sc.seed + 1_000_003
            )
        specs = self._shard_specs(actors.world, info, key)
        actors.shards = self._start_shards(actors, specs, probe)
        endpoints: list[str] = ray.get([s.endpoint.remote() for s in actors.shards])
        self._place(actors.shards, endpoints)
        if self.runner.exchange.needs_coordinator:
            actors.coordinator = self._start_coordinator(actors.shards[0], spec, key)
        ray.get([s.connect.remote(endpoints, self.coord_addr) for s in actors.shards])
        self.endpoints = endpoints
        return info

    def _shard_specs(
        self, world: ActorHandle[WorldHost], info: WorldInfo, key: bytes
    ) -> list[ShardSpec]:
        sc = self.sc
        positions: np.ndarray | None = None
        if sc.gossip.graph.kind == "proximity":  # built from the agents' start positions
            positions = cast(np.ndarray, ray.get(world.positions.remote()))
        edges = self.runner.graph_edges(positions, info)
        # On a cluster of several nodes a shard must be reachable from the others: it listens
        # on, and advertises, its node's address. On one machine: loopback only.
        multi_node = sum(1 for n in ray.nodes() if n.get("Alive")) > 1
        n, per = sc.agents.count, sc.per_shard
        return [
            ShardSpec(
                scenario=sc.model_dump(mode="json"),
                index=s,
                agents=list(range(s * per, min(n, (s + 1) * per))),
                info=info,
                key=key,
                host="node" if multi_node else "127.0.0.1",
                edges=edges,
                run=self.runner.run_dir.name,
                ckpt_dir=str(self.runner.ckpt_root) if sc.checkpoint.every_ticks else "",
                resume=self.runner.resume,
            )
            for s in range(sc.n_shards)
        ]

    def _start_shards(
        self, actors: Actors, specs: list[ShardSpec], probe: ObjectRef[Probe] | None
    ) -> list[ActorHandle[AgentShard]]:
        """One actor per shard, spread over the cluster's nodes, one bundle each (on one
        machine: packed); a shard the scenario kills may be restarted that many times."""
        sc = self.sc
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        per_shard_cpu = min(1.0, cpus / sc.n_shards)
        actors.group = group = placement_group(
            [{"CPU": per_shard_cpu}] * sc.n_shards, strategy="SPREAD"
        )
        try:
            ray.get(group.ready(), timeout=120)
        except ray.exceptions.GetTimeoutError:
            raise RunError(
                f"the Ray cluster cannot place {sc.n_shards} shards of {per_shard_cpu:g} "
                "CPU each within 120 s; add nodes, or lower agents.count / raise per_shard"
            ) from None
        restarts = Counter(k.shard for k in sc.faults.kill)
        if sc.checkpoint.every_ticks:
            self.runner.ckpt_root.mkdir(exist_ok=True)
        shard_cls = ray.remote(num_cpus=per_shard_cpu)(AgentShard)
        shards = [
            shard_cls.options(
                name=None,
                max_restarts=restarts.get(s, 0),
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=group, placement_group_bundle_index=s
                ),
            ).remote(spec, probe)
            for s, spec in enumerate(specs)
        ]
        return cast("list[ActorHandle[AgentShard]]", shards)

    def _place(self, shards: list[ActorHandle[AgentShard]], endpoints: list[str]) -> None:
        """Record where each shard runs (summary.json `placement`); say so on a cluster."""
        nodes: list[str] = ray.get([s.node_id.remote() for s in shards])
        self.runner.placement = [
            {"shard": i, "node": node, "endpoint": e}
            for i, (node, e) in enumerate(zip(nodes, endpoints, strict=True))
        ]
        if len(set(nodes)) > 1:
            self.runner.on_info(
                f"shards on {len(set(nodes))} Ray nodes: "
                + ", ".join(
                    f"shard-{i} {e or '-'} ({n[:8]})"
                    for i, n, e in zip(range(len(nodes)), nodes, endpoints, strict=True)
                )
            )

    def _start_coordinator(
        self, shard: ActorHandle[AgentShard], spec: Document, key: bytes
    ) -> ActorHandle[CoordinatorHost]:
        num_params, layout, scale = cast(
            tuple[int, str, tuple[float, float]], ray.get(shard.model_info.remote())
        )
        coordinator = ray.remote(num_cpus=0)(CoordinatorHost).remote(  # type: ignore[attr-defined]
            CoordinatorSpec(
                spec,
                num_params,
                layout,
                key,
                start_round=self.runner.marker["round"] if self.runner.marker else 0,
                counts=self.runner.coordinator_counts(),
                x0_scale=scale,
                shards=True,
            )
        )
        self.coord_addr = str(ray.get(coordinator.address.remote()))
        return cast("ActorHandle[CoordinatorHost]", coordinator)

    def _start_world(self, world: ActorHandle[WorldHost], name: str = "world") -> ObjectRef[Step]:
        """The first Step: a fresh reset, or the world of a resumed run rebuilt by replaying
        the decisions recorded up to its checkpoint (`<name>.npz`)."""
        marker = self.runner.marker
        if marker is None:
            return world.reset.remote()
        where = tick_dir(self.runner.ckpt_root, marker["ticks"])
        if not (where / f"{name}.npz").exists():
            raise RunError(
                f"cannot resume: {where} holds no {name}.npz (a checkpoint of a run without "
                "the isolated twins' world: resume with the scenario it was written with)"
            )
        arrays, _ = checkpoint.load(where / f"{name}.npz")
        return world.replay.remote(arrays["decisions"])

    def _parts(self, info: WorldInfo) -> list[int] | None:
        """The first agent of each shard when the world steps each shard's part as soon as
        that shard has acted (WorldInfo.per_copy: every shard hosts whole copies; 0 in a world
        of several agent groups, whose copies are not ranges of agents), else None.
        Then the world steps one shard's copies while the other shards act: the world and
        the shards work at the same time (double-buffered sampling) instead of taking turns,
        and every copy still steps once a tick on its own agents' decisions."""
        sc, per = self.sc, info.per_copy
        if not per or sc.n_shards < 2 or sc.per_shard % per or self.actors.twin is not None:
            return None
        return [s * sc.per_shard for s in range(sc.n_shards)]

    def _act(
        self, steps: list[ObjectRef[Step]], twin_step: ObjectRef[Step] | None
    ) -> tuple[list[ObjectRef[Step]], ObjectRef[Step] | None]:
        """One tick: every shard acts, the world (and the twins' world) steps on it. steps:
        the Step each shard acts on (one for all, or each shard's part, `_parts`)."""
        world, twin, shards = self.actors.world, self.actors.twin, self.actors.shards
        if self._firsts is not None:  # each shard's part steps as soon as it has acted
            return [
                world.step_part.remote(first, s.act.remote(step))
                for first, s, step in zip(self._firsts, shards, steps, strict=True)
            ], None
        if twin is None or twin_step is None:
            acts = [s.act.remote(st) for s, st in zip(shards, steps, strict=True)]
            step: ObjectRef[Step] = world.step.remote(*acts)
            return [step] * len(shards), None
        pairs = [
            s.act_twins.options(num_returns=2).remote(st, twin_step)
            for s, st in zip(shards, steps, strict=True)
        ]
        return (
            [world.step.remote(*[p[0] for p in pairs])] * len(shards),
            twin.step.remote(*[p[1] for p in pairs]),
        )

    # -- the tick loop ---------------------------------------------------------------------------

    def loop(self, info: WorldInfo, rows: list[Row]) -> list[Row]:
        """Drive the ticks: each tick every shard acts on the last Step and the world steps
        with their decisions; rounds, metrics rows and checkpoints at their intervals."""
        sc = self.sc
        world, shards = self.actors.world, self.actors.shards
        self._firsts = self._parts(info)
        shares = sc.shares  # asked once: it looks up the exchange and the task
        steps = [self._start_world(world)] * len(shards)
        twin_step = (
            None if self.actors.twin is None else self._start_world(self.actors.twin, "twin")
        )
        kills: dict[int, list[int]] = {}
        for k in sc.faults.kill:
            kills.setdefault(k.at_tick, []).append(k.shard)
        start = self.runner.marker["ticks"] if self.runner.marker else 0
        round_ = self.runner.marker["round"] if self.runner.marker else 0
        self.runner.open_rows(rows)
        pending = Pending()
        self._t_ticks, self._start_tick = time.perf_counter(), start  # the real-time factor
        for tick in range(start, sc.ticks):
            done = tick + 1  # ticks completed once this one is
            steps, twin_step = self._act(steps, twin_step)
            if shares and done % sc.gossip.interval == 0:
                sent = [s.share.remote(round_, done) for s in shards]
                barrier = sent if sc.gossip.mode == "sync" else []
                # Kept so a failed round surfaces as an error instead of vanishing.
                pending.exchanges.extend(s.merge.remote(round_, *barrier) for s in shards)
                round_ += 1
            self._submit_measures(world, shards, done, pending)
            self._submit_checkpoint(world, shards, done, round_, pending)
            pending.ticks.append(steps[-1])  # the world's last call of the tick
            if len(pending.ticks) > MAX_TICKS_IN_FLIGHT:
                ray.wait([pending.ticks.pop(0)], num_returns=1)
                self.runner.on_tick(tick - MAX_TICKS_IN_FLIGHT)
            self._take_rows(pending, rows, info, last=done == sc.ticks)
            self._commit(pending, rows, block=False)
            if done in kills:
                # let everything submitted finish, so the kill lands between two ticks
                ray.get(pending.refs())
                self._take_rows(pending, rows, info, last=True)
                self._commit(pending, rows, block=True)
                for index in kills[done]:
                    self._kill(shards, index, done)
        ray.get(pending.ticks + pending.exchanges + ([twin_step] if twin_step else []))
        self._commit(pending, rows, block=True)
        self.runner.on_tick(sc.ticks - 1)
        return rows

    def _submit_measures(
        self,
        world: ActorHandle[WorldHost],
        shards: list[ActorHandle[AgentShard]],
        done: int,
        pending: Pending,
    ) -> None:
        if done % self.sc.metrics.interval == 0 or done == self.sc.ticks:
            worlds = [world] if self.actors.twin is None else [world, self.actors.twin]
            refs: list[ObjectRef] = [w.measure.remote() for w in worlds]
            refs += [s.measure.remote(done) for s in shards]
            pending.rows.append((done, refs))

    def _submit_checkpoint(
        self,
        world: ActorHandle[WorldHost],
        shards: list[ActorHandle[AgentShard]],
        done: int,
        round_: int,
        pending: Pending,
    ) -> None:
        every = self.sc.checkpoint.every_ticks
        if not every or done % every or done == self.sc.ticks:
            return
        where = tick_dir(self.runner.ckpt_root, done)
        where.mkdir(parents=True, exist_ok=True)
        receipts = [s.checkpoint.remote(done, str(where)) for s in shards]
        receipts.append(world.checkpoint.remote(done, str(where)))
        if self.actors.twin is not None:
            receipts.append(self.actors.twin.checkpoint.remote(done, str(where), "twin"))
        if self.actors.coordinator is not None:  # its counts once this round's merges ran
            receipts.append(
                self.actors.coordinator.counts.remote(*pending.exchanges[-len(shards) :])
            )
        pending.checkpoints.append((done, round_, receipts))

    def _take_rows(self, pending: Pending, rows: list[Row], info: WorldInfo, *, last: bool) -> None:
        """Read back the metrics rows that are done (all of them when `last`) and hand them
        to the Runner."""
        while pending.rows and (last or len(pending.rows) > 1):
            at, refs = pending.rows.pop(0)
            world_m, *shard_m = ray.get(refs)
            if self.actors.twin is not None:  # the twins' world measured second
                twin_m, *shard_m = shard_m
                world_m.update({f"{k}_isolated": v for k, v in twin_m.items()})
            ran = (at - self._start_tick) * self.sc.world.tick_s  # simulated s since the start
            rtf = ran / max(time.perf_counter() - self._t_ticks, 1e-9)
            self.runner.add_row(rows, at, world_m, shard_m, info, real_time_factor=rtf)
            ray.get(pending.exchanges)  # all done by now; raises if a round failed
            pending.exchanges.clear()

    def _commit(self, pending: Pending, rows: list[Row], *, block: bool) -> None:
        """Mark checkpoints complete (latest.json), oldest first: once every shard and the
        world have written theirs, and the metrics rows up to them are in metrics.jsonl."""
        while pending.checkpoints:
            ticks, round_, refs = pending.checkpoints[0]
            if any(at <= ticks for at, _ in pending.rows):
                return  # rows up to this tick not written yet
            if not block and len(ray.wait(refs, num_returns=len(refs), timeout=0)[0]) < len(refs):
                return
            done = ray.get(refs)
            pending.checkpoints.pop(0)
            # the shards' receipts, then the worlds' and the coordinator's counts
            receipts: list[Receipt] = done[: len(self.runner.placement)]
            if self.actors.coordinator is not None:  # its counts came last
                path = tick_dir(self.runner.ckpt_root, ticks) / "coordinator.json"
                path.write_text(json.dumps(done[-1]))
            marker = Marker(
                ticks=ticks,
                round=round_,
                rows=sum(1 for r in rows if r.tick <= ticks),
                dir=tick_dir(self.runner.ckpt_root, ticks).name,
                bytes=int(sum(r.bytes for r in receipts)),
            )
            commit(self.runner.ckpt_root, marker)

    def _kill(self, shards: list[ActorHandle[AgentShard]], index: int, tick: int) -> None:
        """Kill shard `index`'s process (a fault the scenario asked for); Ray restarts the
        actor, which restores its agents from the last complete checkpoint. Its traffic
        counts are read before the kill and handed to the new process: an observer's
        bookkeeping, so the run's message accounting stays whole."""
        shard = shards[index]
        counts = cast(Counts, ray.get(shard.traffic_state.remote()))
        pid = cast(int, ray.get(shard.pid.remote()))
        t0 = time.perf_counter()
        ray.kill(shard, no_restart=False)
        self._wait_restarted(shard, index, pid, deadline=t0 + 120)
        restored: Restored | None = ray.get(shard.restore_info.remote())
        ray.get(shard.load_traffic.remote(counts))
        # the new process serves on a new port: every shard learns it
        self.endpoints[index] = ray.get(shard.endpoint.remote())
        self.runner.placement[index]["endpoint"] = self.endpoints[index]
        ray.get(shard.connect.remote(self.endpoints, self.coord_addr))
        ray.get(
            [s.set_endpoints.remote(self.endpoints) for i, s in enumerate(shards) if i != index]
        )
        restart_s = round(time.perf_counter() - t0, 3)
        event: Document = {"shard": index, "tick": tick, "restart_s": restart_s}
        if restored is not None:
            event.update(restored.as_json())
            before, after = restored.probe_acc_checkpoint, restored.probe_acc_restored
            if before and after:
                event["probe_acc_change"] = float(np.mean(after) - np.mean(before))
        self.runner.kills.append(event)
        self.runner.on_info(
            f"faults: killed shard-{index} at tick {tick}; Ray restarted it in "
            f"{restart_s:.1f} s, its agents restored from the checkpoint at tick "
            f"{restored.checkpoint_ticks if restored else None}"
        )

    @staticmethod
    def _wait_restarted(
        shard: ActorHandle[AgentShard], index: int, pid: int, deadline: float
    ) -> None:
        while True:
            try:
                if ray.get(shard.pid.remote(), timeout=30) != pid:
                    return
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                pass
            if time.perf_counter() > deadline:
                raise RunError(f"faults.kill: shard {index} did not come back within 120 s")
            time.sleep(0.1)

    # -- results -------------------------------------------------------------------------------

    def trajectories(self) -> tuple[np.ndarray, Document]:
        """Positions at every tick (T+1, N, 3) and the world's map."""
        return cast(tuple[np.ndarray, Document], ray.get(self.actors.world.trajectories.remote()))

    def first_labels(self) -> dict[int, int]:
        return cast(dict[int, int], ray.get(self.actors.world.first_labels.remote()))

    def coordinator_traffic(self) -> dict[str, int]:
        if self.actors.coordinator is None:
            return {}
        return cast(dict[str, int], ray.get(self.actors.coordinator.traffic.remote()))

    def close(self) -> None:
        self.actors.close()
