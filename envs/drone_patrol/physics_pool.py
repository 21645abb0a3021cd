"""The drone physics split over several processes (``physics_workers``), for large swarms.

A ``DronePhysics`` control step costs four PyBullet calls per drone (read pose, read velocity,
apply force, apply torque), each a command through PyBullet's client, and PyBullet holds the
GIL throughout: at 1,000 drones a tick is 0.2-0.6 s of one core, most of it those calls and
``stepSimulation`` (BENCHMARKS.md, Scale). Threads cannot share that; processes can.

``PhysicsPool`` keeps the ``DronePhysics`` interface the world uses (``reset``, ``advance``,
``show_event``, ``pos``, ``vel``, the collision counts, ``close``) over W PyBullet clients: the
first in this process, the others each in a worker process (``python -m
envs.drone_patrol.physics_pool``, talking over a socket pair). Drones are split by zone: worker
``w`` simulates the drones of the zones ``z`` with ``z % W == w`` (``patrol: zones``, drone ``i``
in zone ``i % 4``), so with W = 2 the west half (forest, river) and the east half (city,
industrial). Each client has its own ground plane; the event markers (visual only) live in the
first. A tick sends each worker its drones' targets, advances the local drones meanwhile and
gathers the workers' trajectories: one round trip per tick, not per control step. The messages
are pickles, which is safe only because both ends are this process and a child it started, over
an anonymous socket pair no other process can reach; nothing here listens on a network.

Why this is the same physics: drones of different clients cannot touch. Zones are quadrants,
cruise points lie at least ``EDGE_MARGIN`` (10%) of a quadrant's side inside them, routes are
straight legs between a zone's points (a quadrant is convex), hover slots and sign holds are
within ``SLOT_RADIUS_M`` of a point and a departing drone lands at its start on its own route;
so no drone comes near the line between two halves. Every drone is integrated on its own
(Bullet couples bodies only through contacts), and a contact pair is always within one client.
``advance`` checks the premise: it raises if a drone comes within ``BOUNDARY_M`` of the line
between the halves. tests/test_world_at_scale.py checks that W = 2 reproduces W = 1 bit for bit.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import subprocess
import sys
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from envs.drone_patrol.config import ZONES, DronePatrolConfig
from envs.drone_patrol.layout import PatrolMap
from envs.drone_patrol.physics import DronePhysics

#: A drone this close (m, horizontally) to the line between two workers' halves fails the
#: premise that no contact crosses it: two Crazyflies touch within 0.13 m (box diagonals).
BOUNDARY_M = 0.5
#: Seconds to wait for a worker's answer before calling it lost (a tick is well under 1 s of
#: work; starting PyBullet and numpy takes ~1 s).
REPLY_TIMEOUT_S = 120.0


def zone_groups(n_agents: int, workers: int) -> list[np.ndarray]:
    """Drone indices of each worker (W,) of (n_w,): drone ``i`` is in zone ``i % 4`` and goes
    to worker ``zone % W``."""
    zone = np.arange(n_agents) % len(ZONES)
    return [np.flatnonzero(zone % workers == w) for w in range(workers)]


class _Worker:
    """One physics worker process and its end of the socket pair."""

    def __init__(self, cfg: DronePatrolConfig, pmap: PatrolMap):
        ours, theirs = socket.socketpair()
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        # One BLAS thread, as the world's own process: the controller's arrays are small.
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "envs.drone_patrol.physics_pool", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            env=env,
        )
        theirs.close()
        self.conn = Connection(ours.detach())
        self.call("init", cfg, pmap)

    def send(self, op: str, *args: Any) -> None:
        self.conn.send_bytes(pickle.dumps((op, args), protocol=pickle.HIGHEST_PROTOCOL))

    def recv(self) -> Any:
        if not self.conn.poll(REPLY_TIMEOUT_S):
            raise RuntimeError(f"physics worker (pid {self.proc.pid}) did not answer")
        try:
            ok, value = pickle.loads(self.conn.recv_bytes())
        except EOFError:
            raise RuntimeError(
                f"physics worker (pid {self.proc.pid}) exited with code {self.proc.poll()}"
            ) from None
        if not ok:
            raise RuntimeError(f"physics worker failed:\n{value}")
        return value

    def call(self, op: str, *args: Any) -> Any:
        self.send(op, *args)
        return self.recv()

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):  # a worker already gone
            self.call("close")
        self.conn.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class PhysicsPool:
    """``DronePhysics`` for ``len(groups)`` groups of drones, each in its own PyBullet client:
    the first in this process, the others in worker processes."""

    def __init__(
        self,
        cfg: DronePatrolConfig,
        pmap: PatrolMap,
        hosts: list[tuple[int, int]],
        groups: list[np.ndarray],
    ):
        self.cfg = cfg
        self.groups = [np.asarray(g, dtype=np.int64) for g in groups]
        self.n = sum(len(g) for g in self.groups)
        self.local = DronePhysics(cfg, pmap, hosts)  # the markers live here
        self.workers: list[_Worker] = []
        try:
            self.workers = [_Worker(cfg, pmap) for _ in self.groups[1:]]
        except BaseException:
            self.close()
            raise
        self.steps_per_tick = self.local.steps_per_tick
        self.substeps = self.local.substeps
        self.controls_per_tick = self.local.controls_per_tick
        # Worker w's drones are the zones z with z % W == w; with W = 2 or 4 the halves meet
        # on the line x = 0 (W = 4 also y = 0), the quadrants' edges.
        self._check_x = len(self.groups) > 1
        self._check_y = len(self.groups) > 2
        self.pos = np.zeros((self.n, 3))  # (N, 3)
        self.vel = np.zeros((self.n, 3))  # (N, 3) world
        self.drone_collisions = 0
        self.ground_collisions = 0

    def reset(self, start: np.ndarray, attitude: np.ndarray | None = None) -> None:
        """As ``DronePhysics.reset``, each group in its own client."""
        start = np.asarray(start, dtype=np.float64)
        for worker, g in zip(self.workers, self.groups[1:], strict=True):
            worker.send("reset", start[g], None if attitude is None else attitude[g])
        g0 = self.groups[0]
        self.local.reset(start[g0], None if attitude is None else attitude[g0])
        self._gather([None] + [w.recv() for w in self.workers])

    def show_event(self, point: int, cls: int) -> None:
        self.local.show_event(point, cls)

    def advance(self, target: np.ndarray) -> np.ndarray:
        """As ``DronePhysics.advance``: positions after each control step (K, N, 3)."""
        for worker, g in zip(self.workers, self.groups[1:], strict=True):
            worker.send("advance", target[g])
        g0 = self.groups[0]
        traj = np.empty((self.controls_per_tick, self.n, 3))
        traj[:, g0] = self.local.advance(target[g0])
        states: list[Any] = [None]
        for worker, g in zip(self.workers, self.groups[1:], strict=True):
            part, state = worker.recv()
            traj[:, g] = part
            states.append(state)
        self._gather(states)
        self._check_apart(traj)
        return traj

    def _gather(self, states: list[Any]) -> None:
        """Positions, velocities and collision counts of every group, in drone order."""
        # new arrays, as DronePhysics makes at every read: a caller may hold the last ones
        pos, vel = np.empty((self.n, 3)), np.empty((self.n, 3))
        g0 = self.groups[0]
        pos[g0], vel[g0] = self.local.pos, self.local.vel
        drone, ground = self.local.drone_collisions, self.local.ground_collisions
        for g, state in zip(self.groups[1:], states[1:], strict=True):
            pos[g], vel[g], d, gr = state
            drone, ground = drone + d, ground + gr
        self.pos, self.vel = pos, vel
        self.drone_collisions, self.ground_collisions = drone, ground

    def _check_apart(self, traj: np.ndarray) -> None:
        near = self._check_x and bool((np.abs(traj[:, :, 0]) < BOUNDARY_M).any())
        near |= self._check_y and bool((np.abs(traj[:, :, 1]) < BOUNDARY_M).any())
        if near:
            raise RuntimeError(
                f"physics_workers: a drone came within {BOUNDARY_M} m of the line between two "
                "workers' zones, where a contact could cross clients; run with "
                "physics_workers: 1"
            )

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
        self.workers = []
        self.local.close()


def _state(physics: DronePhysics) -> tuple[np.ndarray, np.ndarray, int, int]:
    return physics.pos, physics.vel, physics.drone_collisions, physics.ground_collisions


def serve(conn: Connection) -> None:
    """A worker's loop: one DronePhysics, driven by the messages of a PhysicsPool."""
    physics: DronePhysics | None = None
    while True:
        try:
            op, args = pickle.loads(conn.recv_bytes())
        except EOFError:  # the pool's process is gone
            break
        try:
            if op == "init":
                cfg, pmap = args
                physics = DronePhysics(cfg, pmap, [])
                reply: Any = None
            elif op == "reset":
                assert physics is not None
                physics.reset(*args)
                reply = _state(physics)
            elif op == "advance":
                assert physics is not None
                traj = physics.advance(*args)
                reply = (traj, _state(physics))
            elif op == "close":
                if physics is not None:
                    physics.close()
                conn.send_bytes(pickle.dumps((True, None)))
                break
            else:
                raise ValueError(f"unknown operation {op!r}")
            conn.send_bytes(pickle.dumps((True, reply), protocol=pickle.HIGHEST_PROTOCOL))
        except Exception:
            conn.send_bytes(pickle.dumps((False, traceback.format_exc())))


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1])))
