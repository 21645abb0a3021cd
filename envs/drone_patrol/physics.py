"""PyBullet side of the drone patrol: bodies, the position controller, contacts, event markers.

The only module of ``envs`` that imports pybullet. Each world owns one ``p.DIRECT`` client and
passes ``physicsClientId`` on every call, so many worlds can live in one process.

Drones are Crazyflie-class rigid boxes (0.027 kg, 92 x 92 x 30 mm, the public inertia values)
pushed by ``applyExternalForce`` at the centre of mass: a cascaded PD position controller (a
speed-limited velocity command from the position error, then an acceleration from the velocity
error, plus gravity compensation) whose total specific thrust is clipped to thrust-to-weight
2.25 (vertical part first) and cannot point downwards. Because the controller works in acceleration
(``force = m * a``), the light body is as steady as a heavy one; the real mass matters only in
contacts. The later rotor-physics issue replaces the force with four rotor thrusts and torques.

Control runs at ``CONTROL_HZ`` = 48 Hz, the common quadrotor control rate, with the force held
(zero-order hold) over ``physics_hz / 48`` physics steps that PyBullet takes inside one
``stepSimulation`` call (``numSubSteps``; an external force stays applied across the sub-steps).
That is 5x fewer Python calls than re-applying the force every 240 Hz step, which is what keeps a
tick cheap. A tick is rounded to whole physics steps.

Collisions: contact pairs are read after every control step; a pair that was not in contact at
the previous read counts once (drone-drone or drone-ground).

Event markers are collision-free visual bodies (no collision shape, mass 0), one per cruise
point and allowed kind, parked underground until their event is active: invisible to the
physics, ready for the later camera sensor.
"""

from __future__ import annotations

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
DRONE_MASS_KG = 0.027  # Crazyflie 2.x
DRONE_HALF_EXTENTS = (0.046, 0.046, 0.015)  # 92 mm motor to motor, ~30 mm tall
DRONE_INERTIA = (1.4e-5, 1.4e-5, 2.17e-5)  # Ixx, Iyy, Izz kg m^2 (Crazyflie 2.x)
THRUST_TO_WEIGHT = 2.25  # Crazyflie 2.x
KP_POS = 1.5  # 1/s: velocity command per metre of position error
KV = 6.0  # 1/s: KV = 4 KP makes the cascade critically damped (x'' + KV x' + KV KP x = 0)
MAX_CLIMB_MPS = 3.0  # PX4 default MPC_Z_VEL_MAX_UP
MAX_DESCENT_MPS = 1.0  # PX4 default MPC_Z_VEL_MAX_DN
_T_MAX = THRUST_TO_WEIGHT * GRAVITY  # largest specific thrust, m/s^2
HIDDEN_Z = -50.0  # where inactive markers wait

# (shape, size, rgba, centre height) per event class, for the later camera.
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

    def reset(self, start: np.ndarray) -> None:
        """Rebuild the scene with drones at ``start`` (N, 3), at rest; hide every marker.

        ``resetSimulation`` rather than moving bodies back: no contact cache survives, so every
        reset replays bit for bit.
        """
        cid = self.cid
        p.resetSimulation(physicsClientId=cid)
        p.setGravity(0, 0, -GRAVITY, physicsClientId=cid)
        p.setPhysicsEngineParameter(
            fixedTimeStep=self.substeps / self.cfg.physics_hz,
            numSubSteps=self.substeps,
            physicsClientId=cid,
        )
        plane = p.createCollisionShape(p.GEOM_PLANE, physicsClientId=cid)
        self.ground = p.createMultiBody(0, plane, physicsClientId=cid)
        box = p.createCollisionShape(
            p.GEOM_BOX, halfExtents=DRONE_HALF_EXTENTS, physicsClientId=cid
        )
        self.drones = []
        for xyz in start:
            b = p.createMultiBody(DRONE_MASS_KG, box, -1, xyz.tolist(), physicsClientId=cid)
            p.changeDynamics(
                b,
                -1,
                linearDamping=0.0,
                localInertiaDiagonal=DRONE_INERTIA,
                physicsClientId=cid,
            )
            self.drones.append(b)
        self._drone_set = set(self.drones)
        self.pos = np.array(start, dtype=np.float64)  # (N, 3)
        self.vel = np.zeros_like(self.pos)  # (N, 3)
        self._contacts: set[tuple[int, int]] = set()
        self.drone_collisions = 0
        self.ground_collisions = 0

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

    def _control(self, target: np.ndarray) -> np.ndarray:
        """Forces (N, 3) that steer every drone toward its target (N, 3).

        Written with few, in-place numpy calls: at 16 drones the call overhead, not the
        arithmetic, is the cost, and this runs 48 times per simulated second.
        """
        v = KP_POS * (target - self.pos)  # (N, 3) velocity command
        speed = self.cfg.speed_mps
        v[:, :2] *= (speed / np.maximum(np.hypot(v[:, 0], v[:, 1]), speed))[:, None]
        v[:, 2] = np.minimum(np.maximum(v[:, 2], -MAX_DESCENT_MPS), MAX_CLIMB_MPS)
        thrust = KV * (v - self.vel)  # (N, 3) acceleration command
        # Specific thrust with gravity compensation; rotors push, never pull. Vertical first
        # (as PX4 allocates): the horizontal part gets what is left of the thrust budget, so a
        # drone accelerating sideways climbs at the same rate as one that is not, and drones
        # stacked at one point keep their altitude order.
        fz = np.minimum(np.maximum(thrust[:, 2] + GRAVITY, 0.0), _T_MAX)
        thrust[:, 2] = fz
        budget = np.sqrt(_T_MAX**2 - fz * fz)  # (N,)
        norm_xy = np.maximum(np.hypot(thrust[:, 0], thrust[:, 1]), budget) + 1e-12
        thrust[:, :2] *= (budget / norm_xy)[:, None]
        thrust *= DRONE_MASS_KG
        return thrust

    def advance(self, target: np.ndarray) -> np.ndarray:
        """Fly one tick toward ``target`` (N, 3); returns positions after each control step
        (K, N, 3), K = controls_per_tick."""
        cid, drones = self.cid, self.drones
        apply, frame = p.applyExternalForce, p.WORLD_FRAME
        get_pos, get_vel = p.getBasePositionAndOrientation, p.getBaseVelocity
        traj = np.empty((self.controls_per_tick, len(drones), 3))
        for k in range(self.controls_per_tick):
            force = self._control(target).tolist()
            for b, f, x in zip(drones, force, self.pos.tolist(), strict=True):
                apply(b, -1, f, x, frame, physicsClientId=cid)
            p.stepSimulation(physicsClientId=cid)
            self.pos = np.array([get_pos(b, physicsClientId=cid)[0] for b in drones])
            self.vel = np.array([get_vel(b, physicsClientId=cid)[0] for b in drones])
            traj[k] = self.pos
            self._count_contacts()
        return traj

    def _count_contacts(self) -> None:
        now = {(c[1], c[2]) for c in p.getContactPoints(physicsClientId=self.cid)}
        now = {(min(a, b), max(a, b)) for a, b in now}
        for a, b in now - self._contacts:
            if a in self._drone_set and b in self._drone_set:
                self.drone_collisions += 1
            elif self.ground in (a, b):
                self.ground_collisions += 1
        self._contacts = now

    def close(self) -> None:
        if self.cid >= 0:
            p.disconnect(physicsClientId=self.cid)
            self.cid = -1
