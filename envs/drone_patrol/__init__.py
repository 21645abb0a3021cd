"""Drone patrol world: PyBullet drones fly between cruise points and classify events there.

The pieces are separable (see ``world.py`` for the whole design):

- ``config``  typed config (pydantic), ``EVENT_CLASSES``, ``ZONES``
- ``layout``  the map: zones, river, cruise points (pure numpy)
- ``events``  event appearance and clearing at cruise points (pure numpy)
- ``sensor``  the synthetic feature sensor (pure numpy)
- ``patrol``  the patrol planner: routes, dwell, altitude-sign climbs (pure numpy)
- ``metrics`` task metrics: detection, latency, idleness, violations (pure numpy)
- ``physics`` the PyBullet bodies and the position controller (the only pybullet import)
- ``physics_pool`` the same physics split by zone over processes (large swarms)
- ``world``   ``DronePatrolWorld`` composing them

``DronePatrolWorld`` and ``StepResult`` are loaded lazily so that importing this package never
imports pybullet.
"""

from __future__ import annotations

from typing import Any

from envs.drone_patrol.config import EVENT_CLASSES, ZONES, DronePatrolConfig, EventKindConfig

__all__ = [
    "EVENT_CLASSES",
    "ZONES",
    "DronePatrolConfig",
    "DronePatrolWorld",
    "EventKindConfig",
    "StepResult",
]


def __getattr__(name: str) -> Any:
    if name in ("DronePatrolWorld", "StepResult"):
        # lazy: the world module imports pybullet (module docstring)
        from envs.drone_patrol import world

        return getattr(world, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
