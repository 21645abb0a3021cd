"""Camera sensor benchmark: what a rendered observation costs, per image and per tick.

Usage:
    .venv/bin/python bench/camera_bench.py            # full run, ~1 min on 2 cores
    .venv/bin/python bench/camera_bench.py --quick    # every code path, smaller swarms
    .venv/bin/python bench/camera_bench.py --write    # also rewrite its BENCHMARKS.md section

Figures, each measured in ONE run against baselines built here:
  1. per-image render time (camera_px 16) in the live world at N drones, against the same
     scene with the drones, the physics' ground plane and the parked markers drawn again (what
     rendering the physics client as it is would cost: the camera hides them, alpha 0);
  2. one world tick (physics + observation) with the camera sensor against the feature sensor,
     same seed and swarm;
  3. a probe set (30 per class x 5 classes x window 8 = 1,200 images) rendered in its own
     client, against the feature sensor's probe set;
  4. per-image render time at 8 / 16 / 32 px.
Progress goes to stderr, the tables to stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: bench/ is on sys.path, the repo root is not

import model_bench  # noqa: E402  (one helper, one place)
import pybullet as p  # noqa: E402
from model_bench import best_time, machine  # noqa: E402

from envs.drone_patrol.camera import CameraSensor  # noqa: E402
from envs.drone_patrol.config import DronePatrolConfig  # noqa: E402
from envs.drone_patrol.world import DronePatrolWorld  # noqa: E402

SECTION = "## Camera sensor: render cost per image and per tick (`bench/camera_bench.py`)"
_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def world(n: int, sensor: Literal["features", "camera"], **cfg: Any) -> DronePatrolWorld:
    return DronePatrolWorld(DronePatrolConfig(sensor=sensor, **cfg), n_agents=n, seed=0)


def render_ms(w: DronePatrolWorld) -> float:
    """ms per image: all N drones' images of the current tick, in the live client."""
    cam = w.sensor
    assert isinstance(cam, CameraSensor)
    return best_time(lambda: cam.render(w.physics.cid, w.physics.pos), 3) / w.n_agents * 1e3


def show_everything(w: DronePatrolWorld) -> None:
    """Draw again what the camera scene hides: drones, the ground plane, parked markers."""
    cid = w.physics.cid
    for i in range(p.getNumBodies(physicsClientId=cid)):
        body = p.getBodyUniqueId(i, physicsClientId=cid)
        rgba = p.getVisualShapeData(body, physicsClientId=cid)
        colour = rgba[0][7][:3] if rgba else (1.0, 1.0, 1.0)
        p.changeVisualShape(body, -1, rgbaColor=[*colour, 1.0], physicsClientId=cid)


def tick_ms(w: DronePatrolWorld, ticks: int) -> float:
    zero = np.zeros(w.n_agents, np.int64)
    w.step(zero)  # warm
    t0 = time.perf_counter()
    for _ in range(ticks):
        w.step(zero)
    return (time.perf_counter() - t0) / ticks * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller swarms, fewer ticks")
    ap.add_argument("--write", action="store_true", help="rewrite this section of BENCHMARKS.md")
    args = ap.parse_args()
    sizes = (8, 64) if args.quick else (8, 64, 256)
    ticks = 3 if args.quick else 10
    info = machine()
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    rows1, rows2 = [], []
    for n in sizes:
        log(f"figures 1-2: {n} drones")
        cam = world(n, "camera")
        ms = render_ms(cam)
        show_everything(cam)
        ms_all = render_ms(cam)
        cam.close()
        rows1.append(f"| {n} | {ms:.3f} | {ms_all:.3f} | {ms_all / ms:.1f}x |")
        cam, feat = world(n, "camera"), world(n, "features")
        t_cam, t_feat = tick_ms(cam, ticks), tick_ms(feat, ticks)
        cam.close()
        feat.close()
        rows2.append(f"| {n} | {t_cam:.1f} | {t_feat:.1f} | {t_cam / t_feat:.2f}x |")

    log("figure 3: probe sets")
    cam, feat = world(8, "camera"), world(8, "features")
    probe_cam = best_time(lambda: cam.probe_set(30, 8, seed=0), 2, min_time=0.0)
    probe_feat = best_time(lambda: feat.probe_set(30, 8, seed=0), 3)
    cam.close()
    feat.close()

    log("figure 4: image sizes")
    rows4 = []
    for px in (8, 16, 32):
        cam = world(64, "camera", camera_px=px)
        rows4.append(f"| {px} | {render_ms(cam):.3f} |")
        cam.close()

    cmd = ".venv/bin/python bench/camera_bench.py" + (" --quick" if args.quick else "")
    body = "\n".join(
        [
            SECTION,
            "",
            f"Command: `{cmd} --write` · {date} · {time.perf_counter() - _T0:.0f} s wall",
            "",
            f"Machine: {info['cores']} cores ({info['cpu']}), Python {info['python']}, "
            f"pybullet ER_TINY_RENDERER in DIRECT mode, no shadows, default map (12 cruise "
            "points, 12 markers). Times are best of 3.",
            "",
            "### 1. Render time per 16 x 16 image (ms), in the live physics client",
            "",
            "'Everything drawn' makes the drones, the physics' ground plane and the parked "
            "markers visible again: what the tiny renderer costs when it draws the physics "
            "client as it is (each image then pays for every drone: O(N^2) per tick).",
            "",
            "| drones | camera scene | everything drawn | ratio |",
            "| ---: | ---: | ---: | ---: |",
            *rows1,
            "",
            "### 2. One world tick (ms): physics + observations of every drone",
            "",
            "| drones | camera | features | camera / features |",
            "| ---: | ---: | ---: | ---: |",
            *rows2,
            "",
            "### 3. Probe set, 30 per class x 5 classes x window 8 (1,200 images)",
            "",
            f"Camera: {probe_cam:.2f} s (its own DIRECT client, built and closed per call); "
            f"features: {probe_feat * 1e3:.1f} ms.",
            "",
            "### 4. Render time per image (ms) by image size, 64 drones",
            "",
            "| camera_px | ms / image |",
            "| ---: | ---: |",
            *rows4,
            "",
        ]
    )
    print(body)
    if args.write:
        model_bench.write_section(body, SECTION)
        log("wrote BENCHMARKS.md")


if __name__ == "__main__":
    main()
