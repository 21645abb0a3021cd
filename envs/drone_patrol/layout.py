"""The map: a square area centred on the origin, four quadrant zones, a river, cruise points.

Zone ``z`` (index into ``ZONES``) is the quadrant ``(z % 2, z // 2)`` counted from the south-west
corner: forest SW, city SE, river NW, industrial NE. The river is a one-period sine meander
crossing the river quadrant west to east; the river zone's cruise points lie on it (river garbage
floats on the water). The other zones' points are drawn uniformly inside their quadrant with a
minimum separation. Each zone's points are stored contiguously, already in tour order (sorted by
angle around their centroid: a non-crossing cycle, near-optimal for patrolling per Chevaleyre
2004), so ``zone_points(z)`` is a route.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.drone_patrol.config import ZONES, DronePatrolConfig

#: Fraction of a quadrant side kept free of cruise points along its edges, so that the routes of
#: neighbouring zones stay at least 2 * 0.1 * side (16 m at the default 160 m area) apart.
EDGE_MARGIN = 0.1
#: Vertices of the river polyline; enough for a smooth sine at plot resolution.
RIVER_VERTICES = 33
#: Meander amplitude as a fraction of the quadrant side (stays inside the edge margin).
RIVER_AMPLITUDE = 0.2
#: Rejection-sampling attempts per point before the minimum separation is relaxed by 10 %.
_PLACE_TRIES = 200


@dataclass(frozen=True)
class PatrolMap:
    """Geometry of one world; immutable once built from the seed."""

    area_m: float
    zone_rects: np.ndarray  # (Z, 4) xmin, ymin, xmax, ymax in ZONES order
    river: np.ndarray  # (R, 2) polyline x, y
    points: np.ndarray  # (P, 2) cruise points x, y; zone by zone, each zone in tour order
    point_zone: np.ndarray  # (P,) int64 zone index of each point
    per_zone: int

    @property
    def n_points(self) -> int:
        return int(self.points.shape[0])

    def zone_points(self, zone: int) -> np.ndarray:
        """Global indices of one zone's cruise points, in tour order."""
        return np.arange(zone * self.per_zone, (zone + 1) * self.per_zone)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description for plots and reports."""
        return {
            "area_m": float(self.area_m),
            "origin": "centre",
            "zones": [
                {"name": name, "rect": [float(v) for v in self.zone_rects[z]]}
                for z, name in enumerate(ZONES)
            ],
            "river": [[float(x), float(y)] for x, y in self.river],
            "cruise_points": [
                {"x": float(x), "y": float(y), "zone": ZONES[int(z)]}
                for (x, y), z in zip(self.points, self.point_zone, strict=True)
            ],
        }


def _tour_order(xy: np.ndarray) -> np.ndarray:
    centre = xy.mean(axis=0)
    angle = np.arctan2(xy[:, 1] - centre[1], xy[:, 0] - centre[0])
    return xy[np.argsort(angle, kind="stable")]


def _scatter(
    rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, n: int, sep: float
) -> np.ndarray:
    """``n`` points uniform in the box [lo, hi] at least ``sep`` apart (relaxed if crowded)."""
    placed: list[np.ndarray] = []
    while len(placed) < n:
        for _ in range(_PLACE_TRIES):
            cand = rng.uniform(lo, hi)
            if all(np.hypot(*(cand - q)) >= sep for q in placed):
                placed.append(cand)
                break
        else:
            sep *= 0.9
    return np.array(placed)


def build_map(cfg: DronePatrolConfig, rng: np.random.Generator) -> PatrolMap:
    half = cfg.area_m / 2
    side = half  # a quadrant is half the area wide
    margin = EDGE_MARGIN * side
    n = cfg.cruise_points_per_zone
    rects = np.array(
        [
            [
                -half + (z % 2) * side,
                -half + (z // 2) * side,
                -half + (z % 2 + 1) * side,
                -half + (z // 2 + 1) * side,
            ]
            for z in range(len(ZONES))
        ]
    )  # (Z, 4)

    river_zone = ZONES.index("river")
    xmin, ymin, xmax, ymax = rects[river_zone]
    phase = rng.uniform(0, 2 * np.pi)
    rx = np.linspace(xmin, xmax, RIVER_VERTICES)
    ry = (ymin + ymax) / 2 + RIVER_AMPLITUDE * side * np.sin(2 * np.pi * (rx - xmin) / side + phase)
    river = np.stack([rx, ry], axis=1)  # (R, 2)

    # Two sensing discs apart when there is room, so that one point is in view at a time.
    sep = min(2 * cfg.sensing_radius_m, 0.7 * (side - 2 * margin) / np.sqrt(n))
    zone_pts = []
    for z in range(len(ZONES)):
        x0, y0, x1, y1 = rects[z]
        if z == river_zone:
            frac = (np.arange(n) + 0.5 + rng.uniform(-0.3, 0.3, n)) / n
            px = x0 + margin + (side - 2 * margin) * frac
            pts = np.stack([px, np.interp(px, rx, ry)], axis=1)
        else:
            lo = np.array([x0 + margin, y0 + margin])
            hi = np.array([x1 - margin, y1 - margin])
            pts = _scatter(rng, lo, hi, n, sep)
        zone_pts.append(_tour_order(pts) if n > 2 else pts)
    points = np.concatenate(zone_pts, axis=0)  # (P, 2)
    point_zone = np.repeat(np.arange(len(ZONES), dtype=np.int64), n)
    return PatrolMap(cfg.area_m, rects, river, points, point_zone, n)
