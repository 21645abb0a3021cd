"""World benchmark: drone patrol ticks with rotor-level physics, and the vectorised controller
against a per-drone Python controller.

Usage:
    .venv/bin/python bench/world_bench.py            # full run, ~4 min on 2 cores
    .venv/bin/python bench/world_bench.py --quick    # every code path, short runs, ~1 min
    .venv/bin/python bench/world_bench.py --write    # also rewrite its BENCHMARKS.md section

Measured in ONE process: ``DronePatrolWorld.step`` (oracle predictions, so sign climbs happen)
for 8, 64 and 256 drones,
  1. with the feature sensor: physics steps/s (physics_hz * simulated s / wall s), the real-time
     factor (simulated s / wall s), and the share of the wall time spent in the controller
     (``DronePhysics._control``), in the rest of ``DronePhysics.advance`` (pybullet calls and the
     numpy around them) and in the rest of the world (sensor, patrol, events, metrics);
  2. the same worlds flown by a per-drone Python PID: one controller object per drone, one call
     per drone per control step, numpy on 3-vectors (the structure of gym-pybullet-drones'
     controllers), the same control law (checked against the vectorised one before timing);
     the ratio of the two wall times is the speed-up of vectorising the controller;
  3. with the camera sensor (``sensor: camera``), where the world supports it.
The area and the cruise points per zone grow with sqrt(N / 8), so every size has the default
8-drone world's density of drones and points. Rows alternate vectorised / per-drone and each
keeps its best of ``repeats`` runs. Progress goes to stderr, the tables to stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# One BLAS thread (as model_bench and the actors): set before numpy loads OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: bench/ is on sys.path, the repo root is not

import model_bench  # noqa: E402  (one helper, one place)
from model_bench import machine  # noqa: E402

from envs.drone_patrol.config import DronePatrolConfig  # noqa: E402
from envs.drone_patrol.physics import (  # noqa: E402
    A_BRAKE,
    DRAG_KG_S,
    DRONE_INERTIA,
    DRONE_MASS_KG,
    GRAVITY,
    K_R,
    K_W,
    KF,
    KP_POS,
    KV,
    MAX_CLIMB_MPS,
    MAX_DESCENT_MPS,
    MAX_RPM,
    MAX_TILT_DEG,
    MIXER,
    THRUST_TO_WEIGHT,
    DronePhysics,
    cascade,
    quat_to_rot,
)
from envs.drone_patrol.world import DronePatrolWorld  # noqa: E402

BENCHMARKS_MD = model_bench.BENCHMARKS_MD
SECTION = (
    "## World: rotor-level drone patrol, vectorised vs per-drone control (`bench/world_bench.py`)"
)
GOALS = {64: 5.0, 256: 1.0}  # drones -> real-time factor the issue asks for (feature sensor)
PEER = "gym-pybullet-drones (REFERENCES.md, measured on this machine): 10 drones 6.0x, 50 1.2x"

_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Settings:
    """Sizes and budgets of one benchmark run."""

    sizes: tuple[int, ...]
    """Drone counts."""
    sim_s: dict[int, float]
    """Simulated seconds timed per row, by drone count (fewer for the big swarms)."""
    camera_sim_s: dict[int, float]
    """The same for the camera rows."""
    repeats: dict[str, int]
    """Feature rows, by control: best of this many runs (alternating vectorised / per-drone;
    the short vectorised runs are the noisier, so they get more)."""
    warmup_ticks: int
    """Untimed ticks after a reset (allocations, first contacts)."""


FULL = Settings(
    sizes=(8, 64, 256),
    sim_s={8: 60.0, 64: 30.0, 256: 15.0},
    camera_sim_s={8: 60.0, 64: 30.0, 256: 10.0},
    repeats={"vectorised": 3, "per-drone": 2},
    warmup_ticks=4,
)
QUICK = Settings(
    sizes=(8, 64),
    sim_s={8: 10.0, 64: 5.0},
    camera_sim_s={8: 5.0, 64: 2.0},
    repeats={"vectorised": 1, "per-drone": 1},
    warmup_ticks=2,
)


# ---- the baseline: one controller object per drone ---------------------------------------


class PerDronePID:
    """One drone's cascade (the same law as ``physics.cascade``), written the usual per-drone
    way: an object per drone, one ``compute`` call per control step, numpy on 3-vectors."""

    UNMIX = np.linalg.inv(MIXER)
    F_MAX = KF * MAX_RPM**2
    T_MAX = THRUST_TO_WEIGHT * GRAVITY
    TAN_TILT = math.tan(math.radians(MAX_TILT_DEG))
    J = np.array(DRONE_INERTIA)

    def __init__(self, speed: float):
        self.speed = speed

    def compute(
        self,
        pos: np.ndarray,
        vel: np.ndarray,
        rot: np.ndarray,
        omega: np.ndarray,
        goal: np.ndarray,
    ) -> np.ndarray:
        """Rotor speeds (4,) rpm for one drone; vectors (3,), ``rot`` (3, 3) body to world."""
        err = goal - pos
        dist = math.hypot(err[0], err[1])
        v_xy = min(KP_POS * dist, math.sqrt(2 * A_BRAKE * dist), self.speed) / max(dist, 1e-9)
        v_z = min(max(KP_POS * err[2], -MAX_DESCENT_MPS), MAX_CLIMB_MPS)
        v_cmd = np.array([err[0] * v_xy, err[1] * v_xy, v_z])
        drag = rot @ (-DRAG_KG_S * (rot.T @ vel))  # world-frame drag force
        acc = KV * (v_cmd - vel) - drag / DRONE_MASS_KG
        fz = min(max(acc[2] + GRAVITY, 0.0), self.T_MAX)
        acc[2] = fz
        budget = min(math.sqrt(self.T_MAX**2 - fz * fz), fz * self.TAN_TILT)
        acc[:2] *= budget / (max(math.hypot(acc[0], acc[1]), budget) + 1e-12)
        z_b = rot[:, 2]
        if z_b[2] > 0.5:
            thrust = DRONE_MASS_KG * min(fz / z_b[2], self.T_MAX)
        else:
            thrust = DRONE_MASS_KG * max(float(acc @ z_b), 0.0)
        acc[2] += 1e-9
        z_d = acc / np.linalg.norm(acc)
        y_d = np.cross(z_d, [1.0, 0.0, 0.0])
        y_d /= np.linalg.norm(y_d)
        rot_d = np.column_stack([np.cross(y_d, z_d), y_d, z_d])
        m = rot_d.T @ rot
        e_r = 0.5 * np.array([m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1]])
        torque = -self.J * (K_R * e_r + K_W * omega)
        f = self.UNMIX @ np.concatenate([[thrust], torque])
        f += max(-f.min(), 0.0) - max(f.max() - self.F_MAX, 0.0)
        return np.sqrt(np.clip(f, 0.0, self.F_MAX) / KF)


def use_per_drone_control(phys: DronePhysics) -> None:
    """Swap the vectorised controller of ``phys`` for a loop over per-drone controllers."""
    pids = [PerDronePID(phys.cfg.speed_mps) for _ in phys.drones]

    def control(goal: np.ndarray) -> np.ndarray:
        pos, vel, rot, omega = phys.pos, phys.vel, phys.rot, phys.omega
        return np.array(
            [pid.compute(pos[i], vel[i], rot[i], omega[i], goal[i]) for i, pid in enumerate(pids)]
        )

    phys._control = control  # type: ignore[method-assign]


def check_baseline() -> str:
    """The per-drone controller computes the vectorised one's rotor speeds, and a world flown
    by it follows the same trajectories; raise otherwise. Returns a one-line summary."""
    rng = np.random.default_rng(0)
    n = 200
    pos, vel, omega = rng.normal(size=(3, n, 3)) * [[[20.0]], [[4.0]], [[2.0]]]
    q = rng.normal(size=(n, 4))
    q[: n // 2] = [0, 0, 0, 1] + 0.2 * q[: n // 2]  # half near level, half anywhere
    rot = quat_to_rot(q / np.linalg.norm(q, axis=1, keepdims=True))
    goal = pos + rng.normal(size=(n, 3)) * 10
    goal[::7, 2] = pos[::7, 2]  # some pure horizontal legs
    vec = cascade(pos, vel, rot, omega, goal, 8.0)
    pid = PerDronePID(8.0)
    loop = np.array([pid.compute(pos[i], vel[i], rot[i], omega[i], goal[i]) for i in range(n)])
    rpm_err = float(np.abs(vec - loop).max() / MAX_RPM)
    if rpm_err > 1e-9:
        raise SystemExit(f"per-drone baseline disagrees with cascade: {rpm_err:.2e} of max rpm")
    a, b = (make_world("features", 8) for _ in range(2))
    use_per_drone_control(b.physics)
    for _ in range(40):
        a.step(a.true_classes())
        b.step(b.true_classes())
    pos_err = float(np.abs(a.physics.pos - b.physics.pos).max())
    a.close()
    b.close()
    if pos_err > 1e-6:
        raise SystemExit(f"per-drone baseline flies another trajectory: {pos_err:.2e} m off")
    return (
        f"rotor speeds equal to {rpm_err:.0e} of max rpm on {n} random states; "
        f"8-drone world after 20 s: positions equal to {pos_err:.0e} m"
    )


# ---- timing --------------------------------------------------------------------------------


def world_config(sensor: str, n: int) -> DronePatrolConfig:
    """The default world scaled to ``n`` drones at the density of the default 8-drone world."""
    scale = math.sqrt(max(n, 8) / 8)
    return DronePatrolConfig(
        sensor=sensor,  # type: ignore[arg-type]
        area_m=160.0 * scale,
        cruise_points_per_zone=min(64, round(3 * scale)),
    )


def make_world(sensor: str, n: int) -> DronePatrolWorld:
    return DronePatrolWorld(world_config(sensor, n), n_agents=n, seed=0)


@dataclass
class Row:
    sensor: str
    control: str  # "vectorised" | "per-drone"
    n: int
    sim_s: float
    wall_s: float
    cpu_s: float  # process CPU time: what the row cost whatever else ran on the cores
    control_s: float  # in DronePhysics._control
    advance_s: float  # in DronePhysics.advance, the controller included
    collisions: int
    physics_hz: int

    @property
    def rtf(self) -> float:
        return self.sim_s / self.wall_s

    @property
    def cpu_rtf(self) -> float:
        return self.sim_s / self.cpu_s

    @property
    def steps_per_s(self) -> float:
        return self.physics_hz * self.sim_s / self.wall_s


def _timed(fn: Callable, acc: list[float]) -> Callable:
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            acc[0] += time.perf_counter() - t0

    return wrapper


def run_row(sensor: str, control: str, n: int, sim_s: float, s: Settings) -> Row:
    world = make_world(sensor, n)
    phys = world.physics
    if control == "per-drone":
        use_per_drone_control(phys)
    t_control, t_advance = [0.0], [0.0]
    phys._control = _timed(phys._control, t_control)  # type: ignore[method-assign]
    phys.advance = _timed(phys.advance, t_advance)  # type: ignore[method-assign]
    for _ in range(s.warmup_ticks):
        world.step(world.true_classes())
    t_control[0] = t_advance[0] = 0.0
    ticks = max(1, round(sim_s / world.cfg.tick_s))
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(ticks):
        world.step(world.true_classes())
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    row = Row(
        sensor=sensor,
        control=control,
        n=n,
        sim_s=ticks * world.cfg.tick_s,
        wall_s=wall,
        cpu_s=cpu,
        control_s=t_control[0],
        advance_s=t_advance[0],
        collisions=phys.drone_collisions + phys.ground_collisions,
        physics_hz=world.cfg.physics_hz,
    )
    world.close()
    log(
        f"{sensor:8s} {control:10s} N={n:3d}: {row.rtf:6.2f}x real time ({wall:.1f} s wall, "
        f"{row.cpu_rtf:.2f}x per CPU s)"
    )
    return row


def camera_works() -> str | None:
    """None if a camera world builds and steps, else why not."""
    try:
        world = make_world("camera", 8)
        try:
            if type(world.sensor).__name__ != "CameraSensor":
                return f"the world built a {type(world.sensor).__name__} for sensor: camera"
            world.step(world.true_classes())
        finally:
            world.close()
    except Exception as exc:  # report, do not hide: the feature rows still stand
        return f"{type(exc).__name__}: {exc}"
    return None


# ---- report --------------------------------------------------------------------------------


def fmt_row(r: Row, ratio: str) -> str:
    control = 100 * r.control_s / r.wall_s
    pybullet = 100 * (r.advance_s - r.control_s) / r.wall_s
    rest = 100 - control - pybullet
    return (
        f"| {r.sensor} | {r.control} | {r.n} | {r.sim_s:.0f} | {r.wall_s:.1f} | "
        f"{r.steps_per_s:,.0f} | {r.n * r.steps_per_s:,.0f} | **{r.rtf:.2f}x** | "
        f"{r.cpu_rtf:.2f}x | "
        f"{control:.0f}% | {pybullet:.0f}% | {rest:.0f}% | {ratio} | {r.collisions} |"
    )


def report(
    args: argparse.Namespace,
    s: Settings,
    info: dict,
    rows: list[Row],
    baseline_note: str,
    camera_note: str | None,
) -> str:
    cmd = ".venv/bin/python bench/world_bench.py" + (" --quick" if args.quick else "")
    cmd += " --write" if args.write else ""
    out = [
        SECTION,
        "",
        f"Command: `{cmd}` · {info['date']} · {info['wall']:.0f} s wall",
        "",
        f"Machine: {info['cores']} cores ({info['cpu']}), Python {info['python']}, numpy "
        f"{np.__version__}, pybullet {info['pybullet']}, one BLAS thread. Other work shares the "
        f"cores (load average {info['load']}): absolute rates are noisy, the per-drone / "
        "vectorised ratio is measured on the same worlds in one process.",
        "",
        "World: `DronePatrolWorld.step` with oracle predictions, default config (tick 0.5 s, "
        "physics 240 Hz, control 48 Hz, 8 m/s) with the area (160 m) and the cruise points per "
        "zone (3) scaled by sqrt(N / 8). Physics: one PyBullet rigid body per drone, thrust and "
        "torques from four rotor speeds (envs/drone_patrol/physics.py). Per-drone baseline: the "
        "same control law as one `PerDronePID.compute` call per drone per control step (the "
        f"structure of gym-pybullet-drones' controllers); check: {baseline_note}. Feature rows: "
        f"best of {s.repeats['vectorised']} runs (vectorised) and {s.repeats['per-drone']} "
        "(per-drone), alternating; camera rows: one run.",
        "",
        "Columns: steps/s = physics steps per wall second (physics_hz x simulated s / wall s); "
        "drone-steps/s = N x that; x real time = simulated s / wall s (per CPU s: / process CPU "
        "s, what the row would reach with a core to itself); control = "
        "`DronePhysics._control`; pybullet = the rest of `DronePhysics.advance` (pybullet "
        "calls, state conversion, contacts); world = everything else in the tick (sensor, "
        "patrol, events, metrics); speed-up = per-drone wall / vectorised wall; collisions = "
        "drone-drone + drone-ground contacts in the timed ticks.",
        "",
    ]
    feats = {(r.control, r.n): r for r in rows if r.sensor == "features"}
    out += ["### Targets", "", "| target | measured | verdict |", "| --- | --- | --- |"]
    for n, goal in GOALS.items():
        r = feats.get(("vectorised", n))
        if r is None:
            out.append(f"| {n} drones, feature sensor >= {goal:g}x real time | not run | - |")
            continue
        verdict = "**met**" if r.rtf >= goal else "**missed**"
        out.append(
            f"| {n} drones, feature sensor >= {goal:g}x real time | {r.rtf:.2f}x | {verdict} "
            f"({r.rtf / goal:.1f}x the target) |"
        )
    out += [
        "",
        f"Peer: {PEER} (not measured in this run).",
        "",
        "### Ticks",
        "",
        "| sensor | control | N | sim s | wall s | steps/s | drone-steps/s | x real time | "
        "x real time per CPU s | control | pybullet | world | speed-up | collisions |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: |",
    ]
    for r in rows:
        ratio = "-"
        if r.sensor == "features" and r.control == "vectorised":
            base = feats.get(("per-drone", r.n))
            ratio = f"**{base.wall_s / r.wall_s:.2f}x**" if base else "-"
        out.append(fmt_row(r, ratio))
    if camera_note:
        out += ["", f"Camera rows not run: {camera_note}. The bench runs them once it works."]
    ctrl = [
        (feats[("per-drone", n)].control_s / feats[("vectorised", n)].control_s, n)
        for n in s.sizes
        if ("per-drone", n) in feats and ("vectorised", n) in feats
    ]
    cpu_ratio = [
        (feats[("per-drone", n)].cpu_s / feats[("vectorised", n)].cpu_s, n)
        for n in s.sizes
        if ("per-drone", n) in feats and ("vectorised", n) in feats
    ]
    if ctrl:
        out += [
            "",
            "The controller alone (time in `_control`), per-drone / vectorised: "
            + ", ".join(f"{x:.0f}x at N = {n}" for x, n in ctrl)
            + ". The whole tick on CPU time, per-drone / vectorised: "
            + ", ".join(f"{x:.2f}x at N = {n}" for x, n in cpu_ratio)
            + ".",
        ]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 and 64 drones, short runs")
    ap.add_argument("--write", action="store_true", help="rewrite this section of BENCHMARKS.md")
    args = ap.parse_args()
    s = QUICK if args.quick else FULL
    info: dict = machine() | {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "pybullet": importlib.metadata.version("pybullet"),
    }
    load = [os.getloadavg()[0]]
    log("checking the per-drone baseline against the vectorised controller")
    baseline_note = check_baseline()
    log(baseline_note)

    rows: list[Row] = []
    for n in s.sizes:
        best: dict[str, Row] = {}
        for i in range(max(s.repeats.values())):
            for control in ("vectorised", "per-drone"):
                if i >= s.repeats[control]:
                    continue
                r = run_row("features", control, n, s.sim_s[n], s)
                if control not in best or r.wall_s < best[control].wall_s:
                    best[control] = r
        rows += [best["vectorised"], best["per-drone"]]

    camera_note = camera_works()
    if camera_note is None:
        for n in s.sizes:
            rows.append(run_row("camera", "vectorised", n, s.camera_sim_s[n], s))
    else:
        log(f"camera rows skipped: {camera_note}")
    info["wall"] = time.perf_counter() - _T0
    load.append(os.getloadavg()[0])
    info["load"] = f"{load[0]:.1f} at the start, {load[1]:.1f} at the end (1 min)"

    body = report(args, s, info, rows, baseline_note, camera_note)
    print(body)
    if args.write:
        model_bench.write_section(body, SECTION)
        log(f"wrote {BENCHMARKS_MD.relative_to(REPO)}")


if __name__ == "__main__":
    main()
