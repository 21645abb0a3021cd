"""Rotor-level quadrotor physics of the drone patrol, flown in real PyBullet (no mocks).

Tolerances, each stated where it is asserted: hover altitude within 5 cm for 10 s after a kicked
start, hover rotor speeds within 1% of sqrt(m g / 4 kf); a 20 m waypoint within 0.5 m in < 6 s
with < 0.3 m overshoot; a 6 m climb within 0.2 m in < 4 s; tilt < 45 degrees in cruise; speed
limits within 2%; boxes interpenetrate by < 3 mm in a slow collision, < 5 mm in a 0.5 m/s
touchdown, < 2.5 cm in a 3.3 m/s crash (the top face stays above the ground); landing is no
collision.
"""

from __future__ import annotations

import numpy as np
import pytest

from envs.drone_patrol.config import DronePatrolConfig

p = pytest.importorskip("pybullet")

from envs.drone_patrol.layout import build_map  # noqa: E402
from envs.drone_patrol.physics import (  # noqa: E402
    ARM_M,
    DRONE_HALF_EXTENTS,
    DRONE_INERTIA,
    DRONE_MASS_KG,
    GRAVITY,
    HOVER_RPM,
    K_R,
    K_W,
    KF,
    KM,
    MAX_CLIMB_MPS,
    MAX_DESCENT_MPS,
    MAX_RPM,
    THRUST_TO_WEIGHT,
    DronePhysics,
    rotor_wrench,
)

HALF_Z = DRONE_HALF_EXTENTS[2]
CONTROL_DT = 1 / 48


@pytest.fixture
def make_physics():
    made: list[DronePhysics] = []

    def _make(start, attitude=None, **cfg) -> DronePhysics:
        """Physics for drones at ``start`` (N, 3), ``attitude`` (N, 3) roll-pitch-yaw or level;
        by default one control step per tick."""
        c = DronePatrolConfig(**({"tick_s": CONTROL_DT} | cfg))
        phys = DronePhysics(c, build_map(c, np.random.default_rng(0)), [])
        quats = (
            None if attitude is None else np.array([p.getQuaternionFromEuler(a) for a in attitude])
        )
        phys.reset(np.array(start, dtype=np.float64), quats)
        made.append(phys)
        return phys

    yield _make
    for phys in made:
        phys.close()


def fly(phys: DronePhysics, target, seconds: float, log=None) -> np.ndarray:
    """Hold ``target`` (N, 3) for ``seconds``; positions after every control step (T, N, 3).
    ``log(phys)`` is called after each tick."""
    target = np.array(target, dtype=np.float64)
    out = []
    for _ in range(round(seconds / phys.cfg.tick_s)):
        out.append(phys.advance(target))
        if log is not None:
            log(phys)
    return np.concatenate(out)


def tilt_deg(phys: DronePhysics) -> np.ndarray:
    return np.degrees(np.arccos(np.clip(phys.rot[:, 2, 2], -1.0, 1.0)))  # (N,)


# ---- the model, by hand --------------------------------------------------------------------


@pytest.mark.numerics
def test_rotor_wrench_by_hand():
    # Prepare: rotor 0 is front-right (+a, -a), counter-clockwise; a = L / sqrt(2).
    a = ARM_M / np.sqrt(2)
    w = 20_000.0
    one = np.array([[w, 0.0, 0.0, 0.0]])
    hover = np.full((1, 4), HOVER_RPM)
    # Execute
    t_one, t_hover = rotor_wrench(one)[0], rotor_wrench(hover)[0]
    # Assert: the mixer matmul against the formula; float64 rounding of 4-term sums is ~1e-16
    # relative (torques at hover cancel to ~1e-19 N m), far inside both tolerances
    f = KF * w * w
    np.testing.assert_allclose(t_one, [f, -a * f, -a * f, -KM * w * w], rtol=1e-12)
    np.testing.assert_allclose(t_hover, [DRONE_MASS_KG * GRAVITY, 0, 0, 0], atol=1e-15)
    assert abs(HOVER_RPM / 14_468 - 1) < 1e-3  # REFERENCES.md: ~14.5k
    assert abs(4 * KF * MAX_RPM**2 / (THRUST_TO_WEIGHT * DRONE_MASS_KG * GRAVITY) - 1) < 1e-12


@pytest.mark.parametrize("control_hz", [48, 30])
def test_attitude_loop_stays_damped_when_sampled(control_hz):
    # Prepare: one axis, theta'' = u held over a control period T (zero-order hold), u = -K_R
    # theta - K_W theta'. Exact discretisation: x+ = (A - B K) x; designed damping 0.8.
    t = 1 / control_hz
    a = np.array([[1, t], [0, 1]])
    b = np.array([[t * t / 2], [t]])
    for kr, kw in zip(K_R, K_W, strict=True):
        # Execute
        poles = np.linalg.eigvals(a - b @ np.array([[kr, kw]])).astype(complex)
        s = np.log(poles) / t  # equivalent continuous poles
        # Assert: stable, and the sampling (48 Hz, or the 30 Hz config floor) has not eroded
        # the damping (it would fall toward 0 as w_n T grows toward instability).
        assert np.abs(poles).max() < 0.9
        assert np.all(-s.real / np.abs(s) > 0.75)


def test_external_force_and_torque_are_held_over_the_substeps_in_the_body_frame(make_physics):
    # Prepare: a drone rolled 90 degrees (body z = world -y), rotors 1 and 3 faster than 0 and 2:
    # a pure yaw torque about body z plus the thrust. If PyBullet cleared the forces after the
    # first of the 5 sub-steps, the speed gained would be 1/5 of this; if it applied them in
    # the world frame, they would point along world z.
    phys = make_physics([[0.0, 0.0, 5.0]], attitude=[[np.pi / 2, 0, 0]])
    assert phys.substeps == 5
    p.setGravity(0, 0, 0, physicsClientId=phys.cid)
    rpm = np.array([[13_000.0, 16_000.0, 13_000.0, 16_000.0]])
    thrust, _, _, yaw = rotor_wrench(rpm)[0]
    # Execute: one control step, forces applied once.
    phys._apply(rpm)
    p.stepSimulation(physicsClientId=phys.cid)
    phys._read()
    # Assert
    np.testing.assert_allclose(phys.vel[0], [0, -thrust / DRONE_MASS_KG * CONTROL_DT, 0], atol=1e-6)
    omega_world = phys.rot[0] @ phys.omega[0]
    np.testing.assert_allclose(
        omega_world, [0, -yaw / DRONE_INERTIA[2] * CONTROL_DT, 0], rtol=1e-3, atol=1e-6
    )


# ---- flight ---------------------------------------------------------------------------------


def test_hover_holds_altitude_at_hover_rotor_speed(make_physics):
    # Prepare: start 0.5 m low and kicked into a 5 rad/s roll.
    phys = make_physics([[0.0, 0.0, 5.5]])
    p.resetBaseVelocity(phys.drones[0], [0, 0, 0], [5, 0, 0], physicsClientId=phys.cid)
    phys._read()
    target = [[0.0, 0.0, 6.0]]
    # Execute: 2 s to settle, then 10 s of hover.
    settle = fly(phys, target, 2.0)
    hold = fly(phys, target, 10.0)
    # Assert
    assert settle[:, 0, 2].max() < 6.05  # no overshoot past the hold band
    assert np.abs(hold[:, 0, 2] - 6.0).max() < 0.05  # |z - z_ref| < 5 cm over 10 s
    assert np.hypot(hold[:, 0, 0], hold[:, 0, 1]).max() < 0.05  # and no drift sideways
    np.testing.assert_allclose(phys.rpm[0], HOVER_RPM, rtol=0.01)  # all four within 1%


def test_reaches_a_waypoint_20_m_away_without_overshoot(make_physics):
    # Prepare: a diagonal leg (both axes of the X frame), 20 m at 8 m/s, altitude 6 m.
    phys = make_physics([[0.0, 0.0, 6.0]])
    goal = np.array([12.0, 16.0, 6.0])
    tilt, speed = [], []
    # Execute
    traj = fly(
        phys, [goal], 8.0,
        lambda ph: (tilt.append(tilt_deg(ph)[0]), speed.append(np.hypot(*ph.vel[0, :2]))),
    )[:, 0]  # fmt: skip
    # Assert
    dist = np.linalg.norm(traj - goal, axis=1)
    t_reach = (np.argmax(dist < 0.5) + 1) * CONTROL_DT
    assert dist.min() < 0.5 and t_reach < 6.0  # within 0.5 m in < 6 s
    along = traj[:, :2] @ (goal[:2] / 20.0)  # metres along the leg
    assert along.max() < 20.3  # overshoot < 0.3 m
    assert dist[-1] < 0.05  # and it stays there
    assert 7.5 < max(speed) <= 8.0 * 1.02  # reaches cruise speed, keeps the limit
    assert np.abs(traj[:, 2] - 6.0).max() < 0.2  # altitude held while cruising
    assert max(tilt) < 45.0  # attitude bounded


def test_climbs_6_m_at_the_climb_limit_and_descends_at_the_descent_limit(make_physics):
    # Prepare
    phys = make_physics([[0.0, 0.0, 6.0]])
    vz: list[float] = []
    # Execute
    up = fly(phys, [[0, 0, 12.0]], 5.0, lambda ph: vz.append(ph.vel[0, 2]))[:, 0, 2]
    down = fly(phys, [[0, 0, 6.0]], 8.0, lambda ph: vz.append(ph.vel[0, 2]))[:, 0, 2]
    # Assert
    t_up = (np.argmax(np.abs(up - 12.0) < 0.2) + 1) * CONTROL_DT
    assert np.abs(up - 12.0).min() < 0.2 and t_up < 4.0  # 6 m -> 12 m within 0.2 m in < 4 s
    assert up.max() < 12.2 and down.min() > 5.8  # no overshoot beyond 0.2 m
    assert max(vz) <= MAX_CLIMB_MPS * 1.02 and min(vz) >= -MAX_DESCENT_MPS * 1.02
    assert abs(down[-1] - 6.0) < 0.05


def test_a_target_below_ground_lands_without_collision_and_stays_down(make_physics):
    # Prepare
    phys = make_physics([[0.0, 0.0, 3.0]])
    vz: list[float] = []
    # Execute: land (target 5 m underground, 2 m aside), wait, then take off again.
    landing = fly(phys, [[2.0, 0.0, -5.0]], 6.0, lambda ph: vz.append(ph.vel[0, 2]))[:, 0]
    rpm_down, landed = phys.rpm.copy(), bool(phys.landed[0])
    resting = fly(phys, [[2.0, 0.0, -5.0]], 3.0)[:, 0]
    takeoff = fly(phys, [[2.0, 0.0, 2.0]], 4.0)[:, 0]
    # Assert
    assert min(vz) >= -MAX_DESCENT_MPS * 1.02
    # Never into the ground: Bullet resolves a contact one 240 Hz step after it forms, so a
    # 0.5 m/s touchdown presses the box ~4 mm in for a moment.
    assert landing[:, 2].min() >= HALF_Z - 0.005
    assert landed and np.all(rpm_down == 0.0)  # rotors stopped on touchdown
    assert np.abs(resting[:, 2] - HALF_Z).max() < 0.003  # stays on the ground
    assert np.linalg.norm(resting[-1, :2] - [2.0, 0.0]) < 0.1  # where it was sent
    assert abs(takeoff[-1, 2] - 2.0) < 0.05  # a raised target restarts the rotors
    assert phys.ground_collisions == 0 and phys.drone_collisions == 0


def test_flying_into_the_ground_is_a_collision_and_no_drone_goes_through_it(make_physics):
    # Prepare: one drone told to hold 5 mm up (inside its own half height; not a landing), one
    # upside down at 0.6 m: it falls and hits the ground at ~3.3 m/s.
    phys = make_physics([[0.0, 0.0, 1.0], [3.0, 0.0, 0.6]], attitude=[[0, 0, 0], [np.pi, 0, 0]])
    # Execute
    traj = fly(phys, [[0.0, 0.0, 0.005], [3.0, 0.0, 0.6]], 4.0)
    # Assert
    assert phys.ground_collisions == 2  # one each; resting on the ground does not count again
    assert traj[:, 0, 2].min() >= HALF_Z - 0.003
    # Bullet resolves a contact one 240 Hz step after it forms: the 3.3 m/s impact presses the
    # box ~2 cm in for a few ms (centre at -5 mm): its top face stays above the plane.
    assert traj[:, 1, 2].min() > -0.01
    assert np.all(traj[-1, :, 2] > HALF_Z - 0.003)


def test_two_drones_sent_to_one_point_collide_but_do_not_pass_through(make_physics):
    # Prepare: head on, 6 m apart, 1 cm apart in height, both sent to the same point.
    phys = make_physics([[-3.0, 0.0, 5.0], [3.0, 0.0, 5.01]])
    gap, centres = [], []

    def log(ph: DronePhysics) -> None:
        near = p.getClosestPoints(ph.drones[0], ph.drones[1], 0.5, physicsClientId=ph.cid)
        gap.append(min((c[8] for c in near), default=0.5))  # < 0: penetration depth
        centres.append(np.linalg.norm(ph.pos[0] - ph.pos[1]))

    # Execute
    traj = fly(phys, [[0.0, 0.0, 5.0], [0.0, 0.0, 5.0]], 6.0, log)
    # Assert
    assert phys.drone_collisions >= 1  # the contact is counted
    assert min(gap) > -0.003  # boxes interpenetrate by < 3 mm
    # Closer than 30 mm, the boxes' inscribed 15 mm spheres would overlap: passed through.
    assert min(centres) >= 2 * HALF_Z
    assert np.all(np.sign(traj[:, 0, 0] - traj[:, 1, 0]) == -1)  # still on their own sides
    assert traj[:, :, 2].min() > 4.0  # neither was knocked down


def test_same_start_and_targets_replay_bit_for_bit(make_physics):
    # Prepare: four drones crossing paths, two of them through one point, tick 0.5 s.
    start = [[-4.0, 0.0, 5.0], [4.0, 0.0, 5.0], [0.0, -4.0, 4.0], [0.0, 4.0, 6.0]]
    target = [[0.0, 0.0, 5.0], [0.0, 0.0, 5.0], [0.0, 6.0, 6.0], [0.0, -6.0, 4.0]]
    phys = make_physics(start, tick_s=0.5)
    # Execute
    first = fly(phys, target, 6.0)
    hits = phys.drone_collisions
    phys.reset(np.array(start))
    again = fly(phys, target, 6.0)
    # Assert
    assert hits >= 1 and phys.drone_collisions == hits
    assert np.array_equal(first, again)


@pytest.mark.parametrize("patrol", ["zones", "shared"])
def test_a_perfect_observer_obeys_every_sign_and_never_collides(patrol: str) -> None:
    # A drone that recognises every sign the moment it sees it must never pass one below the
    # limit: it flies onto the sign's point and climbs there before going on, with the rotor
    # model's real braking distance. Seed 1 has a sign appear under a drone leaving its point
    # (tick 502), the case the rule "a sign counts once it was there a tick earlier" is for.
    from envs.drone_patrol.world import DronePatrolWorld

    world = DronePatrolWorld(DronePatrolConfig(patrol=patrol), n_agents=8, seed=1)
    world.reset()
    for _ in range(520):
        world.step(world.true_classes())
    m = world.task_metrics()
    world.close()
    assert m["task/sign_passages"] >= 20
    assert m["task/altitude_violations"] == 0
    assert m["task/collisions"] == 0
    assert m["task/f1"] == 1.0
