"""Plots of a finished run, regenerated from the files in its run directory.

probe_accuracy.png  probe accuracy over time: every agent (thin), swarm mean with sharing,
                    and the isolated baseline (dashed)
bytes.png           cumulative bytes sent by the swarm, and the dense-fp32 equivalent
trajectories.png    map of the patrol area with zones, river, cruise points and every
                    drone's path
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    with open(run_dir / "metrics.jsonl") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no screen here, and none needed
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(rows: list[dict[str, Any]], out: Path) -> None:
    plt = _pyplot()
    t = np.array([r["sim_time_s"] for r in rows])
    per_agent = np.array([r["agents"]["learn/probe_acc"] for r in rows])  # (R, N)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ax.plot(t, per_agent, color="tab:blue", alpha=0.18, linewidth=0.8)
    ax.plot(t, per_agent.mean(1), color="tab:blue", linewidth=2.2, label="sharing (mean)")
    iso = np.array([r["learn/probe_acc_isolated"] for r in rows])
    ax.plot(t, iso, color="tab:red", linestyle="--", linewidth=2, label="isolated (mean)")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("probe accuracy (balanced over event classes)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("What the swarm knows: probe accuracy per agent")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_bytes(rows: list[dict[str, Any]], out: Path) -> None:
    plt = _pyplot()
    t = np.array([r["sim_time_s"] for r in rows])
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    sent = np.array([r["gossip/bytes_sent"] for r in rows]) / 2**20
    dense = np.array([r["gossip/dense_bytes"] for r in rows]) / 2**20
    ax.plot(t, sent, linewidth=2.2, label="sent (compressed deltas)")
    ax.plot(t, dense, linestyle="--", linewidth=1.5, label="dense fp32 equivalent")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("cumulative MiB, whole swarm")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    ax.set_title("Knowledge exchange traffic")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_trajectories(trajectory: np.ndarray, layout: dict[str, Any], out: Path) -> None:
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    fig, ax = plt.subplots(figsize=(6.5, 6.5), dpi=110)
    colors = {"forest": "#cfe8c4", "city": "#e0e0e0", "river": "#cfe3f5", "industrial": "#f3e0c8"}
    for zone in layout.get("zones", []):
        x0, y0, x1, y1 = zone["rect"]
        ax.add_patch(
            Rectangle((x0, y0), x1 - x0, y1 - y0, color=colors.get(zone["name"], "#eeeeee"))
        )
        ax.text(x0 + 2, y1 - 6, zone["name"], fontsize=9, color="#555555")
    river = np.asarray(layout.get("river", []), dtype=float)
    if river.size:
        ax.plot(river[:, 0], river[:, 1], color="#3b7dd8", linewidth=4, alpha=0.6, label="river")
    for n in range(trajectory.shape[1]):
        ax.plot(trajectory[:, n, 0], trajectory[:, n, 1], linewidth=0.9, alpha=0.8)
    points = layout.get("cruise_points", [])
    if points:
        xy = np.array([[p["x"], p["y"]] for p in points])
        ax.scatter(
            xy[:, 0], xy[:, 1], marker="^", s=60, color="black", zorder=5, label="cruise points"
        )
    area = layout.get("area_m")
    if area:
        lo = -area / 2 if layout.get("origin") == "centre" else 0.0
        ax.set_xlim(lo, lo + area)
        ax.set_ylim(lo, lo + area)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("Patrol trajectories")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def write_plots(run_dir: Path) -> list[Path]:
    """(Re)draw every plot of a run directory; returns the files written."""
    run_dir = Path(run_dir)
    rows = read_rows(run_dir)
    written = [run_dir / "probe_accuracy.png", run_dir / "bytes.png"]
    plot_accuracy(rows, written[0])
    plot_bytes(rows, written[1])
    traj_file, layout_file = run_dir / "trajectory.npy", run_dir / "layout.json"
    if traj_file.exists() and layout_file.exists():
        out = run_dir / "trajectories.png"
        plot_trajectories(np.load(traj_file), json.loads(layout_file.read_text()), out)
        written.append(out)
    return written
