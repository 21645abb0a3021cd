"""The patrol planner: which point each drone flies to, at which altitude (pure numpy).

Every drone cycles through its own *route*, a closed cycle of cruise points; how the routes are
made is the coordination strategy (``cfg.patrol``):

- ``zones``: drone ``i`` patrols zone ``i % 4`` (ZONES order), cycling through that zone's cruise
  points in tour order. The ``m`` drones of a zone start spread evenly along the closed tour
  (drone ``j`` at arc fraction ``j / m``). With ``routes_per_zone`` R > 1 a zone's points are
  cut into R routes (a short tour of the zone's points, ``tour_order``, split by ``split_tour``
  below) and the zone's ``j``-th drone flies route ``j % R``: its group is the drones on that
  route, spread along it as above. Each route is a cluster of neighbouring points, so a large
  swarm's drones keep beats as small as the default's instead of queueing on one long tour.
- ``shared``: all cruise points lie on one closed tour (nearest neighbour from point 0, then
  2-opt until no exchange shortens it: deterministic, and within a few percent of the shortest
  tour on such maps), cut into contiguous *segments*, one per drone, that minimise the longest
  segment cycle (path through the segment plus the leg back to its first point: the time a
  drone needs to see all its points again), neighbouring cuts then moved while that shortens
  the longer of the two. Each drone cycles its segment; a cyclic shortest-tour strategy is
  near-optimal for idleness (Chevaleyre 2004). With more drones than points, drones share
  one-point segments.

A drone's *group* is the drones on the same route (a zone's drones, or one route's of a zone;
one drone per segment).
Drones of a group get distinct cruise altitudes spread over ``cruise_altitude_m +-
ALT_HALF_BAND_M`` (narrowed so the band stays below the altitude limit and above 1 m; over
all drones with ``rotation_s``, whose groups cross between zones), so drones that meet at a
point are at different heights, and their own hover slots, ``SLOT_RADIUS_M`` from
the point at angle ``2 pi j / m``: drones stacked at one point are apart horizontally too, so one
climbing through another's altitude (a sign) misses. In 'shared' mode the altitudes and slots are
spread over all drones (segment routes cross on the way between segments).

- A drone arrives when it is within ``VISIT_RADIUS_M`` of its target (horizontally), dwells
  ``DWELL_TICKS`` ticks (plus any extra wait, see departures), then heads for the next point.
- Altitude-limit sign: when a drone predicts the sign class while a cruise point is in view, it
  marks that point and climbs to its climb altitude (``altitude_limit_m + CLIMB_MARGIN_M`` plus
  its band offset, so the altitude order of a zone's drones is kept). If the point is its target
  it flies on to its slot there (arriving low is allowed) and may not leave before it is above
  ``altitude_limit_m``; if it is some other point it is passing, it holds its horizontal
  position until above the limit. It descends to its cruise altitude once it is out of the
  point's sensing radius. A sign predicted with no point in view is ignored.

Arrivals (``cfg.arrivals``): until its time the drone stands on the ground at its start position
(``PARKED_Z_M``, target altitude ``LAND_Z_M``): it does not patrol or react to predictions. From
the first tick at or after ``at_s`` it takes off and joins its group as departures leave it
(``zones``: the group re-spreads; ``shared``: the tour is re-split).

Rotation (``cfg.rotation_s``, ``zones`` only): at every multiple of ``rotation_s`` each group
moves on to the next zone (ZONES order): drone ``i`` patrols zone ``(i + shift) % 4``. Each drone
keeps its position in the route (zone routes have the same number of points), so a group stays
spread, and heads for that point of its new zone at once; a sign climb in progress is finished
first (the hold below applies).

Departures (``cfg.departures``): from the first tick at or after ``at_s`` the drone no longer
patrols or reacts to predictions; it flies at its cruise altitude to above its start position
and, once within ``VISIT_RADIUS_M`` of it, lands there (target altitude ``LAND_Z_M``: the physics
lands a drone whose target altitude is <= 0 and keeps it down). The others take over at once:

- ``shared``: the tour is re-split among the remaining drones; the new segments go to the
  drones in tour order, rotated to minimise the summed distance from each drone to its new
  segment, and each drone flies from where it is to the nearest point of its segment.
- ``zones``: the remaining drones of that zone re-spread along the zone tour: keeping the one
  that needs no wait, each other drone waits at its next point for the time that puts it
  ``1 / m`` of the tour behind its predecessor (arc lengths at cruise speed; the anchor is the
  drone that makes the longest wait shortest). Slots and altitudes stay.
"""

from __future__ import annotations

import numpy as np

from envs.drone_patrol.config import EVENT_CLASSES, ZONES, DronePatrolConfig, first_tick
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
#: Target altitude of a departed drone over its landing spot: the physics lands a drone whose
#: target altitude is <= 0 (rotors stop at touchdown, not counted as a collision).
LAND_Z_M = 0.0
#: Start altitude of a drone that arrives later: standing on the ground (a Crazyflie's half
#: height, physics.DRONE_HALF_EXTENTS), so the physics starts it landed.
PARKED_Z_M = 0.015
#: Tick of a drone that never departs.
NEVER = np.iinfo(np.int64).max
#: Cap on the boundary-balancing passes of ``split_tour`` (each pass strictly shortens some
#: segment pair, so it ends anyway; the cap only bounds the time on pathological maps).
_BALANCE_PASSES = 64

SIGN = EVENT_CLASSES.index("altitude_limit_sign")


# ---- tours --------------------------------------------------------------------------------


def _dist(xy: np.ndarray) -> np.ndarray:
    """(P, 2) -> (P, P) Euclidean distances."""
    return np.linalg.norm(xy[:, None, :] - xy[None, :, :], axis=-1)


def tour_order(xy: np.ndarray) -> np.ndarray:
    """A short closed tour through ``xy`` (P, 2): indices (P,), starting at point 0.

    Nearest neighbour from point 0, then 2-opt (reverse ``tour[i+1..j]`` when that shortens the
    tour; for each ``i`` the best ``j``) until no reversal helps. Deterministic: ties go to the
    lowest index.
    """
    n = len(xy)
    d = _dist(xy)
    tour = [0]
    free = np.ones(n, dtype=bool)
    free[0] = False
    for _ in range(n - 1):
        row = np.where(free, d[tour[-1]], np.inf)
        nxt = int(np.argmin(row))
        tour.append(nxt)
        free[nxt] = False
    t = np.array(tour, dtype=np.int64)
    if n < 4:
        return t
    improved = True
    while improved:
        improved = False
        for i in range(n - 2):
            j = np.arange(i + 2, n if i > 0 else n - 1)  # edges (i, i+1) and (j, j+1) disjoint
            a, b = t[i], t[i + 1]
            c, e = t[j], t[(j + 1) % n]
            gain = d[a, c] + d[b, e] - d[a, b] - d[c, e]  # (len(j),)
            k = int(np.argmin(gain))
            if gain[k] < -1e-9:
                t[i + 1 : j[k] + 1] = t[i + 1 : j[k] + 1][::-1].copy()
                improved = True
    return t


def cycle_length(xy: np.ndarray, route: np.ndarray) -> float:
    """Length of the closed cycle through ``xy[route]`` in that order (0 for one point)."""
    pts = xy[route]
    leg = np.roll(pts, -1, axis=0) - pts
    return float(np.hypot(leg[:, 0], leg[:, 1]).sum())


def split_tour(xy: np.ndarray, tour: np.ndarray, m: int) -> list[np.ndarray]:
    """Cut the closed ``tour`` (indices into ``xy``) into ``min(m, P)`` contiguous segments.

    Segments minimise the longest segment cycle (path plus the leg back to its start; it grows
    as a segment grows, by the triangle inequality, so a greedy cover decides whether a bound is
    feasible and a binary search over the candidate lengths finds the smallest one); then each
    boundary between neighbours is moved while that shortens the longer of the two. Returns the
    segments in tour order, each in tour order (global point indices).
    """
    p = len(tour)
    k = min(m, p)
    if k <= 1:
        return [tour.copy()]
    cost = _segment_cycles(xy[tour])
    cuts = _greedy_cuts(cost, k, _smallest_bound(cost, k))
    _split_longest(cost, cuts, k)
    _balance(cost, cuts)
    cuts.sort()
    return [tour[(s + np.arange(n)) % p] for s, n in cuts]


# The steps of split_tour. A segment is a *cut* (start position on the tour, number of points);
# ``cost[s, n - 1]`` is the length of its cycle, from the table ``_segment_cycles`` makes.


def _segment_cycles(pts: np.ndarray) -> np.ndarray:
    """(P, P) cycle lengths of the contiguous segments of the closed tour through ``pts``
    (P, 2, in tour order): ``cost[i, n - 1]`` for the n points from tour position i."""
    p = len(pts)
    leg = np.hypot(*(np.roll(pts, -1, axis=0) - pts).T)  # (P,) leg t goes from t to t+1
    arc = np.concatenate([[0.0], np.cumsum(np.concatenate([leg, leg]))])  # (2P+1,)
    start = np.arange(p)[:, None]  # (P, 1)
    last = start + np.arange(p)[None, :]  # (P, P) last tour position of a segment of n+1 points
    closing = np.hypot(*(pts[start % p] - pts[last % p]).transpose(2, 0, 1))  # (P, P)
    # cost[i, n-1]: cycle of the n points from tour position i; cummax guards float rounding.
    return np.maximum.accumulate(arc[last] - arc[start] + closing, axis=1)


def _covers(cost: np.ndarray, k: int, bound: float) -> np.ndarray:
    """(P,) bool: from each start, k greedy segments within ``bound`` cover the tour."""
    p = len(cost)
    reach = (cost <= bound).sum(axis=1)  # (P,) points the longest segment from i takes
    covered = np.zeros(p, dtype=np.int64)
    for _ in range(k):
        covered = np.minimum(covered + reach[(np.arange(p) + covered) % p], p)
    return covered >= p


def _smallest_bound(cost: np.ndarray, k: int) -> float:
    """The smallest segment cycle length within which k segments cover the tour: a binary
    search over the candidate lengths (every entry of ``cost``)."""
    levels = np.unique(cost)
    lo, hi = 0, len(levels) - 1  # levels[-1] (the whole tour) always covers
    while lo < hi:
        mid = (lo + hi) // 2
        if _covers(cost, k, levels[mid]).any():
            hi = mid
        else:
            lo = mid + 1
    return levels[lo]


def _greedy_cuts(cost: np.ndarray, k: int, bound: float) -> list[tuple[int, int]]:
    """The greedy cover within ``bound`` from the first start at which k segments do: each
    segment takes as many points as the bound allows (the last one what is left)."""
    p = len(cost)
    first = int(np.flatnonzero(_covers(cost, k, bound))[0])
    reach = (cost <= bound).sum(axis=1)
    cuts: list[tuple[int, int]] = []  # (start position, number of points)
    pos = first
    while sum(n for _, n in cuts) < p:
        n = int(min(reach[pos % p], p - sum(n for _, n in cuts)))
        cuts.append((pos % p, n))
        pos += n
    return cuts


def _split_longest(cost: np.ndarray, cuts: list[tuple[int, int]], k: int) -> None:
    """Fewer segments needed than drones: split the longest splittable segment, where its
    longer half is shortest, until there are k (``cuts`` changes in place)."""
    p = len(cost)
    while len(cuts) < k:
        costs = [cost[s, n - 1] if n > 1 else -1.0 for s, n in cuts]
        j = int(np.argmax(costs))
        s, n = cuts[j]
        a = np.arange(1, n)
        worst = np.maximum(cost[s, a - 1], cost[(s + a) % p, n - a - 1])
        a_best = int(a[np.argmin(worst)])
        cuts[j : j + 1] = [(s, a_best), ((s + a_best) % p, n - a_best)]


def _balance(cost: np.ndarray, cuts: list[tuple[int, int]]) -> None:
    """Move each boundary between neighbouring segments while that shortens the longer of the
    two, for at most ``_BALANCE_PASSES`` passes (``cuts`` changes in place)."""
    p, k = len(cost), len(cuts)
    for _ in range(_BALANCE_PASSES):
        moved = False
        for j in range(k):
            (s, n1), (_, n2) = cuts[j], cuts[(j + 1) % k]
            a = np.arange(1, n1 + n2)
            worst = np.maximum(cost[s, a - 1], cost[(s + a) % p, n1 + n2 - a - 1])
            old = max(cost[s, n1 - 1], cost[(s + n1) % p, n2 - 1])
            a_best = int(a[np.argmin(worst)])
            if worst[a_best - 1] < old - 1e-9:
                cuts[j] = (s, a_best)
                cuts[(j + 1) % k] = ((s + a_best) % p, n1 + n2 - a_best)
                moved = True
        if not moved:
            break


# ---- the planner --------------------------------------------------------------------------


class Patroller:
    def __init__(self, cfg: DronePatrolConfig, pmap: PatrolMap, n_agents: int):
        self.cfg = cfg
        self.pmap = pmap
        self.n = n_agents
        self.mode = cfg.patrol
        self.depart_tick = np.full(n_agents, NEVER, dtype=np.int64)  # (N,)
        for d in cfg.departures:
            if d.agent >= n_agents:
                raise ValueError(
                    f"departures: agent {d.agent} (drone_{d.agent}) does not exist; "
                    f"the world has {n_agents} drones (drone_0 .. drone_{n_agents - 1})"
                )
            if self.depart_tick[d.agent] != NEVER:
                raise ValueError(f"departures: agent {d.agent} (drone_{d.agent}) departs twice")
            self.depart_tick[d.agent] = first_tick(d.at_s, cfg.tick_s)
        self.arrive_tick = np.zeros(n_agents, dtype=np.int64)  # (N,) 0: patrols from the start
        for a in cfg.arrivals:
            if a.agent >= n_agents:
                raise ValueError(
                    f"arrivals: agent {a.agent} (drone_{a.agent}) does not exist; "
                    f"the world has {n_agents} drones (drone_0 .. drone_{n_agents - 1})"
                )
            self.arrive_tick[a.agent] = max(1, first_tick(a.at_s, cfg.tick_s))
        #: Ticks between zone rotations (0: none).
        self.rotate_every = max(1, first_tick(cfg.rotation_s, cfg.tick_s)) if cfg.rotation_s else 0
        #: One short closed tour through every cruise point ('shared' routes; idleness norm).
        self.tour = tour_order(pmap.points)  # (P,)
        self.tour_m = cycle_length(pmap.points, self.tour)
        #: Time one drone needs for the whole tour at cruise speed, dwells included.
        self.tour_s = self.tour_m / cfg.speed_mps + pmap.n_points * DWELL_TICKS * cfg.tick_s
        if self.mode == "zones":
            self.zone = np.arange(n_agents) % len(ZONES)  # (N,) the zone now (rotation moves it)
            in_zone = np.arange(n_agents) // len(ZONES)  # (N,) index of the drone in its zone
            routes = cfg.routes_per_zone
            self.route_of = in_zone % routes  # (N,) its route in the zone (any zone's)
            self.rank = in_zone // routes  # (N,) index of the drone on its route
            group = self.zone * routes + self.route_of
            self.group_size = np.bincount(group, minlength=len(ZONES) * routes)[group]  # (N,)
            #: Each zone's routes (global point indices in flying order), ``[zone][route]``.
            self.zone_routes = [self._cut_zone(z, routes) for z in range(len(ZONES))]
        else:  # altitudes and slots over all drones: segment routes cross between segments
            self.zone = np.full(n_agents, -1)
            self.route_of = np.zeros(n_agents, dtype=np.int64)
            self.rank = np.arange(n_agents)
            self.group_size = np.full(n_agents, n_agents)
        half_band = max(
            0.0,
            min(
                ALT_HALF_BAND_M,
                0.5 * (cfg.altitude_limit_m - cfg.cruise_altitude_m),
                cfg.cruise_altitude_m - MIN_ALTITUDE_M,
            ),
        )
        # Rotating groups cross each other's paths between zones: their drones' altitudes are
        # spread over the whole swarm, as in 'shared', so no two drones share one.
        alt_rank, alt_size = (
            (np.arange(n_agents), np.full(n_agents, n_agents))
            if self.rotate_every
            else (self.rank, self.group_size)
        )
        frac = np.where(alt_size > 1, alt_rank / np.maximum(alt_size - 1, 1), 0.5)
        offset = (2 * frac - 1) * half_band  # (N,) in [-half_band, half_band]
        self.cruise_alt = cfg.cruise_altitude_m + offset  # (N,)
        self.climb_alt = cfg.altitude_limit_m + CLIMB_MARGIN_M + offset + half_band  # (N,)
        angle = 2 * np.pi * self.rank / self.group_size
        radius = np.where(self.group_size > 1, SLOT_RADIUS_M, 0.0)
        self.slot = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)  # (N, 2)
        self.base_zone = self.zone.copy()  # (N,) the zone of the first shift
        self.reset()

    # ---- routes ---------------------------------------------------------------------------

    def _cut_zone(self, zone: int, routes: int) -> list[np.ndarray]:
        """``zone``'s routes: its tour (the map's order) for one; else a short tour of its
        points (``tour_order``) cut into ``routes`` contiguous pieces (``split_tour``), so each
        route is a small cluster of neighbouring points."""
        pts = self.pmap.zone_points(zone)
        if routes == 1:
            return [pts]
        tour = pts[tour_order(self.pmap.points[pts])]
        return split_tour(self.pmap.points, tour, routes)

    def _set_routes(self, routes: list[np.ndarray]) -> None:
        """Per-drone routes -> a padded table (N, L) and lengths (N,) (empty: no route)."""
        self.routes = [np.asarray(r, dtype=np.int64) for r in routes]
        width = max(1, max(len(r) for r in self.routes))
        self._route_tab = np.zeros((self.n, width), dtype=np.int64)  # (N, L)
        self._route_len = np.ones(self.n, dtype=np.int64)  # (N,) 1 for no route: idx stays 0
        for i, r in enumerate(self.routes):
            self._route_tab[i, : len(r)] = r
            self._route_len[i] = max(len(r), 1)

    def _initial_routes(self) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """Routes at the start, and each drone's rank in its group and the group's size."""
        self.shift = 0
        self.zone = self.base_zone.copy()
        if self.mode == "zones":
            routes = [self.zone_routes[z][q] for z, q in zip(self.zone, self.route_of, strict=True)]
            return routes, self.rank, self.group_size
        segs = split_tour(self.pmap.points, self.tour, self.n)
        seg_of = np.arange(self.n) % len(segs)  # (N,) several per segment only if N > P
        size = np.bincount(seg_of, minlength=len(segs))[seg_of]
        return [segs[s] for s in seg_of], np.arange(self.n) // len(segs), size

    def reset(self) -> np.ndarray:
        """Restart the patrol; returns the start positions (N, 3)."""
        routes, group_rank, group_size = self._initial_routes()
        self._set_routes(routes)
        start = np.zeros((self.n, 3))
        self.route_idx = np.zeros(self.n, dtype=np.int64)  # (N,) position in the route
        for i in range(self.n):
            tour = self.pmap.points[self.routes[i]]  # (per, 2)
            per = len(tour)
            leg = np.roll(tour, -1, axis=0) - tour  # leg k goes from point k to point k+1
            cum = np.concatenate([[0.0], np.cumsum(np.hypot(leg[:, 0], leg[:, 1]))])  # (per+1,)
            s = cum[-1] * group_rank[i] / group_size[i]
            k = min(int(np.searchsorted(cum, s, side="right")) - 1, per - 1)
            u = (s - cum[k]) / max(cum[k + 1] - cum[k], 1e-9)
            start[i, :2] = tour[k] + u * leg[k] + self.slot[i]
            self.route_idx[i] = (k + 1) % per if per > 1 else 0
        self.arrived = self.arrive_tick <= 0  # (N,) in the air, or a later arrival not yet
        start[:, 2] = np.where(self.arrived, self.cruise_alt, PARKED_Z_M)
        self.dwell_left = np.full(self.n, -1, dtype=np.int64)  # (N,) -1: travelling
        self.extra_dwell = np.zeros(self.n, dtype=np.int64)  # (N,) added to the next dwell
        self.climb_point = np.full(self.n, -1, dtype=np.int64)  # (N,) sign point or -1
        self.hold_xy = start[:, :2].copy()  # (N, 2)
        self.home = start[:, :2].copy()  # (N, 2) where a departed drone lands
        self.departed = np.zeros(self.n, dtype=bool)  # (N,)
        self.landing = np.zeros(self.n, dtype=bool)  # (N,) departed and over its landing spot
        if self.mode == "shared" and not self.arrived.all():
            self._rebalance(start)  # the tour among the drones in the air
        return start

    @property
    def active(self) -> np.ndarray:
        """(N,) bool: the drone patrols (has arrived and not departed)."""
        return self.arrived & ~self.departed

    def target_points(self) -> np.ndarray:
        """Global index of each drone's current target cruise point (N,); -1 for a drone that
        does not patrol (departed, or not arrived yet)."""
        tp = self._route_tab[np.arange(self.n), self.route_idx]
        return np.where(self.active, tp, -1)

    # ---- one tick -------------------------------------------------------------------------

    def act(self, predictions: np.ndarray, point_in_view: np.ndarray, pos: np.ndarray) -> None:
        """React to this tick's classifications: start a sign climb where one is reported."""
        start = (predictions == SIGN) & (point_in_view >= 0) & (self.climb_point != point_in_view)
        start &= self.active
        self.climb_point[start] = point_in_view[start]
        # A drone passing a sign climbs over the sign's point itself: holding where it was seen
        # fails at cruise speed (8 m/s needs ~8 m to stop), so momentum could carry the drone
        # into the point's disc and out again below the limit.
        self.hold_xy[start] = self.pmap.points[point_in_view[start]] + self.slot[start]

    def targets(self, pos: np.ndarray) -> np.ndarray:
        """Position set-points (N, 3) for the coming tick."""
        tp = self._route_tab[np.arange(self.n), self.route_idx]  # departed: ignored below
        climbing = self.climb_point >= 0
        passing = self.climb_point != tp
        hold = climbing & passing & (pos[:, 2] < self.cfg.altitude_limit_m)
        slot_xy = self.pmap.points[tp] + self.slot  # (N, 2)
        xy = np.where(hold[:, None], self.hold_xy, slot_xy)
        z = np.where(climbing, self.climb_alt, self.cruise_alt)
        away = ~self.active
        if away.any():  # departed: home to land; not arrived: stay down at home
            xy = np.where(away[:, None], self.home, xy)
            z = np.where(self.landing | ~self.arrived, LAND_Z_M, z)
        return np.concatenate([xy, z[:, None]], axis=1)

    def update(self, pos: np.ndarray) -> None:
        """After a tick of flight: arrivals, dwell countdown, next point, end of sign climbs."""
        tp = self._route_tab[np.arange(self.n), self.route_idx]
        d_target = np.hypot(*(pos[:, :2] - self.pmap.points[tp]).T)  # (N,)
        arrived = (self.dwell_left < 0) & (d_target < VISIT_RADIUS_M) & self.active
        dwelling = self.dwell_left > 0
        self.dwell_left[dwelling] -= 1
        self.dwell_left[arrived] = DWELL_TICKS + self.extra_dwell[arrived]
        self.extra_dwell[arrived] = 0
        blocked = (self.climb_point >= 0) & (pos[:, 2] < self.cfg.altitude_limit_m)
        leave = (self.dwell_left == 0) & ~blocked
        self.route_idx[leave] = (self.route_idx[leave] + 1) % self._route_len[leave]
        self.dwell_left[leave] = -1

        climbing = self.climb_point >= 0
        cp = self.pmap.points[np.maximum(self.climb_point, 0)]  # (N, 2)
        gone = climbing & (np.hypot(*(pos[:, :2] - cp).T) > self.cfg.sensing_radius_m)
        self.climb_point[gone] = -1

        home_d = np.hypot(*(pos[:, :2] - self.home).T)  # (N,)
        self.landing |= self.departed & (home_d < VISIT_RADIUS_M)

    # ---- departures, arrivals, rotation ---------------------------------------------------

    def changes_due(self, tick: int, pos: np.ndarray) -> bool:
        """Departures, arrivals and the zone rotation due by ``tick``; whether the set of
        patrolling drones changed."""
        changed = self.depart_due(tick, pos).size > 0
        changed |= self.arrive_due(tick, pos).size > 0
        self.rotate_due(tick)
        return changed

    def arrive_due(self, tick: int, pos: np.ndarray) -> np.ndarray:
        """Let the drones due by ``tick`` take off and join; returns their indices."""
        due = np.flatnonzero((self.arrive_tick <= tick) & ~self.arrived)
        if not due.size:
            return due
        self.arrived[due] = True
        self.dwell_left[due] = -1
        self._regroup(due, pos)
        return due

    def rotate_due(self, tick: int) -> bool:
        """At a rotation tick every group moves on to the next zone; whether it did."""
        if not self.rotate_every or tick == 0 or tick % self.rotate_every:
            return False
        self.shift = tick // self.rotate_every
        self.zone = (self.base_zone + self.shift) % len(ZONES)
        routes = [
            r[:0] if self.departed[i] else self.zone_routes[self.zone[i]][self.route_of[i]]
            for i, r in enumerate(self.routes)
        ]
        self._set_routes(routes)
        self.route_idx %= self._route_len
        moving = self.active & (self.dwell_left != 0)
        self.dwell_left[moving] = -1  # off to the new zone now (a held climb still holds)
        self.extra_dwell[:] = 0
        return True

    def depart_due(self, tick: int, pos: np.ndarray) -> np.ndarray:
        """Let the drones due by ``tick`` leave and re-balance; returns their indices."""
        due = np.flatnonzero((self.depart_tick <= tick) & ~self.departed)
        if not due.size:
            return due
        self.departed[due] = True
        self.climb_point[due] = -1
        self.dwell_left[due] = -1
        self.extra_dwell[due] = 0
        self._regroup(due, pos)
        self.route_idx[self.departed] = 0
        self._set_routes([r[:0] if self.departed[i] else r for i, r in enumerate(self.routes)])
        return due

    def _regroup(self, changed: np.ndarray, pos: np.ndarray) -> None:
        """After drones ``changed`` left or joined: 'shared' re-splits the tour, 'zones'
        re-spreads the groups (the drones of one route of a zone) they were in."""
        if self.mode == "shared":
            self._rebalance(pos)
        else:
            for z, q in sorted({(int(self.zone[i]), int(self.route_of[i])) for i in changed}):
                self._respread(z, q, pos)

    def _rebalance(self, pos: np.ndarray) -> None:
        """'shared': split the tour among the remaining drones; each takes the nearest point."""
        idx = np.flatnonzero(self.active)
        if not idx.size:
            return
        pts = self.pmap.points
        segs = split_tour(pts, self.tour, idx.size)
        where = np.empty(self.pmap.n_points, dtype=np.int64)
        where[self.tour] = np.arange(self.pmap.n_points)  # point -> tour position
        order = idx[np.argsort(where[self.target_points()[idx]], kind="stable")]
        # (n, S): distance from each drone (in tour order) to the nearest point of each segment
        near = np.array([[np.hypot(*(pts[s] - pos[i, :2]).T).min() for s in segs] for i in order])
        j = np.arange(order.size)
        cost = [near[j, (j + c) % len(segs)].sum() for c in range(len(segs))]
        shift = int(np.argmin(cost))
        for jj, i in enumerate(order):
            seg = segs[(jj + shift) % len(segs)]
            self.routes[i] = seg
            self.route_idx[i] = int(np.argmin(np.hypot(*(pts[seg] - pos[i, :2]).T)))
        self.dwell_left[idx] = -1

    def _respread(self, zone: int, route: int, pos: np.ndarray) -> None:
        """'zones': make the remaining drones of ``zone``'s ``route`` wait so they end up
        evenly spaced along it."""
        idx = np.flatnonzero((self.zone == zone) & (self.route_of == route) & self.active)
        if idx.size < 2:
            return
        pts = self.pmap.points[self.zone_routes[zone][route]]  # (per, 2) in flying order
        leg = np.hypot(*(np.roll(pts, -1, axis=0) - pts).T)  # (per,)
        cum = np.concatenate([[0.0], np.cumsum(leg)])  # (per+1,)
        length = cum[-1]
        if length <= 0:
            return
        k = self.route_idx[idx]  # next (or current) point of each drone
        to_go = np.minimum(np.hypot(*(pos[idx, :2] - pts[k]).T), leg[k - 1])
        s = np.mod(cum[k] - to_go, length)  # (m,) arc position along the zone tour
        m = idx.size
        gap = length / m
        order = np.argsort(s, kind="stable")[::-1]  # ahead first along the direction of travel
        s_sorted = s[order]
        best, best_wait = None, np.inf
        for a in range(m):  # anchor: the drone that does not wait
            q = np.arange(m)
            behind = np.roll(s_sorted, -a)  # anchor, then the drones behind it in turn
            want = behind[0] - q * gap
            wait = np.mod(behind - want, length)  # (m,) metres each must fall back
            wait[0] = 0.0
            if wait.max() < best_wait - 1e-9:
                best, best_wait = np.roll(wait, a), wait.max()
        assert best is not None
        step_m = self.cfg.speed_mps * self.cfg.tick_s
        self.extra_dwell[idx[order]] = np.round(best / step_m).astype(np.int64)

    def segments(self) -> list[np.ndarray]:
        """Each drone's route (global point indices in flying order); empty once departed."""
        return [r.copy() for r in self.routes]
