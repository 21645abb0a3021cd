"""End to end on a real Ray runtime: shards exchange deltas over gRPC; runs are reproducible."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from swarm.records import Row, WorldInfo
from swarm.runner import Runner, new_run_dir
from swarm.scenario import Scenario, load_scenario
from swarm.shard import AgentShard, ShardSpec

TINY = Path(__file__).parent / "data" / "tiny.yaml"


def _variant(**changes) -> Scenario:
    data = load_scenario(TINY).model_dump(mode="json")
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = data
        for p in parents:
            node = node[p]
        node[leaf] = value
    return Scenario.model_validate(data)


def test_delta_crosses_grpc_between_processes_and_moves_receiver(ray_local) -> None:
    ray = ray_local
    # Two agents on a path graph, one per shard process; MH weight between them is 1/2.
    sc = _variant(
        agents__count=2,
        agents__per_shard=1,
        gossip__gamma=0.5,
        gossip__compression={"kind": "none", "ratio": 1.0},
    )
    spec, key = sc.model_dump(mode="json"), b"t" * 32
    probe = (np.zeros((1, 8, 16), np.float32), np.zeros(1, np.int64))
    cls = ray.remote(num_cpus=0)(AgentShard)
    info = WorldInfo(task="classify", obs_dim=16, agent_ids=["0", "1"], n_classes=5)
    shards = [cls.remote(ShardSpec(spec, s, [s], info, key), probe) for s in range(2)]
    endpoints = ray.get([s.endpoint.remote() for s in shards])
    ray.get([s.connect.remote(endpoints, "") for s in shards])
    pids = ray.get([s.pid.remote() for s in shards])
    x0 = ray.get(shards[1].weights.remote())
    ray.get(shards[0].set_weights.remote(x0 + 1.0))  # agent 0 "learned" +1 everywhere

    sent = [s.share.remote(0) for s in shards]
    applied = ray.get([s.merge.remote(0, *sent) for s in shards])

    x1 = ray.get(shards[1].weights.remote())
    traffic = ray.get(shards[1].measure.remote(0)).traffic
    assert pids[0] != pids[1]
    assert applied == [1, 1]
    assert traffic.counter("wire_bytes_received") > 4 * x0.size  # a dense fp32 delta came in
    assert traffic.counter("deltas_accepted") == 1
    # CHOCO: x1 += gamma * W_10 * (xhat_0 - xhat_1) = 0.5 * 0.5 * (1 - 0)
    assert np.allclose(x1 - x0, 0.25, atol=1e-6)
    ray.get([s.close.remote() for s in shards])


def test_a_shard_takes_sightings_from_a_neighbour_and_refuses_a_flood(ray_local) -> None:
    """Sightings pushed to a shard over gRPC: up to per_round from one sender in a batch are
    taken (and counted); more, or one signed with another key, refuse the batch."""
    import grpc

    from protocols import wire
    from protocols.sightings import Sighting
    from swarm.proto.v1 import delta_pb2, gossip_pb2_grpc

    ray = ray_local
    sc = _variant(agents__count=2, agents__per_shard=1, gossip__sightings={"per_round": 2})
    spec, key = sc.model_dump(mode="json"), b"t" * 32
    probe = (np.zeros((1, 8, 16), np.float32), np.zeros(1, np.int64))
    cls = ray.remote(num_cpus=0)(AgentShard)
    info = WorldInfo(task="classify", obs_dim=16, agent_ids=["0", "1"], n_classes=5)
    shard = cls.remote(ShardSpec(spec, 1, [1], info, key), probe)
    endpoint = ray.get(shard.endpoint.remote())

    def push(n: int, signing_key: bytes = key) -> None:
        window = np.ones((sc.learning.window, 16), np.float32)
        made = [Sighting(0, t, 1, 1, window) for t in range(n)]
        batch = delta_pb2.DeltaBatch(sender_node="shard-0", round=0)
        batch.sightings.extend(wire.sighting_to_proto(0, s, signing_key) for s in made)
        with grpc.insecure_channel(endpoint) as channel:
            gossip_pb2_grpc.GossipStub(channel).PushDeltas(batch, timeout=10)

    push(2)
    for n, signing_key in ((3, key), (1, b"x" * 32)):
        with pytest.raises(grpc.RpcError) as info_:
            push(n, signing_key)
        assert info_.value.code() in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.UNAUTHENTICATED,
        )
    traffic = ray.get(shard.measure.remote(0)).traffic
    assert traffic.counter("sightings_accepted") == 2
    assert traffic.counter("rejected_malformed") == 3
    assert traffic.counter("rejected_bad_signature") == 1
    ray.get(shard.close.remote())


def _run(sc: Scenario, tmp_path: Path):
    return Runner(sc, new_run_dir(tmp_path, sc)).run()


def test_sync_runs_with_same_seed_are_identical(ray_local, tmp_path: Path) -> None:
    sc = _variant()
    first, second = _run(sc, tmp_path), _run(sc, tmp_path)
    assert first.run_dir != second.run_dir
    a = json.loads((first.run_dir / "summary.json").read_text())
    b = json.loads((second.run_dir / "summary.json").read_text())
    assert a["metrics"] == b["metrics"]
    assert a["metrics"]["gossip/bytes_sent"] > 0
    assert a["metrics"]["gossip/deltas_rejected"] == 0
    assert a["diverged_at_tick"] is None
    assert (first.run_dir / "metrics.jsonl").read_text() == (
        second.run_dir / "metrics.jsonl"
    ).read_text()


VARIANTS = {
    "coordinator": {"gossip__topology": "coordinator"},
    "coordinator-median": {
        "gossip__topology": "coordinator",
        "gossip__coordinator": {"aggregator": "median"},
    },
    "isolated": {"gossip__topology": "isolated"},
    "sightings": {"gossip__sightings": {"per_round": 2}},
    # drones within radio range of each other, the shards speaking mutual TLS with
    # certificates the runner made for this run (one run checks both: ~4 s a run)
    "proximity-mtls": {
        "gossip__graph": {"kind": "proximity", "radio_range_m": 200.0},
        "gossip__tls": {"mode": "mtls"},
    },
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_other_topologies_run(ray_local, tmp_path: Path, variant: str) -> None:
    result = _run(_variant(**VARIANTS[variant]), tmp_path)
    m = result.summary["metrics"]
    if variant == "isolated":
        assert m["gossip/bytes_sent"] == 0
        assert m["learn/probe_acc"] == m["learn/probe_acc_isolated"]
        return
    assert m["gossip/bytes_sent"] > 0
    assert m["gossip/deltas_rejected"] == 0
    if variant == "sightings":  # labelled windows relayed beside the deltas, and counted
        assert m["gossip/sightings_sent"] >= m["gossip/sightings_taken"] > 0
        plain = _run(_variant(), tmp_path).summary["metrics"]
        assert m["gossip/bytes_sent"] > plain["gossip/bytes_sent"]
        assert "gossip/sightings_sent" not in plain
    if variant.startswith("coordinator"):
        assert m["learn/consensus_distance"] == pytest.approx(0, abs=1e-6)  # one global model
    elif variant == "proximity-mtls":  # 4 drones within 200 m of each other: a complete graph
        assert m["gossip/rho"] == pytest.approx(0, abs=1e-9)
        assert (result.run_dir / "certs" / "ca.pem").exists()
        assert m["gossip/deltas_accepted"] > 0


def test_runner_with_selective_activation_and_ewc(ray_local, tmp_path: Path) -> None:
    sc = _variant(
        model={"ffn_groups": 4, "ffn_top_k": 2},
        learning={"batch": 8, "replay": 64, "ewc_lambda": 10.0, "consolidate_every": 5},
    )
    m = _run(sc, tmp_path).summary["metrics"]
    assert m["learn/activation_density"] == pytest.approx(0.5)  # k / G
    assert m["gossip/deltas_accepted"] > 0


def test_runner_with_the_camera_sensor_and_a_departure(ray_local, tmp_path: Path) -> None:
    # The camera's flat observations reach the shards' models through the world's input
    # description (image + telemetry tokens); a departed drone lands and stops patrolling.
    sc = _variant(
        world={
            "cruise_points_per_zone": 1,
            "area_m": 80,
            "sensor": "camera",
            "camera_px": 8,
            "camera_patch": 4,
            "departures": [{"agent": 3, "at_s": 5.0}],
        },
        learning={"batch": 8, "replay": 64, "window": 4, "history": 8},
    )
    result = _run(sc, tmp_path)
    m = result.summary["metrics"]
    assert m["gossip/deltas_accepted"] > 0
    assert 0.0 <= m["learn/probe_acc"] <= 1.0
    assert m["task/drones_patrolling"] == 3
    layout = json.loads((result.run_dir / "layout.json").read_text())
    assert layout["events"] and {"point", "kind", "appear_tick"} <= set(layout["events"][0])


@pytest.mark.slow  # the CLI in its own process, with its own embedded Ray
def test_cli_smoke(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "swarm.cli",
            "run",
            str(TINY),
            "--runs",
            str(tmp_path),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Ray dashboard" in proc.stderr
    assert "probe accuracy, sharing" in proc.stdout
    assert "messages: sent = delivered + rejected + dropped" in proc.stdout
    (run_dir,) = tmp_path.iterdir()
    accounting = json.loads((run_dir / "summary.json").read_text())["accounting"]
    assert accounting["holds"] and accounting["sent"] > 0, accounting
    for name in (
        "scenario.yaml",
        "metrics.jsonl",
        "summary.json",
        "probe_accuracy.png",
        "bytes.png",
        "trajectories.png",
        "knowledge_spread.png",
        "graph.png",
        "graph.json",
        "report.html",
    ):
        assert (run_dir / name).stat().st_size > 0, name
    assert load_scenario(run_dir / "scenario.yaml") == load_scenario(TINY)
    # the report is one self-contained page: every plot inlined, the final figures listed
    page = (run_dir / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5 and "learn/probe_acc" in page
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())["metrics"]
    for kind in ("fire", "garbage_overflow", "river_garbage", "altitude_limit_sign"):
        assert all(0 <= r[f"learn/recognised/{kind}"] <= 1 for r in rows)
        first = summary.get(f"learn/first_label_s/{kind}")
        spread = summary.get(f"learn/spread_s/{kind}")
        assert first is None or first >= 0
        assert spread is None or spread >= 0


def test_continual_figures_by_hand() -> None:
    from swarm.tasks import continual_figures

    sc = load_scenario(TINY)  # tick_s 0.5
    classes = ["none", "fire", "sign"]
    acc = {"fire": [0.2, 0.9, 0.6], "sign": [0.0, 0.4, 0.8]}
    rows = [
        Row(int(t / 0.5), t, {f"learn/class_acc/{k}": v[i] for k, v in acc.items()})
        for i, t in enumerate((10.0, 20.0, 30.0))
    ]
    # fire first labelled at 5 s (all rows count), sign at 15 s (its first row is ignored)
    figs = continual_figures(rows, classes, {1: 10, 2: 30}, sc)
    assert figs["learn/acc"] == pytest.approx((0.6 + 0.8) / 2)
    assert figs["learn/bwt"] == pytest.approx(((0.6 - 0.9) + (0.8 - 0.8)) / 2)
    assert continual_figures(rows, classes, {}, sc) == {"learn/acc": None, "learn/bwt": None}


_EMBEDDED_RAY = """
import json, sys
import ray
from swarm.runner import start_ray
from swarm.scenario import Scenario
started, _ = start_ray(Scenario.model_validate(json.loads(sys.argv[1])), None)
print(json.dumps({"started": started,
                  "kept": ray._raylet.Config.task_events_max_num_task_in_gcs()}))
ray.shutdown()
"""


@pytest.mark.slow  # a Ray of its own, in its own process
def test_embedded_ray_keeps_the_scenarios_task_event_cap() -> None:
    # Its own process: this module's Ray (ray_local) must not be the one start_ray sees.
    data = _variant().model_dump(mode="json")
    data["ray"] |= {"task_events_kept": 1234, "dashboard": False}
    proc = subprocess.run(
        [sys.executable, "-c", _EMBEDDED_RAY, json.dumps(data)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reply = json.loads(proc.stdout.strip().splitlines()[-1])
    assert reply == {"started": True, "kept": 1234}  # Ray's own default is 100,000


def test_a_run_that_diverges_says_so(ray_local, tmp_path: Path) -> None:
    # A liar sending 1e30 times its deltas, with no robust rule: its neighbours' weights
    # overflow, and the run must report it instead of ending quietly on NaN figures.
    sc = _variant(faults={"byzantine": {"agents": [0], "attack": "scale", "scale": 1e30}})
    said: list[str] = []
    runner = Runner(sc, new_run_dir(tmp_path, sc), on_info=said.append)
    summary = runner.run().summary
    tick = summary["diverged_at_tick"]
    assert tick is not None and tick <= sc.ticks
    assert [s for s in said if s.startswith("learning diverged: from tick")] == [
        f"learning diverged: from tick {tick} some agent's weights are not finite (consensus "
        "distance nan or inf); a smaller gossip.gamma (with top-k compression) or "
        "learning.lr keeps a swarm together"
    ]
    rows = [json.loads(line) for line in (runner.run_dir / "metrics.jsonl").open()]
    assert next(r["tick"] for r in rows if not np.isfinite(r["learn/consensus_distance"])) == tick


def test_isolated_twins_fly_their_own_world_and_a_resume_rebuilds_both(
    ray_local, tmp_path: Path
) -> None:
    """baseline.isolated: the twins fly the same world on their own decisions (their own
    reports, climbs, task figures); both worlds are checkpointed and rebuilt on a resume."""
    import yaml

    from envs.drone_patrol.world import DronePatrolWorld
    from swarm import checkpoint
    from swarm.resume import tick_dir

    sc = _variant(
        world={
            "cruise_points_per_zone": 1,
            "area_m": 80,
            "rotation_s": 5.0,
            "arrivals": [{"agent": 3, "at_s": 6.0}],
            "labels": "reports",
        },
        checkpoint={"every_ticks": 20},
        gossip__sightings={"per_round": 2},  # the relays' outboxes are checkpointed too
    )
    whole = _run(sc, tmp_path / "whole")
    m = whole.summary["metrics"]
    assert m["gossip/sightings_taken"] > 0
    for key in ("task/score", "task/first_encounters_all", "task/f1"):
        assert key in m and f"{key}_isolated" in m
    at = tick_dir(whole.run_dir / "checkpoints", 20)
    flown, _ = checkpoint.load(at / "world.npz")
    twins, _ = checkpoint.load(at / "twin.npz")
    assert flown["decisions"].shape == twins["decisions"].shape == (20, 4)
    # each world is the scenario's world stepped with its own swarm's decisions: replayed,
    # the twins' reproduces the `_isolated` task figures of the row at tick 20
    row = next(json.loads(line) for line in (whole.run_dir / "metrics.jsonl").open()
               if json.loads(line)["tick"] == 20)  # fmt: skip
    for decisions, suffix in ((flown, ""), (twins, "_isolated")):
        world = DronePatrolWorld(sc.world, sc.agents.count, sc.seed)
        world.reset()
        for chosen in decisions["decisions"]:
            world.step(chosen)
        replayed = world.task_metrics()
        world.close()
        for key in ("task/f1", "task/score", "task/false_positives", "task/first_encounters_all"):
            assert row[key + suffix] == pytest.approx(replayed[key], abs=1e-12), key

    def interrupt(tick: int) -> None:
        if tick >= 28:
            raise KeyboardInterrupt

    cut = new_run_dir(tmp_path / "cut", sc)
    with pytest.raises(KeyboardInterrupt):
        Runner(sc, cut, on_tick=interrupt).run()
    saved = yaml.safe_load((cut / "scenario.yaml").read_text())
    resumed = Runner(Scenario.model_validate(saved), cut, resume=True).run()
    assert resumed.summary["run"]["resumed_from_tick"] == 20
    assert resumed.summary["metrics"] == whole.summary["metrics"]
    assert (cut / "metrics.jsonl").read_text() == (whole.run_dir / "metrics.jsonl").read_text()
