"""The patrol planner: which point each drone flies to, at which altitude (pure numpy).

- Drone ``i`` patrols zone ``i % 4`` (ZONES order), cycling through that zone's cruise points in
  tour order. The ``m`` drones of a zone start spread evenly along the closed tour (drone ``j``
  at arc fraction ``j / m``) and at distinct cruise altitudes spread over
  ``cruise_altitude_m +- ALT_HALF_BAND_M`` (narrowed so the band stays below the altitude limit
  and above 1 m), so drones that meet at a point are at different heights. Each also has its
  own hover slot, ``SLOT_RADIUS_M`` from the point at angle ``2 pi j / m``: drones stacked at one
  point are apart horizontally too, so one climbing through another's altitude (a sign) misses.
- A drone arrives when it is within ``VISIT_RADIUS_M`` of its target (horizontally), dwells
  ``DWELL_TICKS`` ticks, then heads for the next point.
- Altitude-limit sign: when a drone predicts the sign class while a cruise point is in view, it
  marks that point and climbs to its climb altitude (``altitude_limit_m + CLIMB_MARGIN_M`` plus
  its band offset, so the altitude order of a zone's drones is kept). If the point is its target
  it flies on to its slot there (arriving low is allowed) and may not leave before it is above
  ``altitude_limit_m``; if it is some other point it is passing, it holds its horizontal
  position until above the limit. It descends to its cruise altitude once it is out of the
  point's sensing radius. A sign predicted with no point in view is ignored.
"""

from __future__ import annotations

import numpy as np

from envs.drone_patrol.config import EVENT_CLASSES, ZONES, DronePatrolConfig
from envs.drone_patrol.layout import PatrolMap

#: "Over the point" (horizontal metres): arrival, visits (idleness) and sign passages all use it.
#: Half a tick of flight at the default 8 m/s would be 2 m; passages are checked at control rate.
VISIT_RADIUS_M = 2.0
#: Ticks a drone hovers at a point (1 s at the default tick: time for a look).
DWELL_TICKS = 2
#: A sign demands flying above the limit; 2 m keeps a margin over altitude-tracking error.
CLIMB_MARGIN_M = 2.0
#: Half width of the cruise-altitude band over which a zone's drones are spread.
ALT_HALF_BAND_M = 1.5
#: Radius of the ring of hover slots around a point: inside VISIT_RADIUS_M, and 16 slots on it
#: are 0.39 m apart, three Crazyflie widths.
SLOT_RADIUS_M = 1.0
#: Lowest allowed cruise altitude (metres): keeps drones clear of the ground.
MIN_ALTITUDE_M = 1.0

SIGN = EVENT_CLASSES.index("altitude_limit_sign")


class Patroller:
    def __init__(self, cfg: DronePatrolConfig, pmap: PatrolMap, n_agents: int):
        self.cfg = cfg
        self.pmap = pmap
        self.n = n_agents
        self.zone = np.arange(n_agents) % len(ZONES)  # (N,)
        self.rank = np.arange(n_agents) // len(ZONES)  # (N,) index of the drone in its zone
        self.zone_size = np.array([len(range(z, n_agents, len(ZONES))) for z in self.zone])
        half_band = max(
            0.0,
            min(
                ALT_HALF_BAND_M,
                0.5 * (cfg.altitude_limit_m - cfg.cruise_altitude_m),
                cfg.cruise_altitude_m - MIN_ALTITUDE_M,
            ),
        )
        frac = np.where(self.zone_size > 1, self.rank / np.maximum(self.zone_size - 1, 1), 0.5)
        offset = (2 * frac - 1) * half_band  # (N,) in [-half_band, half_band]
        self.cruise_alt = cfg.cruise_altitude_m + offset  # (N,)
        self.climb_alt = cfg.altitude_limit_m + CLIMB_MARGIN_M + offset + half_band  # (N,)
        angle = 2 * np.pi * self.rank / self.zone_size
        radius = np.where(self.zone_size > 1, SLOT_RADIUS_M, 0.0)
        self.slot = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)  # (N, 2)
        self.reset()

    def reset(self) -> np.ndarray:
        """Restart the patrol; returns the start positions (N, 3)."""
        per = self.pmap.per_zone
        start = np.zeros((self.n, 3))
        self.route_idx = np.zeros(self.n, dtype=np.int64)  # (N,) position in the zone's tour
        for i in range(self.n):
            tour = self.pmap.points[self.pmap.zone_points(int(self.zone[i]))]  # (per, 2)
            leg = np.roll(tour, -1, axis=0) - tour  # leg k goes from point k to point k+1
            cum = np.concatenate([[0.0], np.cumsum(np.hypot(leg[:, 0], leg[:, 1]))])  # (per+1,)
            s = cum[-1] * self.rank[i] / self.zone_size[i]
            k = min(int(np.searchsorted(cum, s, side="right")) - 1, per - 1)
            u = (s - cum[k]) / max(cum[k + 1] - cum[k], 1e-9)
            start[i, :2] = tour[k] + u * leg[k] + self.slot[i]
            self.route_idx[i] = (k + 1) % per if per > 1 else 0
        start[:, 2] = self.cruise_alt
        self.dwell_left = np.full(self.n, -1, dtype=np.int64)  # (N,) -1: travelling
        self.climb_point = np.full(self.n, -1, dtype=np.int64)  # (N,) sign point or -1
        self.hold_xy = start[:, :2].copy()  # (N, 2)
        return start

    def target_points(self) -> np.ndarray:
        """Global index of each drone's current target cruise point (N,)."""
        return self.zone * self.pmap.per_zone + self.route_idx

    def act(self, predictions: np.ndarray, point_in_view: np.ndarray, pos: np.ndarray) -> None:
        """React to this tick's classifications: start a sign climb where one is reported."""
        start = (predictions == SIGN) & (point_in_view >= 0) & (self.climb_point != point_in_view)
        self.climb_point[start] = point_in_view[start]
        self.hold_xy[start] = pos[start, :2]

    def targets(self, pos: np.ndarray) -> np.ndarray:
        """Position set-points (N, 3) for the coming tick."""
        climbing = self.climb_point >= 0
        passing = self.climb_point != self.target_points()
        hold = climbing & passing & (pos[:, 2] < self.cfg.altitude_limit_m)
        slot_xy = self.pmap.points[self.target_points()] + self.slot  # (N, 2)
        xy = np.where(hold[:, None], self.hold_xy, slot_xy)
        z = np.where(climbing, self.climb_alt, self.cruise_alt)
        return np.concatenate([xy, z[:, None]], axis=1)

    def update(self, pos: np.ndarray) -> None:
        """After a tick of flight: arrivals, dwell countdown, next point, end of sign climbs."""
        d_target = np.hypot(*(pos[:, :2] - self.pmap.points[self.target_points()]).T)  # (N,)
        arrived = (self.dwell_left < 0) & (d_target < VISIT_RADIUS_M)
        dwelling = self.dwell_left > 0
        self.dwell_left[dwelling] -= 1
        self.dwell_left[arrived] = DWELL_TICKS
        blocked = (self.climb_point >= 0) & (pos[:, 2] < self.cfg.altitude_limit_m)
        leave = (self.dwell_left == 0) & ~blocked
        self.route_idx[leave] = (self.route_idx[leave] + 1) % self.pmap.per_zone
        self.dwell_left[leave] = -1

        climbing = self.climb_point >= 0
        cp = self.pmap.points[np.maximum(self.climb_point, 0)]  # (N, 2)
        gone = climbing & (np.hypot(*(pos[:, :2] - cp).T) > self.cfg.sensing_radius_m)
        self.climb_point[gone] = -1
