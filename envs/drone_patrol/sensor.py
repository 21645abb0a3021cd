"""The synthetic feature sensor ('features'): what a drone perceives, as one vector per tick.

An observation is ``[signature (feature_dim), telemetry (TELEMETRY_DIM)]``:

- signature = v * proto[c] + (1 - v) * proto[none] + N(0, feature_noise^2) per dimension,
  where ``proto`` is one fixed standard-normal vector per class drawn from the world seed, ``c``
  is the event at the nearest cruise point if that point lies within ``sensing_radius_m``
  (horizontally) and 'none' otherwise, and the visibility ``v`` is 1 within
  ``FULL_VIEW_FRACTION * sensing_radius_m`` of the point and falls linearly to 0 at the radius.
- telemetry = altitude / 10 m, speed / 10 m/s, sin(heading), cos(heading); heading is the
  direction of horizontal motion (kept from the last tick while hovering). Dividing by 10 keeps
  the telemetry on the scale of the unit-variance signature.

The true class of an observation is ``c`` even when ``v`` is small: an event at the edge of view is
hard to see, and that is part of the task.
"""

from __future__ import annotations

import numpy as np

from envs.drone_patrol.config import EVENT_CLASSES, DronePatrolConfig

TELEMETRY_DIM = 4
TELEMETRY_NAMES = ("altitude/10", "speed/10", "sin_heading", "cos_heading")
#: Fraction of the sensing radius inside which an event is fully visible: a downward camera at
#: cruise altitude sees the ground a few metres around the point sharply.
FULL_VIEW_FRACTION = 0.4
#: Below this horizontal speed (m/s) the heading is kept from the previous tick: the direction of
#: a hovering drone's jitter means nothing.
HEADING_MIN_SPEED = 0.1


class FeatureSensor:
    def __init__(self, cfg: DronePatrolConfig, rng: np.random.Generator):
        self.radius = cfg.sensing_radius_m
        self.noise = cfg.feature_noise
        self.feature_dim = cfg.feature_dim
        self.prototypes = rng.standard_normal((len(EVENT_CLASSES), cfg.feature_dim))  # (C, D)

    @property
    def obs_dim(self) -> int:
        return self.feature_dim + TELEMETRY_DIM

    def visibility(self, dist: np.ndarray) -> np.ndarray:
        full = FULL_VIEW_FRACTION * self.radius
        return np.clip((self.radius - dist) / (self.radius - full), 0.0, 1.0)

    def observe(
        self,
        cls: np.ndarray,
        vis: np.ndarray,
        altitude: np.ndarray,
        speed: np.ndarray,
        heading: np.ndarray,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """All inputs share one shape S; returns (*S, obs_dim) float32."""
        v = np.asarray(vis, dtype=np.float64)[..., None]  # (*S, 1)
        sig = v * self.prototypes[cls] + (1.0 - v) * self.prototypes[0]  # (*S, D)
        sig = sig + self.noise * rng.standard_normal(sig.shape)
        tel = np.stack([altitude / 10.0, speed / 10.0, np.sin(heading), np.cos(heading)], -1)
        return np.concatenate([sig, tel], axis=-1).astype(np.float32)
