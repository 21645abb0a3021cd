"""Worlds the swarm acts in.

Importing ``envs`` (or ``envs.drone_patrol``) is cheap: no pybullet, no torch. The heavy modules
load only when a world is built, through :func:`make_world`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from envs.drone_patrol.world import DronePatrolWorld

__all__ = ["make_world"]


def make_world(cfg: Any, n_agents: int, seed: int) -> DronePatrolWorld:
    """Build the world a config section describes (dispatch on ``cfg.kind``)."""
    if cfg.kind == "drone_patrol":
        from envs.drone_patrol.world import DronePatrolWorld

        return DronePatrolWorld(cfg, n_agents=n_agents, seed=seed)
    raise ValueError(f"unknown world kind {cfg.kind!r}; known: 'drone_patrol'")
