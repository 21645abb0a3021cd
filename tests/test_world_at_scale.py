"""What the drone patrol does differently for large swarms gives the plain forms' results bit for
bit: the physics split over processes (envs/drone_patrol/physics_pool.py), and the world's
visit and nearest-point tests over the nearby (drone, point) pairs only (world.py)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from envs.drone_patrol.config import DronePatrolConfig

pytest.importorskip("pybullet")


def _fly(world, ticks: int, seed: int = 0) -> tuple[str, dict]:
    """Digest of everything the world produces over `ticks` noisy-oracle ticks (sign climbs,
    false reports), and its final task metrics."""
    rng = np.random.default_rng(seed)
    h = hashlib.sha256(world.reset().tobytes())
    for _ in range(ticks):
        pred = world.true_classes().copy()
        flip = rng.random(world.n_agents) < 0.2
        pred[flip] = rng.integers(0, world.n_classes, int(flip.sum()))
        step = world.step(pred)
        for a in (step.obs, step.labels, world.physics.pos, world.physics.vel):
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest(), world.task_metrics()


@pytest.mark.parametrize("workers", [2, 4])
def test_physics_in_worker_processes_replays_one_process_bit_for_bit(make_world, workers) -> None:
    # Prepare: 12 drones, signs and departures (a landing is a ground contact), as the default
    # scenario; one world with one PyBullet client, one split over processes by zone.
    cfg = {
        "label_fraction": 0.5,
        "departures": [{"agent": 5, "at_s": 4.0}],
        "events": {
            "fire": {"zones": ["forest"], "rate_per_min": 6.0},
            "altitude_limit_sign": {"zones": ["industrial"], "rate_per_min": 6.0},
        },
    }
    one = make_world(12, seed=3, **cfg)
    split = make_world(12, seed=3, physics_workers=workers, **cfg)
    # Execute
    a, metrics_a = _fly(one, 40)
    b, metrics_b = _fly(split, 40)
    # Assert
    assert len(split.physics.workers) == workers - 1
    assert a == b
    assert metrics_a == metrics_b
    assert metrics_a["task/sign_passages"] > 0  # the climbs were exercised


def test_physics_workers_close_their_processes(make_world) -> None:
    world = make_world(8, physics_workers=2)
    procs = [w.proc for w in world.physics.workers]
    world.close()
    assert all(p.poll() is not None for p in procs)


def test_a_drone_near_the_line_between_workers_is_an_error(make_world) -> None:
    world = make_world(8, physics_workers=2)
    traj = np.full((2, 8, 3), 50.0)
    traj[1, 3, 0] = 0.2  # within BOUNDARY_M of x = 0
    with pytest.raises(RuntimeError, match="physics_workers: 1"):
        world.physics._check_apart(traj)


@pytest.mark.parametrize(
    "cfg", [{"patrol": "shared"}, {"sensor": "camera"}], ids=["shared routes", "camera"]
)
def test_physics_workers_need_zone_patrol_and_features(cfg) -> None:
    with pytest.raises(ValueError, match="patrol: zones and sensor: features"):
        DronePatrolConfig(physics_workers=2, **cfg)


def test_sparse_visits_match_the_dense_test_every_tick(make_world) -> None:
    # Prepare: many drones per point, so discs are entered and left often.
    world = make_world(40, seed=1, departures=[{"agent": 2, "at_s": 3.0}])
    world.reset()
    rng = np.random.default_rng(0)
    for _ in range(30):
        # Execute
        world.step(rng.integers(0, world.n_classes, world.n_agents))
        # Assert: the pairs kept equal the dense (N, P) disc test of the last position
        dense = world._over_points(world.physics.pos[None])[0] & world.patrol.active[:, None]
        assert np.array_equal(world._over_keys, np.flatnonzero(dense))


def test_box_pairs_are_the_dense_box_test(make_world) -> None:
    # Prepare: a scaled world (1,000 points), boxes of every size, some edges exactly on a
    # point's coordinates (edges are included), some boxes empty or inverted.
    world = make_world(8, seed=4, area_m=1460.0, cruise_points_per_zone=250, routes_per_zone=83)
    pts = world.map.points
    rng = np.random.default_rng(1)
    lo = np.concatenate([rng.uniform(-800, 800, (400, 2)), pts[rng.integers(0, 1000, 50)]])
    hi = lo + np.concatenate([rng.uniform(-5, 60, (400, 2)), np.zeros((50, 2))])
    dense = (
        (pts[None, :, 0] >= lo[:, None, 0])
        & (pts[None, :, 0] <= hi[:, None, 0])
        & (pts[None, :, 1] >= lo[:, None, 1])
        & (pts[None, :, 1] <= hi[:, None, 1])
    )  # (N, P)
    # Execute
    keys = world._box_pairs(lo, hi)
    # Assert: the same pairs, drone by drone and point by point (np.nonzero's order)
    assert np.array_equal(keys, np.flatnonzero(dense))
    assert dense[:400].sum() > 100  # the random boxes hold points
    assert dense[400:].sum() >= 50  # each degenerate box holds its own point


def test_nearest_point_matches_the_dense_argmin(make_world) -> None:
    # Prepare: drones anywhere, some exactly between two points (a tie: the lower index wins)
    world = make_world(4, seed=2)
    pts = world.map.points
    rng = np.random.default_rng(0)
    xy = np.concatenate(
        [
            rng.uniform(-80, 80, (300, 2)),  # most see nothing
            pts[rng.integers(0, len(pts), 100)] + rng.normal(0, 4, (100, 2)),  # near a point
            (pts[[0, 2]] + pts[[1, 3]]) / 2,  # equidistant from two points
        ]
    )
    d = np.linalg.norm(xy[:, None] - pts[None], axis=-1)
    want = d.argmin(axis=1)
    seen = d.min(axis=1) < world.cfg.sensing_radius_m
    # Execute
    nearest, dmin = world._nearest_point(xy)
    # Assert: where a point is in view, the same point at the same distance; elsewhere none
    assert seen.sum() > 50
    assert np.array_equal(nearest[seen], want[seen])
    assert np.array_equal(dmin[seen], d.min(axis=1)[seen])
    assert np.all(dmin[~seen] >= world.cfg.sensing_radius_m)
    # no drone near any point: nothing seen
    nearest, dmin = world._nearest_point(np.full((3, 2), 1e4))
    assert np.array_equal(nearest, [0, 0, 0]) and np.all(np.isinf(dmin))
