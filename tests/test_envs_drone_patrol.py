"""Drone patrol world: flight, determinism, labels, events, the altitude sign, probes, metrics."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from envs.drone_patrol.config import EVENT_CLASSES, ZONES, EventKindConfig

pytest.importorskip("pybullet")

from envs.drone_patrol.events import EventRecord  # noqa: E402
from envs.drone_patrol.metrics import PatrolMetrics  # noqa: E402
from envs.drone_patrol.patrol import ALT_HALF_BAND_M, VISIT_RADIUS_M  # noqa: E402
from envs.drone_patrol.physics import DronePhysics  # noqa: E402
from envs.drone_patrol.world import DronePatrolWorld, StepResult  # noqa: E402

NONE = 0
SIGN = EVENT_CLASSES.index("altitude_limit_sign")


def _run(world: DronePatrolWorld, ticks: int, policy) -> list[StepResult]:
    """Step ``ticks`` times with predictions = policy(world)."""
    return [world.step(policy(world)) for _ in range(ticks)]


def oracle(world: DronePatrolWorld) -> np.ndarray:
    return world.true_classes()


def all_none(world: DronePatrolWorld) -> np.ndarray:
    return np.zeros(world.n_agents, dtype=np.int64)


# ---- package and API --------------------------------------------------------------------


def test_package_import_loads_neither_pybullet_nor_torch():
    # Prepare
    code = (
        "import sys, envs, envs.drone_patrol\n"
        "print(int('pybullet' in sys.modules), int('torch' in sys.modules))"
    )
    # Execute
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # Assert
    assert out.stdout.split() == ["0", "0"]


def test_api_shapes_and_layout(make_world):
    # Prepare
    world = make_world(n_agents=6, cruise_points_per_zone=4)
    # Execute
    obs = world.reset()
    res = world.step(np.zeros(6, dtype=np.int64))
    layout = world.layout()
    # Assert
    assert world.agent_ids == [f"drone_{i}" for i in range(6)]
    assert world.n_classes == len(EVENT_CLASSES)
    assert world.obs_dim == world.cfg.feature_dim + 4
    assert obs.shape == (6, world.obs_dim) and obs.dtype == np.float32
    assert res.obs.shape == (6, world.obs_dim) and res.obs.dtype == np.float32
    assert res.labels.dtype == np.int64 and res.labels.shape[1] == 3
    assert res.tick == world.tick == 1
    assert world.positions().shape == (6, 3) and world.positions().dtype == np.float32
    json.dumps(layout)  # JSON-able
    assert [z["name"] for z in layout["zones"]] == list(ZONES)
    assert len(layout["cruise_points"]) == 4 * 4
    river = np.array(layout["river"])
    for cp in layout["cruise_points"]:
        if cp["zone"] == "river":  # river points lie on the river
            assert cp["y"] == pytest.approx(np.interp(cp["x"], river[:, 0], river[:, 1]))


def test_step_rejects_bad_predictions(make_world):
    # Prepare
    world = make_world(n_agents=2)
    # Execute / Assert
    with pytest.raises(ValueError, match="shape"):
        world.step(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="class ids"):
        world.step(np.array([0, len(EVENT_CLASSES)]))


# ---- flight -----------------------------------------------------------------------------


def test_drones_fly_to_their_first_cruise_point_at_cruise_altitude(make_world):
    # Prepare
    world = make_world(n_agents=8, seed=1)
    cfg = world.cfg
    start = world.positions()
    points = np.array([[c["x"], c["y"]] for c in world.layout()["cruise_points"]])
    first = world.target_points().copy()
    leg = np.linalg.norm(points[first] - start[:, :2], axis=1)
    bound = int(np.ceil(leg.max() / (cfg.speed_mps * cfg.tick_s))) + 8  # + braking, dwell
    # Execute
    dist, alt, moved_on = [], [], np.zeros(8, dtype=bool)
    for _ in range(bound):
        world.step(all_none(world))
        pos = world.positions()
        dist.append(np.linalg.norm(pos[:, :2] - points[first], axis=1))
        alt.append(pos[:, 2])
        moved_on |= world.target_points() != first
    dist_arr, alt_arr = np.array(dist), np.array(alt)  # (T, N)
    # Assert
    assert np.all(np.linalg.norm(world.positions() - start, axis=1) > 1.0)
    assert np.all(dist_arr.min(axis=0) < VISIT_RADIUS_M), dist_arr.min(axis=0)
    assert moved_on.all()  # after the dwell, each goes on to its next point
    assert np.all(np.abs(alt_arr - cfg.cruise_altitude_m) < ALT_HALF_BAND_M + 0.5)
    drone_zone = [world.layout()["cruise_points"][p]["zone"] for p in first]
    assert drone_zone == [ZONES[i % 4] for i in range(8)]


def test_contacts_are_counted_as_collisions(make_world):
    # Prepare: two drones stacked 0.5 m apart both told to hover at the same spot, one more
    # told to fly into the ground: its target, 5 mm up, is inside its 15 mm half height but
    # above 0, so it is not a landing (a landing touchdown is no collision: test_physics.py).
    world = make_world(n_agents=1)
    phys = DronePhysics(world.cfg, world.map, world.events.hosts)
    phys.reset(np.array([[0.0, 0.0, 5.0], [0.0, 0.0, 5.5], [5.0, 5.0, 1.0]]))
    target = np.array([[0.0, 0.0, 5.25], [0.0, 0.0, 5.25], [5.0, 5.0, 0.005]])
    # Execute
    for _ in range(8):
        phys.advance(target)
    # Assert
    assert phys.drone_collisions >= 1
    assert phys.ground_collisions == 1  # resting on the ground is one contact, not one per step
    phys.close()


# ---- determinism ------------------------------------------------------------------------


def _random_policy(seed: int):
    rng = np.random.default_rng(seed)

    def policy(world: DronePatrolWorld) -> np.ndarray:
        return rng.integers(0, world.n_classes, world.n_agents)

    return policy


def test_same_seed_same_predictions_identical_episode(make_world):
    # Prepare
    a, b, c = make_world(8, seed=5), make_world(8, seed=5), make_world(8, seed=6)
    # Execute
    obs_a, obs_b, obs_c = a.reset(), b.reset(), c.reset()
    run_a = _run(a, 60, _random_policy(11))
    run_b = _run(b, 60, _random_policy(11))
    _run(c, 60, _random_policy(11))
    # Assert
    assert np.array_equal(obs_a, obs_b) and not np.array_equal(obs_a, obs_c)
    for ra, rb in zip(run_a, run_b, strict=True):
        assert np.array_equal(ra.obs, rb.obs)
        assert np.array_equal(ra.labels, rb.labels)
    assert a.task_metrics() == b.task_metrics()
    assert np.array_equal(a.positions(), b.positions())
    assert not np.array_equal(a.positions(), c.positions())


def test_reset_replays_the_episode(make_world):
    # Prepare
    world = make_world(4, seed=2)
    first = [world.reset()] + [r.obs for r in _run(world, 20, oracle)]
    # Execute
    again = [world.reset()] + [r.obs for r in _run(world, 20, oracle)]
    # Assert
    assert world.tick == 20
    for x, y in zip(first, again, strict=True):
        assert np.array_equal(x, y)


# ---- labels -----------------------------------------------------------------------------


def test_labels_arrive_after_the_delay_for_a_fraction_with_the_true_class(make_world):
    # Prepare
    delay, ticks = 3, 240
    world = make_world(
        8, seed=4, label_delay_ticks=delay, label_fraction=0.5, background_label_fraction=0.1
    )
    world.reset()
    truth = {0: world.true_classes()}  # tick -> (N,) true classes
    arrivals = []  # (arrival_tick, agent, tick_obs, cls)
    # Execute
    for _ in range(ticks):
        res = world.step(oracle(world))
        truth[res.tick] = world.true_classes()
        arrivals += [(res.tick, *row) for row in res.labels.tolist()]
    # Assert
    arr = np.array(arrivals)  # (M, 4)
    assert np.all(arr[:, 0] == arr[:, 2] + delay)
    assert all(truth[t][i] == c for _, i, t, c in arrivals)
    assert arr[:, 2].max() <= ticks - delay  # later observations are not labelled yet
    assert len({(i, t) for _, i, t, _ in arrivals}) == len(arrivals)  # one label per observation
    observed = np.array([truth[t] for t in range(ticks - delay + 1)])  # (T, N)
    n_event = int((observed > 0).sum())
    n_event_lab = int((arr[:, 3] > 0).sum())
    n_bg_lab = int((arr[:, 3] == 0).sum())
    assert n_event > 100  # enough event observations for the fractions to mean something
    assert 0.35 < n_event_lab / n_event < 0.65
    assert 0.05 < n_bg_lab / int((observed == 0).sum()) < 0.16


def test_report_labels_confirm_a_fraction_of_reports_and_spot_check_the_rest(make_world):
    # Prepare: labels: reports. Drones 0-3 report an event every tick (a fixed wrong or right
    # class), drones 4-7 never report; the operator answers with the TRUE class either way.
    delay, ticks = 2, 200
    world = make_world(
        8, seed=5, labels="reports", label_delay_ticks=delay, label_fraction=0.6,
        background_label_fraction=0.1,
    )  # fmt: skip
    world.reset()
    pred = np.array([1, 2, 3, 4, 0, 0, 0, 0])
    truth = {0: world.true_classes()}
    arrivals = []
    # Execute
    for _ in range(ticks):
        res = world.step(pred)
        truth[res.tick] = world.true_classes()
        arrivals += res.labels.tolist()
    # Assert
    arr = np.array(arrivals)  # (M, 3) agent, tick, class
    assert all(truth[t][i] == c for i, t, c in arrivals)  # confirmed or corrected: the truth
    reporters = np.isin(arr[:, 0], [0, 1, 2, 3])
    per_tick = ticks - delay + 1  # observation ticks whose labels have arrived
    assert 0.5 < reporters.sum() / (4 * per_tick) < 0.7  # label_fraction of the reports
    assert 0.05 < (~reporters).sum() / (4 * per_tick) < 0.15  # spot checks of silent drones
    assert (arr[~reporters, 2] > 0).any()  # a silent drone in view of an event can learn of it


# ---- events -----------------------------------------------------------------------------


def test_events_appear_only_in_their_zones(make_world):
    # Prepare
    world = make_world(4, seed=3)
    # Execute
    _run(world, 200, oracle)
    log = world.event_log()
    # Assert
    assert {e["kind"] for e in log} == set(EVENT_CLASSES[1:])
    for e in log:
        assert e["zone"] in world.cfg.events[e["kind"]].zones
        assert e["clear_tick"] > e["appear_tick"]
    np.testing.assert_array_equal(world.physics.shown, world.events.kind)  # markers follow


def test_a_late_kind_does_not_exist_before_appears_after_s(make_world):
    # Prepare
    events = {
        "fire": EventKindConfig(zones=["forest"], rate_per_min=6.0, appears_after_s=40.0),
        "garbage_overflow": EventKindConfig(zones=["city"], rate_per_min=6.0),
    }
    world = make_world(4, seed=0, events=events)
    # Execute
    _run(world, 160, oracle)
    log = world.event_log()
    # Assert
    fire_ticks = [e["appear_tick"] for e in log if e["kind"] == "fire"]
    assert fire_ticks and min(fire_ticks) * world.cfg.tick_s >= 40.0
    assert min(e["appear_tick"] for e in log if e["kind"] == "garbage_overflow") * 0.5 < 40.0
    assert {e["kind"] for e in log} == {"fire", "garbage_overflow"}


# ---- altitude-limit sign ----------------------------------------------------------------

SIGNS_EVERYWHERE = {
    # Frequent, long-lived signs so that every industrial point carries one almost always.
    "altitude_limit_sign": EventKindConfig(
        zones=["industrial"], rate_per_min=30.0, duration_s=600.0
    )
}


def test_a_drone_that_recognises_the_sign_climbs_and_complies(make_world):
    # Prepare: drone_3 patrols the industrial zone.
    world = make_world(4, seed=0, events=SIGNS_EVERYWHERE)
    limit = world.cfg.altitude_limit_m
    # Execute
    alt = [world.positions()[3, 2]]
    departures = []  # drone_3's altitude each time it moves on from a point showing a sign
    for _ in range(120):
        before = int(world.target_points()[3])
        sign_there = world.events.kind[before] == SIGN
        world.step(oracle(world))
        alt.append(world.positions()[3, 2])
        if sign_there and world.target_points()[3] != before:
            departures.append(alt[-1])
    m = world.task_metrics()
    # Assert
    assert len(departures) >= 2
    assert min(departures) > limit  # above 10 m before it moves on, at every sign
    assert max(alt) > limit
    top = int(np.argmax(alt))
    assert min(alt[top:]) < alt[top] - 1.0  # and heads back down to cruise between points
    assert m["task/sign_passages"] > 0
    assert m["task/altitude_violations"] == 0
    assert m["task/altitude_compliance"] == 1.0


def test_a_drone_that_ignores_the_sign_violates(make_world):
    # Prepare
    world = make_world(4, seed=0, events=SIGNS_EVERYWHERE)
    # Execute
    _run(world, 120, all_none)
    m = world.task_metrics()
    # Assert
    assert np.all(world.positions()[:, 2] < world.cfg.altitude_limit_m)
    assert m["task/altitude_violations"] > 0
    assert m["task/altitude_violations"] == m["task/sign_passages"]
    assert m["task/altitude_compliance"] == 0.0 and m["task/score"] == 0.0


# ---- probe set --------------------------------------------------------------------------


def test_probe_set_is_balanced_well_shaped_and_from_the_live_sensor(make_world):
    # Prepare
    world = make_world(4, seed=7)
    twin = make_world(4, seed=7)
    per_class, window = 20, 6
    # Execute
    x, y = world.probe_set(per_class, window, seed=1)
    x2, _ = world.probe_set(per_class, window, seed=1)
    x3, _ = world.probe_set(per_class, window, seed=2)
    # Assert
    n = world.n_classes * per_class
    assert x.shape == (n, window, world.obs_dim) and x.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int64
    assert np.array_equal(np.bincount(y, minlength=world.n_classes), [per_class] * world.n_classes)
    assert np.array_equal(x, x2) and not np.array_equal(x, x3)
    # The last token carries its class: nearest prototype beats chance by far.
    sig = x[:, -1, : world.cfg.feature_dim].astype(np.float64)  # (n, D)
    d = np.linalg.norm(sig[:, None] - world.sensor.prototypes[None], axis=-1)  # (n, C)
    assert (d.argmin(axis=1) == y).mean() > 0.6
    # A probe does not disturb the live stream.
    assert np.array_equal(world.step(all_none(world)).obs, twin.step(all_none(twin)).obs)


# ---- metrics ----------------------------------------------------------------------------


def test_perfect_predictions_give_f1_one(make_world):
    # Prepare
    world = make_world(8, seed=0)
    # Execute
    _run(world, 120, oracle)
    m = world.task_metrics()
    # Assert
    assert m["task/events_seen"] > 0
    assert m["task/f1"] == 1.0 and m["task/precision"] == 1.0 and m["task/recall"] == 1.0
    assert m["task/detect_coverage"] == 1.0
    assert all(k.startswith("task/") and np.isfinite(v) for k, v in m.items())


def test_all_none_predictions_give_recall_zero(make_world):
    # Prepare
    world = make_world(8, seed=0)
    # Execute
    _run(world, 120, all_none)
    m = world.task_metrics()
    # Assert
    assert m["task/events_seen"] > 0
    assert m["task/recall"] == 0.0 and m["task/f1"] == 0.0
    assert m["task/precision"] == 1.0  # no report, no false alarm
    assert m["task/events_detected"] == 0 and m["task/detect_latency_s"] > 0
    assert m["task/score"] == 0.0


def test_detection_counts_and_latency_by_hand():
    # Prepare: event 0 (fire, appears tick 2, clears 20), event 1 (river garbage, tick 4 to 6).
    log = [EventRecord(0, 0, 1, 2, 20), EventRecord(1, 1, 3, 4, 6)]
    m = PatrolMetrics(tick_s=0.5)
    true = np.array([1, 3, 0])
    ids = np.array([0, 1, -1])
    # Execute
    m.observed(5, ids)
    m.scored(5, np.array([2, 0, 0]), true, ids)  # wrong class: FP + FN; miss: FN
    m.scored(8, np.array([1, 0, 4]), true, ids)  # hit: TP; miss: FN; false alarm: FP
    s = m.summary(log, now_tick=10)
    # Assert
    assert (m.tp, m.fp, m.fn) == (1, 2, 3)
    assert s["task/precision"] == pytest.approx(1 / 3)
    assert s["task/recall"] == pytest.approx(1 / 4)
    assert s["task/f1"] == pytest.approx(2 / (2 + 2 + 3))
    # event 0 detected at tick 8: 3.0 s; event 1 never: its lifetime 2 ticks = 1.0 s.
    assert s["task/detect_latency_s"] == pytest.approx(2.0)
    assert s["task/events_seen"] == 2 and s["task/events_detected"] == 1
