"""Events at cruise points: appearance, lifetime, clearing.

Updated once per tick. A free cruise point hosts a new event with probability
``1 - exp(-lambda * tick_s)``, where ``lambda`` is the summed ``rate_per_min / 60`` of the kinds
that exist at that point by now: each (point, kind) pair has an *onset*, the kind's
``appears_after_s`` if the point's zone is in the kind's ``zones``, the later of that and
``later_zones[zone]`` if the zone is listed there, never otherwise; the kind exists there from the
first tick with ``tick * tick_s >= onset``. The kind is drawn in proportion to the rates (competing
Poisson processes). A zone may not be in both ``zones`` and ``later_zones`` of one kind. An
event's lifetime is exponential with mean ``duration_s``, rounded to whole ticks (at least one).
At most one event per point; a point freed this tick stays free until the next. Every tick draws
the same number of random numbers (whatever exists where), so the event timeline depends only on
the seed and never on what the drones do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from envs.drone_patrol.config import EVENT_CLASSES, ZONES, DronePatrolConfig, first_tick
from envs.drone_patrol.layout import PatrolMap

#: Onset of a (point, kind) pair that never occurs.
NEVER = np.iinfo(np.int64).max


@dataclass
class EventRecord:
    """One event instance, for metrics and tests."""

    id: int
    point: int
    cls: int  # index into EVENT_CLASSES (never 0)
    appear_tick: int
    clear_tick: int  # first tick at which it is gone (planned at appearance)


class EventField:
    def __init__(self, cfg: DronePatrolConfig, pmap: PatrolMap, seed: np.random.SeedSequence):
        self.tick_s = cfg.tick_s
        self._seed = seed
        names = [k for k in EVENT_CLASSES[1:] if k in cfg.events]
        self.kind_cls = np.array([EVENT_CLASSES.index(k) for k in names], dtype=np.int64)  # (K,)
        self.rate_hz = np.array([cfg.events[k].rate_per_min / 60 for k in names])  # (K,)
        self.mean_life_s = np.array([cfg.events[k].duration_s for k in names])  # (K,)
        for k in names:
            both = set(cfg.events[k].zones) & set(cfg.events[k].later_zones)
            if both:
                raise ValueError(
                    f"events.{k}: zone(s) {sorted(both)} are in both 'zones' and 'later_zones'"
                )

        zone_names = [ZONES[int(z)] for z in pmap.point_zone]
        self.onset = np.full((pmap.n_points, len(names)), NEVER, dtype=np.int64)  # (P, K)
        for j, k in enumerate(names):
            ev = cfg.events[k]
            for pt, zn in enumerate(zone_names):
                if zn in ev.zones:
                    self.onset[pt, j] = first_tick(ev.appears_after_s, cfg.tick_s)
                elif zn in ev.later_zones:
                    self.onset[pt, j] = first_tick(
                        max(ev.appears_after_s, ev.later_zones[zn]), cfg.tick_s
                    )
        #: (P, K) the kind can ever occur at the point.
        self.allowed = self.onset < NEVER
        self.n_points = pmap.n_points
        #: (point, class) pairs that can ever occur (for one marker body each).
        pts, ks = np.nonzero(self.allowed)
        self.hosts = [(int(pt), int(self.kind_cls[k])) for pt, k in zip(pts, ks, strict=True)]
        self.reset()

    def reset(self) -> None:
        self._rng = np.random.default_rng(self._seed)
        self.kind = np.zeros(self.n_points, dtype=np.int64)  # (P,) class at each point, 0 = none
        self.event_id = np.full(self.n_points, -1, dtype=np.int64)  # (P,)
        self.clear_tick = np.full(self.n_points, -1, dtype=np.int64)  # (P,)
        self.log: list[EventRecord] = []

    def update(self, tick: int) -> np.ndarray:
        """Advance to ``tick``; returns the indices of points whose event changed."""
        u_appear = self._rng.random(self.n_points)
        u_kind = self._rng.random(self.n_points)
        life = self._rng.exponential(1.0, self.n_points)

        ending = (self.kind > 0) & (self.clear_tick <= tick)
        self.kind[ending] = 0
        self.event_id[ending] = -1

        hazard = (tick >= self.onset) * self.rate_hz[None, :]  # (P, K)
        lam = hazard.sum(axis=1)  # (P,)
        p_appear = 1.0 - np.exp(-lam * self.tick_s)
        new = (self.kind == 0) & ~ending & (u_appear < p_appear)
        for p in np.flatnonzero(new):
            cdf = np.cumsum(hazard[p]) / lam[p]
            k = min(int(np.searchsorted(cdf, u_kind[p], side="right")), len(cdf) - 1)
            ticks = max(1, int(round(life[p] * self.mean_life_s[k] / self.tick_s)))
            rec = EventRecord(len(self.log), int(p), int(self.kind_cls[k]), tick, tick + ticks)
            self.log.append(rec)
            self.kind[p] = rec.cls
            self.event_id[p] = rec.id
            self.clear_tick[p] = rec.clear_tick
        return np.flatnonzero(ending | new)
