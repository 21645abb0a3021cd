"""Worlds the swarm acts in.

Importing ``envs`` (or ``envs.drone_patrol``) is cheap: no pybullet, no torch, no pettingzoo.
The heavy modules load only when a world is built, through :func:`make_world`.

- ``drone_patrol``: the PyBullet drone patrol (classification of events, labels arrive late);
- ``pettingzoo``: any PettingZoo ParallelEnv named by import path (actions and rewards),
  ``envs.pz_world``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["make_world"]


def make_world(cfg: Any, n_agents: int, seed: int) -> Any:
    """Build the world a config section describes (dispatch on ``cfg.kind``)."""
    if cfg.kind == "drone_patrol":
        # lazy: importing ``envs`` must not import pybullet (module docstring)
        from envs.drone_patrol.world import DronePatrolWorld

        return DronePatrolWorld(cfg, n_agents=n_agents, seed=seed)
    if cfg.kind == "pettingzoo":
        # lazy: nor gymnasium, which only this world needs
        from envs.pz_world import ParallelEnvWorld

        return ParallelEnvWorld(cfg, n_agents=n_agents, seed=seed)
    raise ValueError(f"unknown world kind {cfg.kind!r}; known: 'drone_patrol', 'pettingzoo'")
