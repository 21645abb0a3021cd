"""PyBullet side of the drone patrol: rotor-level quadrotors, their controller, contacts, markers.

The only module of ``envs`` that imports pybullet (``physics_pool`` runs several of these
``DronePhysics``, one per process, for large swarms). Each world owns one ``p.DIRECT`` client and
passes ``physicsClientId`` on every call, so many worlds can live in one process.

Model (one rigid body per drone; REFERENCES.md, Quadrotor: Crazyflie 2.x identification):

- Body: a 92 x 92 x 30 mm box collision shape, m = 0.027 kg, inertia diag(1.4e-5, 1.4e-5,
  2.17e-5) kg m^2. PyBullet integrates the rigid-body dynamics, gravity and contacts; each drone
  is a maximal-coordinate body (a plain btRigidBody, half the step cost of a one-link
  btMultiBody, measured here).
- Rotors: four in an X, rotor ``i`` at ``L / sqrt(2) * (sx_i, sy_i)`` (L = 0.0397 m arm) with
  (sx, sy) = front-right (+, -), back-right (-, -), back-left (-, +), front-left (+, +); diagonal
  pairs spin the same way (0 and 2 counter-clockwise seen from above, 1 and 3 clockwise).
  Rotor ``i`` at speed ``w_i`` (rpm) pushes ``f_i = kf w_i^2`` along the body z axis and twists
  the body by ``-/+ km w_i^2`` about it (against its spin). The wrench in the body frame is
  ``(T, tau_x, tau_y, tau_z) = MIXER @ f`` (rows: sum f_i, sum y_i f_i, -sum x_i f_i,
  sum -spin_i (km/kf) f_i). Rotor speeds are clipped to [0, MAX_RPM], MAX_RPM = the speed at
  which four rotors lift 2.25 times the weight. Not modelled: motor lag, rotor inertia and
  gyroscopic moments, ground effect, downwash between drones.
- Drag: linear body drag ``F_b = -C v_b`` (v_b the velocity in the body frame), with
  C = K_aero * (sum of the four rotor speeds at hover, rad/s): K_aero = (9.1785e-7, 9.1785e-7,
  10.311e-7) kg/rad is Foerster's identified Crazyflie rotor drag (Foerster 2015), which scales
  with the rotor-speed sum; evaluated at hover (rotor speeds stay within ~10% of it in level
  cruise) it gives C = (5.6e-3, 5.6e-3, 6.3e-3) kg/s, i.e. 0.17 g of deceleration at 8 m/s.

Controller: a cascade, vectorised over all drones in numpy (one call per control step for the
whole swarm; no per-drone Python object), in ``cascade``:

1. position -> velocity command: ``KP_POS`` = 1.5 /s times the error, horizontally also at most
   ``sqrt(2 A_BRAKE d)`` (a braking curve, so the tilt-limited drone stops at the point instead
   of overshooting it) and at most ``cfg.speed_mps``; vertically clipped to MAX_CLIMB_MPS up and
   MAX_DESCENT_MPS down.
2. velocity -> acceleration: ``KV`` = 6 /s times the error (KV = 4 KP: the linear position
   cascade x'' + KV x' + KV KP x = 0 is critically damped), plus drag and gravity feed-forward.
   Vertical first (as PX4 allocates): the vertical specific thrust is clipped to [0, 2.25 g],
   the horizontal part gets what is left of the thrust budget and at most ``MAX_TILT_DEG`` = 35
   degrees of tilt, so a drone accelerating sideways climbs at the same rate as one that is not,
   and stacked drones keep their altitude order.
3. acceleration -> desired attitude: body z along the acceleration command, yaw held at 0.
   Collective thrust = m * (vertical command) / cos(current tilt), at most 2.25 m g: vertical
   first again, so while the attitude lags its command the climb rate does not; tilted beyond
   60 degrees (after a collision) only the command's component along body z, none upside down.
4. attitude -> body torques: the geometric attitude error of Lee, Leok & McClamroch (2010),
   ``tau = J (-K_R e_R - K_W omega)``; roll/pitch K_R = 400 /s^2, K_W = 32 /s (natural
   frequency 20 rad/s, damping 0.8), yaw K_R = 100, K_W = 16 (10 rad/s, 0.8).
5. mixer: rotor thrusts ``MIXER^-1 @ (T, tau)``, shifted together when one leaves [0, f_max]
   (attitude before collective thrust), clipped, and turned into rotor speeds.

No integral terms: the model has no unknown steady force (gravity and drag are fed forward), so
at hover each rotor turns at exactly sqrt(m g / 4 kf); an integrator would only add overshoot.

Rates: physics at ``cfg.physics_hz`` (240), control at ``CONTROL_HZ`` = 48 Hz with the rotor
commands held (zero-order hold) over ``physics_hz / 48`` physics steps. PyBullet takes those
inside one ``stepSimulation`` (``numSubSteps``), and an external force or torque stays applied
across the sub-steps (tests/test_physics.py checks it), so a control step costs 4 pybullet calls
per drone: read pose, read velocity, apply force, apply torque (both in the body frame; PyBullet
turns them into world vectors when applied, so thrust and drag are held fixed in the world over
the 21 ms hold); the controller is one numpy pass for the swarm. Measured cost and the speed-up
over a per-drone controller: BENCHMARKS.md, World.

Discrete-time stability: the attitude loop's 20 rad/s is 1/15 of the 301 rad/s control rate
(w_n T = 0.42). Sampled with a zero-order hold, one axis has poles of radius 0.65 (roll, pitch)
and 0.83 (yaw) at 48 Hz, equivalent damping 0.84 and 0.82, and stays stable and damped (> 0.75)
down to the 30 Hz lowest config rate (tests/test_physics.py checks). The velocity loop (6 rad/s)
is 3x slower than the attitude loop, the position loop (1.5 /s) 4x slower again.

Landing: a drone whose target altitude is <= 0 is landing: it aims LAND_MPS / KP_POS below the
ground, so it descends at <= MAX_DESCENT_MPS and touches down at about LAND_MPS. Its first ground
contact while landing stops its rotors (no thrust, no torque) and is not a collision; it stays
down while its target stays <= 0 and takes off when the target rises above 0.

Collisions: contact pairs are read after every control step; a pair that was not in contact at
the previous read counts once (drone-drone, or drone-ground unless the drone is landing). No
tunnelling without CCD at the default speeds: at most 16 m/s closing speed horizontally (6.7 cm
per 240 Hz step, less than the 9.2 cm two boxes overlap over) and 4 m/s vertically (1.7 cm per
step < 3 cm). Bullet resolves a contact the step after it forms, so boxes press a few mm into
each other or the ground (a 3.3 m/s crash: ~2 cm) for a few ms.

Event markers are collision-free visual bodies (no collision shape, mass 0), one per cruise
point and allowed kind, parked underground until their event is active: invisible to the
physics, rendered by the camera sensor.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import numpy as np

try:
    import pybullet as p
except ImportError as exc:  # pragma: no cover - pybullet is a core dependency
    raise ImportError(
        "the drone patrol world needs pybullet: pip install 'yan-swarm' (or pip install pybullet)"
    ) from exc

from envs.drone_patrol.config import EVENT_CLASSES, DronePatrolConfig
from envs.drone_patrol.layout import PatrolMap

GRAVITY = 9.81
CONTROL_HZ = 48  # REFERENCES.md, Quadrotor: common control rate (Forster 2015)

# ---- the Crazyflie 2.x (REFERENCES.md, Quadrotor) ----------------------------------------
DRONE_MASS_KG = 0.027
DRONE_HALF_EXTENTS = (0.046, 0.046, 0.015)  # 92 mm motor to motor, ~30 mm tall
DRONE_INERTIA = (1.4e-5, 1.4e-5, 2.17e-5)  # Ixx, Iyy, Izz kg m^2
ARM_M = 0.0397  # centre to rotor axis
KF = 3.16e-10  # N / rpm^2: rotor thrust = KF w^2
KM = 7.94e-12  # N m / rpm^2: rotor drag torque = KM w^2
THRUST_TO_WEIGHT = 2.25
HOVER_RPM = float(np.sqrt(DRONE_MASS_KG * GRAVITY / (4 * KF)))  # ~14.5k
MAX_RPM = float(np.sqrt(THRUST_TO_WEIGHT * DRONE_MASS_KG * GRAVITY / (4 * KF)))
_F_MAX = KF * MAX_RPM**2  # N, largest thrust of one rotor

# Rotor layout (X): front-right, back-right, back-left, front-left; +1 = counter-clockwise.
_ROTOR_XY = ARM_M / np.sqrt(2) * np.array([[1, -1], [-1, -1], [-1, 1], [1, 1]])  # (4, 2)
_SPIN = np.array([1.0, -1.0, 1.0, -1.0])  # (4,)
#: (T, tau_x, tau_y, tau_z) in the body frame = MIXER @ (f_0..f_3) rotor thrusts (N).
MIXER = np.stack([np.ones(4), _ROTOR_XY[:, 1], -_ROTOR_XY[:, 0], -_SPIN * KM / KF])  # (4, 4)
_UNMIX_T = np.linalg.inv(MIXER).T  # (4, 4): rotor thrusts = wrench @ _UNMIX_T

# Linear body drag C (kg/s): Foerster 2015 K_aero (kg/rad) times the hover rotor-speed sum.
_HOVER_RAD_S_SUM = 4 * HOVER_RPM * 2 * np.pi / 60
DRAG_KG_S = np.array([9.1785e-7, 9.1785e-7, 10.311e-7]) * _HOVER_RAD_S_SUM  # (3,)

# ---- controller gains (see the module docstring) -----------------------------------------
KP_POS = 1.5  # 1/s: velocity command per metre of position error
KV = 6.0  # 1/s: KV = 4 KP makes the linear cascade critically damped
A_BRAKE = 4.0  # m/s^2 planned braking: ~60% of g tan(MAX_TILT), margin for the loops' lag
MAX_TILT_DEG = 35.0  # between the Crazyflie firmware's 20 and PX4's 45 (MPC_TILTMAX_AIR)
K_R = np.array([400.0, 400.0, 100.0])  # 1/s^2 attitude stiffness: w_n^2 (20, 20, 10 rad/s)
K_W = np.array([32.0, 32.0, 16.0])  # 1/s rate damping: 2 zeta w_n with zeta = 0.8
MAX_CLIMB_MPS = 3.0  # PX4 default MPC_Z_VEL_MAX_UP
MAX_DESCENT_MPS = 1.0  # PX4 default MPC_Z_VEL_MAX_DN
LAND_MPS = 0.5  # touchdown speed; PX4's MPC_LAND_SPEED default is 0.7
_T_MAX = THRUST_TO_WEIGHT * GRAVITY  # largest specific thrust, m/s^2
_TAN_TILT = float(np.tan(np.radians(MAX_TILT_DEG)))
_J = np.array(DRONE_INERTIA)  # (3,)
_NEG_J_KR, _J_KW = -_J * K_R, _J * K_W  # (3,) torque per unit attitude error, per unit rate
_DRAG_XY_M = DRAG_KG_S[0] / DRONE_MASS_KG  # 1/s: drag deceleration per m/s, horizontal
_DRAG_DZ_M = (DRAG_KG_S[2] - DRAG_KG_S[0]) / DRONE_MASS_KG  # 1/s: extra along body z

HIDDEN_Z = -50.0  # where inactive markers wait

# (shape, size, rgba, centre height) per event class, for the camera.
_MARKERS: dict[str, tuple[int, tuple[float, ...], tuple[float, ...], float]] = {
    "fire": (p.GEOM_CYLINDER, (1.5, 2.0), (1.0, 0.35, 0.0, 1.0), 1.0),
    "garbage_overflow": (p.GEOM_BOX, (0.6, 0.6, 0.8), (0.45, 0.3, 0.15, 1.0), 0.8),
    "river_garbage": (p.GEOM_BOX, (0.8, 0.5, 0.15), (0.6, 0.6, 0.6, 1.0), 0.15),
    "altitude_limit_sign": (p.GEOM_BOX, (0.6, 0.05, 0.6), (0.9, 0.1, 0.1, 1.0), 2.5),
}


def _substeps(steps: int, physics_hz: int) -> int:
    """Largest divisor of ``steps`` not above physics_hz / CONTROL_HZ (at least 1)."""
    cap = max(1, round(physics_hz / CONTROL_HZ))
    return max(d for d in range(1, cap + 1) if steps % d == 0)


# ---- the model and the controller, pure numpy ---------------------------------------------


# R = I + sum of two signed entries of 2 q q^T per element (x, y, z, w = indices 0..3):
# R00 = 1 - 2(yy + zz), R01 = 2(xy - zw), R02 = 2(xz + yw), R10 = 2(xy + zw), ...
_Q_A = np.array([5, 1, 2, 1, 0, 6, 2, 6, 0])  # flat index into the (4, 4) outer product
_Q_B = np.array([10, 11, 7, 11, 10, 3, 7, 3, 5])
_Q_SA = np.array([-1, 1, 1, 1, -1, 1, 1, 1, -1.0])
_Q_SB = np.array([-1, -1, 1, 1, -1, -1, -1, 1, -1.0])
_EYE9 = np.eye(3).reshape(9)


def quat_to_rot(q: np.ndarray) -> np.ndarray:
    """PyBullet quaternions (N, 4) as (x, y, z, w) -> rotation matrices (N, 3, 3), body to world."""
    qq = (2 * q[:, :, None] * q[:, None, :]).reshape(-1, 16)  # (N, 16) = 2 q q^T
    return (_EYE9 + qq[:, _Q_A] * _Q_SA + qq[:, _Q_B] * _Q_SB).reshape(-1, 3, 3)


def rotor_wrench(rpm: np.ndarray) -> np.ndarray:
    """Rotor speeds (N, 4) rpm -> body-frame (T, tau_x, tau_y, tau_z) (N, 4) in N and N m."""
    return (KF * rpm * rpm) @ MIXER.T


def body_drag(rot: np.ndarray, vel: np.ndarray) -> np.ndarray:
    """Drag force in the body frame (N, 3) of drones with attitude ``rot`` (N, 3, 3) moving at
    world velocity ``vel`` (N, 3)."""
    return -DRAG_KG_S * (vel[:, None, :] @ rot)[:, 0]  # v^T R = (R^T v)^T


def cascade(
    pos: np.ndarray,
    vel: np.ndarray,
    rot: np.ndarray,
    omega: np.ndarray,
    goal: np.ndarray,
    speed: float,
) -> np.ndarray:
    """Rotor speeds (N, 4) rpm that fly every drone toward ``goal`` (N, 3).

    ``pos``, ``vel`` (N, 3) world; ``rot`` (N, 3, 3) body to world; ``omega`` (N, 3) body rates
    (rad/s, body frame); ``speed`` the horizontal speed limit. Written with few numpy calls on
    whole-swarm arrays (no einsum, cross or norm wrappers): below ~100 drones the per-call
    overhead, not the arithmetic, is the cost. The five steps are those of the module docstring.
    """
    z_b = rot[:, :, 2]  # (N, 3) current body z in the world
    v_cmd = _velocity_command(goal - pos, speed)
    acc, fz = _specific_thrust(v_cmd, vel, z_b)
    thrust = _collective_thrust(acc, fz, z_b)
    rot_d_t = _desired_attitude(acc)
    wrench = np.empty((len(pos), 4))  # (T, tau_x, tau_y, tau_z)
    wrench[:, 0] = thrust
    wrench[:, 1:] = _attitude_torques(rot_d_t, rot, omega)
    return _mix(wrench)


def _velocity_command(err: np.ndarray, speed: float) -> np.ndarray:
    """1. position error (N, 3) -> velocity command (N, 3): KP_POS times the error, horizontally
    also within the braking curve and ``speed``, vertically within the climb and descent limits."""
    dist = np.sqrt(err[:, 0] ** 2 + err[:, 1] ** 2)  # (N,)
    v_xy = np.minimum(np.minimum(KP_POS * dist, np.sqrt((2 * A_BRAKE) * dist)), speed)
    v_cmd = err * KP_POS
    v_cmd[:, :2] = err[:, :2] * (v_xy / np.maximum(dist, 1e-9))[:, None]
    v_cmd[:, 2] = np.minimum(np.maximum(v_cmd[:, 2], -MAX_DESCENT_MPS), MAX_CLIMB_MPS)
    return v_cmd


def _specific_thrust(
    v_cmd: np.ndarray, vel: np.ndarray, z_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """2. velocity -> specific thrust (N, 3): P + drag and gravity feed-forward, vertical first.
    Returns it and its vertical part fz (N,)."""
    # World drag / m = R C R^T v / m = (C_xy v + (C_z - C_xy) (z_b . v) z_b) / m.
    vz_b = (z_b * vel).sum(axis=1)  # (N,)
    acc = (KV * v_cmd) - (KV - _DRAG_XY_M) * vel + (_DRAG_DZ_M * vz_b)[:, None] * z_b
    fz = np.minimum(np.maximum(acc[:, 2] + GRAVITY, 0.0), _T_MAX)  # (N,)
    acc[:, 2] = fz
    budget = np.minimum(np.sqrt(_T_MAX**2 - fz * fz), fz * _TAN_TILT)  # (N,)
    norm_xy = np.maximum(np.sqrt(acc[:, 0] ** 2 + acc[:, 1] ** 2), budget) + 1e-12
    acc[:, :2] *= (budget / norm_xy)[:, None]
    return acc, fz


def _collective_thrust(acc: np.ndarray, fz: np.ndarray, z_b: np.ndarray) -> np.ndarray:
    """3a. Collective thrust (N,) in N: the vertical command over the current tilt's cosine
    (vertical first again: while the attitude lags its command, the climb rate does not), at
    most T_MAX. Tilted beyond 60 degrees (after a collision) that would boost sideways or
    downwards; then only the command's component along the body z axis, none when upside down."""
    cos_tilt = z_b[:, 2]  # (N,)
    upright = cos_tilt > 0.5
    return DRONE_MASS_KG * np.where(
        upright,
        np.minimum(fz / np.where(upright, cos_tilt, 1.0), _T_MAX),
        np.maximum((acc * z_b).sum(axis=1), 0.0),
    )


def _desired_attitude(acc: np.ndarray) -> np.ndarray:
    """3b. Desired attitude, as R_d^T (N, 3, 3) (rows = desired body axes in the world): body z
    along the thrust ``acc`` (nudged up by 1e-9 in place), yaw 0, so y_d = z_d x (1, 0, 0) / k
    and x_d = y_d x z_d, in closed form. A zero command (free fall) keeps the level attitude."""
    acc[:, 2] += 1e-9
    z_d = acc / np.sqrt((acc * acc).sum(axis=1))[:, None]  # (N, 3)
    k = np.sqrt(z_d[:, 1] ** 2 + z_d[:, 2] ** 2)  # (N,) >= cos(MAX_TILT)
    rot_d_t = np.empty((len(acc), 3, 3))  # rows = desired body axes in the world = R_d^T
    rot_d_t[:, 0, 0] = k
    rot_d_t[:, 0, 1:] = z_d[:, 1:] * (-z_d[:, 0] / k)[:, None]
    rot_d_t[:, 1, 0] = 0.0
    rot_d_t[:, 1, 1] = z_d[:, 2] / k
    rot_d_t[:, 1, 2] = -z_d[:, 1] / k
    rot_d_t[:, 2] = z_d
    return rot_d_t


def _attitude_torques(rot_d_t: np.ndarray, rot: np.ndarray, omega: np.ndarray) -> np.ndarray:
    """4. attitude error (Lee et al. 2010): e_R = vee(R_d^T R - R^T R_d) / 2 -> body torques
    (N, 3)."""
    m = (rot_d_t @ rot).reshape(len(rot), 9)  # (N, 9) = R_d^T R, row-major
    e_r = 0.5 * (m[:, [7, 2, 3]] - m[:, [5, 6, 1]])  # (M21 - M12, M02 - M20, M10 - M01) / 2
    return _NEG_J_KR * e_r - _J_KW * omega


def _mix(wrench: np.ndarray) -> np.ndarray:
    """5. mixer: body wrench (N, 4) -> rotor speeds (N, 4) rpm. Rotor thrusts, shifted all four
    together (keeps the torques) when one leaves [0, f_max], then clipped."""
    f = wrench @ _UNMIX_T  # (N, 4)
    f += (np.maximum(-f.min(axis=1), 0.0) - np.maximum(f.max(axis=1) - _F_MAX, 0.0))[:, None]
    return np.sqrt(np.minimum(np.maximum(f, 0.0), _F_MAX) * (1 / KF))


# ---- the PyBullet scene ------------------------------------------------------------------


class DronePhysics:
    def __init__(self, cfg: DronePatrolConfig, pmap: PatrolMap, hosts: list[tuple[int, int]]):
        """``hosts``: the (cruise point, event class) pairs that can occur; one marker each."""
        self.cfg = cfg
        self.pmap = pmap
        self.hosts = hosts
        self.steps_per_tick = max(1, round(cfg.tick_s * cfg.physics_hz))
        self.substeps = _substeps(self.steps_per_tick, cfg.physics_hz)
        self.controls_per_tick = self.steps_per_tick // self.substeps
        self.cid = p.connect(p.DIRECT)
        self.drones: list[int] = []

    def reset(self, start: np.ndarray, attitude: np.ndarray | None = None) -> None:
        """Rebuild the scene with drones at ``start`` (N, 3), at rest, level or at ``attitude``
        (N, 4) quaternions (x, y, z, w); hide every marker. A drone placed on the ground starts
        landed (rotors off until its target rises).

        ``resetSimulation`` rather than moving bodies back: no contact cache survives, so every
        reset replays bit for bit.
        """
        quats = np.tile([0.0, 0.0, 0.0, 1.0], (len(start), 1)) if attitude is None else attitude
        box = self._new_scene()
        self.drones = [
            self._add_drone(box, xyz, quat) for xyz, quat in zip(start, quats, strict=True)
        ]
        self._settle_inertia()
        self._reset_state(start, quats)
        self._land_grounded()
        self._add_markers()

    def _new_scene(self) -> int:
        """An empty simulation with its time step, the ground plane; returns the drone box shape."""
        cid = self.cid
        p.resetSimulation(physicsClientId=cid)
        p.setPhysicsEngineParameter(
            fixedTimeStep=self.substeps / self.cfg.physics_hz,
            numSubSteps=self.substeps,
            physicsClientId=cid,
        )
        plane = p.createCollisionShape(p.GEOM_PLANE, physicsClientId=cid)
        self.ground = p.createMultiBody(0, plane, physicsClientId=cid)
        return int(
            p.createCollisionShape(p.GEOM_BOX, halfExtents=DRONE_HALF_EXTENTS, physicsClientId=cid)
        )

    def _add_drone(self, box: int, xyz: np.ndarray, quat: np.ndarray) -> int:
        """One drone body at ``xyz`` with attitude ``quat``, at rest; returns its body id."""
        cid = self.cid
        # Maximal coordinates: a plain btRigidBody, which steps ~2x faster than a one-link
        # btMultiBody (measured here). Its mass must be passed again with the inertia, or
        # PyBullet sets an infinite inverse mass.
        b = p.createMultiBody(
            DRONE_MASS_KG, box, -1, xyz.tolist(), quat.tolist(),
            useMaximalCoordinates=True, physicsClientId=cid,
        )  # fmt: skip
        p.changeDynamics(
            b,
            -1,
            mass=DRONE_MASS_KG,
            linearDamping=0.0,  # drag is ours (body_drag), not Bullet's velocity decay
            angularDamping=0.0,
            localInertiaDiagonal=DRONE_INERTIA,
            # A resting body must still feel the rotors when it takes off again.
            activationState=p.ACTIVATION_STATE_DISABLE_SLEEPING,
            physicsClientId=cid,
        )
        return int(b)

    def _settle_inertia(self) -> None:
        """The new inertia reaches a rigid body's world-frame inertia tensor only when a step
        integrates it: take one step with nothing acting (bodies at rest, no gravity)."""
        cid = self.cid
        p.setGravity(0, 0, 0, physicsClientId=cid)
        p.stepSimulation(physicsClientId=cid)
        p.setGravity(0, 0, -GRAVITY, physicsClientId=cid)

    def _reset_state(self, start: np.ndarray, quats: np.ndarray) -> None:
        """The swarm's state arrays at rest at ``start``, and the collision counts at zero."""
        n = len(self.drones)
        self._index = {b: i for i, b in enumerate(self.drones)}
        self.pos = np.array(start, dtype=np.float64)  # (N, 3)
        self.vel = np.zeros_like(self.pos)  # (N, 3) world
        self.rot = quat_to_rot(np.asarray(quats, dtype=np.float64))  # (N, 3, 3) body to world
        self.omega = np.zeros_like(self.pos)  # (N, 3) body rates, body frame
        self.rpm = np.zeros((n, 4))  # (N, 4) rotor speeds of the last control step
        self.landing = np.zeros(n, dtype=bool)  # (N,) target altitude <= 0
        self.landed = np.zeros(n, dtype=bool)  # (N,) down with rotors stopped
        self.drone_collisions = 0
        self.ground_collisions = 0

    def _land_grounded(self) -> None:
        """Take the contacts at the start: a drone touching the ground starts landed."""
        p.performCollisionDetection(physicsClientId=self.cid)
        self._contacts = self._contact_pairs()
        for a, b in self._contacts:
            if self.ground in (a, b):
                self.landed[self._index[a if b == self.ground else b]] = True

    def _add_markers(self) -> None:
        """One hidden, collision-free marker body per (cruise point, event class) host."""
        cid = self.cid
        self.markers: dict[tuple[int, int], int] = {}  # (point, class) -> body
        self.shown = np.zeros(self.pmap.n_points, dtype=np.int64)  # (P,) class on display
        shapes = {}
        for name, (geom, size, rgba, _) in _MARKERS.items():
            kw: dict[str, Any]
            if geom == p.GEOM_BOX:
                kw = {"halfExtents": size}
            else:
                kw = {"radius": size[0], "length": size[1]}
            shapes[name] = p.createVisualShape(geom, rgbaColor=rgba, physicsClientId=cid, **kw)
        for pt, cls in self.hosts:
            x, y = self.pmap.points[pt]
            self.markers[(pt, cls)] = p.createMultiBody(
                0,
                -1,
                shapes[EVENT_CLASSES[cls]],
                [float(x), float(y), HIDDEN_Z],
                physicsClientId=cid,
            )

    def show_event(self, point: int, cls: int) -> None:
        """Display class ``cls`` (0 = nothing) at a cruise point."""
        old = int(self.shown[point])
        if old == cls:
            return
        x, y = self.pmap.points[point]
        if old:
            p.resetBasePositionAndOrientation(
                self.markers[(point, old)],
                [float(x), float(y), HIDDEN_Z],
                [0, 0, 0, 1],
                physicsClientId=self.cid,
            )
        if cls:
            z = _MARKERS[EVENT_CLASSES[cls]][3]
            p.resetBasePositionAndOrientation(
                self.markers[(point, cls)],
                [float(x), float(y), z],
                [0, 0, 0, 1],
                physicsClientId=self.cid,
            )
        self.shown[point] = cls

    def advance(self, target: np.ndarray) -> np.ndarray:
        """Fly one tick toward ``target`` (N, 3); returns positions after each control step
        (K, N, 3), K = controls_per_tick. A target altitude <= 0 means: land."""
        self.landing = target[:, 2] <= 0.0
        self.landed &= self.landing  # a raised target restarts the rotors
        goal = target.astype(np.float64, copy=True)
        goal[self.landing, 2] = -LAND_MPS / KP_POS  # touch down at ~LAND_MPS
        traj = np.empty((self.controls_per_tick, len(self.drones), 3))
        for k in range(self.controls_per_tick):
            rpm = self._control(goal)
            rpm[self.landed] = 0.0
            self.rpm = rpm
            self._apply(rpm)
            p.stepSimulation(physicsClientId=self.cid)
            self._read()
            traj[k] = self.pos
            self._count_contacts()
        return traj

    def _control(self, goal: np.ndarray) -> np.ndarray:
        """Rotor speeds (N, 4) for the coming control step (the bench swaps this for a loop)."""
        return cascade(self.pos, self.vel, self.rot, self.omega, goal, self.cfg.speed_mps)

    def _apply(self, rpm: np.ndarray) -> None:
        """Rotor thrust, drag and rotor torques of every flying drone, in its body frame; held by
        PyBullet over the sub-steps of the next ``stepSimulation``."""
        wrench = rotor_wrench(rpm)  # (N, 4)
        force = body_drag(self.rot, self.vel)  # (N, 3) body frame
        force[:, 2] += wrench[:, 0]
        cid, link, origin = self.cid, p.LINK_FRAME, (0.0, 0.0, 0.0)
        apply_f, apply_t = p.applyExternalForce, p.applyExternalTorque
        flying = ~self.landed
        bodies = np.asarray(self.drones)[flying].tolist() if not flying.all() else self.drones
        # Positional arguments: keyword parsing is a measurable share of a call this cheap.
        for b, f, t in zip(
            bodies, force[flying].tolist(), wrench[flying, 1:].tolist(), strict=True
        ):
            apply_f(b, -1, f, origin, link, cid)
            apply_t(b, -1, t, link, cid)

    def _read(self) -> None:
        """Pose and velocity of every drone from PyBullet (2 calls per drone)."""
        cid, n = self.cid, len(self.drones)
        get_pose, get_vel = p.getBasePositionAndOrientation, p.getBaseVelocity
        # fromiter over the flattened tuples: 4x faster than np.array on nested tuples.
        pose = [get_pose(b, cid) for b in self.drones]  # N x ((x, y, z), (qx, qy, qz, qw))
        pose_flat = chain.from_iterable(chain.from_iterable(pose))
        pq = np.fromiter(pose_flat, np.float64, 7 * n).reshape(n, 7)
        vel = [get_vel(b, cid) for b in self.drones]  # N x ((vx, vy, vz), (wx, wy, wz)) world
        vel_flat = chain.from_iterable(chain.from_iterable(vel))
        vw = np.fromiter(vel_flat, np.float64, 6 * n).reshape(n, 6)
        self.pos = pq[:, :3]
        self.rot = quat_to_rot(pq[:, 3:])
        self.vel = vw[:, :3]
        self.omega = (vw[:, None, 3:] @ self.rot)[:, 0]  # (R^T omega_world)^T

    def _contact_pairs(self) -> set[tuple[int, int]]:
        now = {(c[1], c[2]) for c in p.getContactPoints(physicsClientId=self.cid)}
        return {(min(a, b), max(a, b)) for a, b in now}

    def _count_contacts(self) -> None:
        now = self._contact_pairs()
        index, ground = self._index, self.ground
        for a, b in now:
            i = index.get(a if b == ground else b, -1) if ground in (a, b) else -1
            if i >= 0 and self.landing[i]:  # touchdown: a landing drone stops its rotors
                self.landed[i] = True
        for a, b in now - self._contacts:
            if a in index and b in index:
                self.drone_collisions += 1
            elif ground in (a, b) and not self.landing[index[a if b == ground else b]]:
                self.ground_collisions += 1
        self._contacts = now

    def close(self) -> None:
        if self.cid >= 0:
            p.disconnect(physicsClientId=self.cid)
            self.cid = -1
