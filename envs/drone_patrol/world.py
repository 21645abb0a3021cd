"""``DronePatrolWorld``: the drone patrol as the Ray World actor drives it, one tick at a time.

Design (each piece is its own module, so physics, sensor or planner can change alone):

Map (``layout``): a square of side ``area_m`` centred on the origin; zones are its quadrants
(forest SW, city SE, river NW, industrial NE); a river meanders through the river quadrant;
``cruise_points_per_zone`` seeded cruise points per zone (river ones on the river).

Patrol (``patrol``): ``patrol: zones``: drone ``i`` ("drone_i") cycles through the cruise points
of zone ``i % 4``, so it only ever meets that zone's event kinds; a zone's drones start spread
along the tour. ``patrol: shared``: one short tour through every point is cut into balanced
contiguous segments, one per drone. Drones fly at distinct altitudes around ``cruise_altitude_m``
with distinct hover slots around each point; each dwells ``DWELL_TICKS`` at a point. A drone in
``departures`` leaves at its time (first tick at or after ``at_s``): it flies home and lands, the
others re-balance; it stays in every array, its true class is 'none', the task metrics ignore it
and it receives no more labels.

Physics (``physics``): PyBullet DIRECT, ground plane, one Crazyflie 2.x rigid body per drone
driven by four rotor speeds (thrust, yaw torque, rotor drag) that a cascaded controller
(position, velocity, attitude, mixer) computes for all drones at once at 48 Hz, held over
``physics_hz`` physics steps; new drone-drone and drone-ground contacts are counted as
collisions (a landing is not). ``physics_workers: 2`` (or 4) runs the west and east halves (the
zones) in their own PyBullet clients and processes (``physics_pool``): the same physics bit for
bit, since drones of different zones never meet.

Events (``events``): kinds from ``cfg.events`` appear at free cruise points of their zones
(Poisson, ``rate_per_min``, only from ``appears_after_s``, and in ``later_zones`` only from
their time), live an exponential ``duration_s`` and clear; one per point; each shown by a
collision-free marker body.

Sensor (``sensor``): observation = event signature (class prototype blended with the 'none'
prototype by visibility, plus Gaussian noise) + 4 telemetry dims. The true class is the event at
the nearest cruise point within ``sensing_radius_m``, else 'none'. With ``sensor: camera``
(``camera``) the signature is replaced by the pixels of a small downward image rendered in the
physics client; ``input_config()`` tells the agents how to read either.

Labels (``labels: observations``): an operator confirms an observation with probability
``label_fraction`` (event in view) or ``background_label_fraction`` ('none'). With ``labels:
reports`` the operator confirms (or corrects) a drone's *report* (a prediction other than 'none')
with probability ``label_fraction`` and spot-checks a silent observation with probability
``background_label_fraction``, drawn when the prediction arrives. Either way the confirmation
``(agent_index, tick_of_observation, true_class)`` is returned by the step that produces tick
``tick_of_observation + label_delay_ticks`` (tick-0 labels with no delay come with tick 1:
``reset`` returns no labels).

One tick, ``step(predictions)``: score the predictions against the observations of the current
tick; a drone that predicts the altitude-limit sign while a point is in view starts its climb;
fly ``tick_s`` (the targets are held for the tick); count sign passages and visits along the
control-rate trajectory; ``tick += 1``; update arrivals/dwell; let the drones due by the new tick
depart (re-balance); update events; observe; draw new labels; return the due ones.

Randomness: the world seed is split (``SeedSequence.spawn``) into independent streams for the
map, the class prototypes, the events, the sensor noise and the labels. ``reset`` restarts every
stream and rebuilds the PyBullet scene, so each reset replays the same episode, and the event
timeline never depends on the predictions. Same seed + same predictions => identical
observations, labels and metrics.

Metrics: see ``metrics`` for every ``task/...`` key and ``task/score = f1 * compliance``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.drone_patrol.camera import CameraSensor
from envs.drone_patrol.config import EVENT_CLASSES, ZONES, DronePatrolConfig
from envs.drone_patrol.events import EventField
from envs.drone_patrol.layout import build_map
from envs.drone_patrol.metrics import PatrolMetrics
from envs.drone_patrol.patrol import ALT_HALF_BAND_M, DWELL_TICKS, VISIT_RADIUS_M, Patroller
from envs.drone_patrol.physics import DronePhysics
from envs.drone_patrol.physics_pool import PhysicsPool, zone_groups
from envs.drone_patrol.sensor import HEADING_MIN_SPEED, TELEMETRY_DIM, FeatureSensor

SIGN = EVENT_CLASSES.index("altitude_limit_sign")
#: Slack (m) on the bounding-box test of `_near_pairs`: keeps float rounding of the box edges
#: from dropping a pair whose distance is just below VISIT_RADIUS_M.
_BOX_SLACK_M = 0.5


@dataclass
class StepResult:
    obs: np.ndarray  # (N, obs_dim) float32: observations of the new tick
    labels: np.ndarray  # (M, 3) int64 rows (agent_index, tick_of_observation, true_class)
    tick: int  # the new tick


class DronePatrolWorld:
    def __init__(self, cfg: DronePatrolConfig, n_agents: int, seed: int):
        if n_agents < 1:
            raise ValueError(f"n_agents must be >= 1, got {n_agents}")
        self.cfg = cfg
        self.n_agents = n_agents
        self.seed = seed
        self.agent_ids = [f"drone_{i}" for i in range(n_agents)]
        self.n_classes = len(EVENT_CLASSES)
        map_ss, proto_ss, event_ss, noise_ss, label_ss = np.random.SeedSequence(seed).spawn(5)
        self._noise_ss, self._label_ss = noise_ss, label_ss
        self.map = build_map(cfg, np.random.default_rng(map_ss))
        self._px_order = np.argsort(self.map.points[:, 0], kind="stable")  # (P,) by x
        self._px_sorted = self.map.points[self._px_order, 0]  # (P,)
        self.sensor: FeatureSensor | CameraSensor
        if cfg.sensor == "camera":
            self.sensor = CameraSensor(cfg, self.map)
        else:
            self.sensor = FeatureSensor(cfg, np.random.default_rng(proto_ss))
        self.obs_dim = self.sensor.obs_dim
        self.events = EventField(cfg, self.map, event_ss)
        self.patrol = Patroller(cfg, self.map, n_agents)
        self.physics: DronePhysics | PhysicsPool
        if cfg.physics_workers > 1:
            groups = zone_groups(n_agents, cfg.physics_workers)
            self.physics = PhysicsPool(cfg, self.map, self.events.hosts, groups)
        else:
            self.physics = DronePhysics(cfg, self.map, self.events.hosts)
        self._restart()

    # ---- episode -------------------------------------------------------------------------

    def _restart(self) -> np.ndarray:
        self.tick = 0
        self._noise_rng = np.random.default_rng(self._noise_ss)
        self._label_rng = np.random.default_rng(self._label_ss)
        start = self.patrol.reset()
        self.physics.reset(start)
        self._attach_sensor()  # camera: add its ground tiles again (the reset cleared the scene)
        self.events.reset()
        zones = [ZONES[int(z)] for z in self.map.point_zone]
        self.metrics = PatrolMetrics(
            self.cfg.tick_s, zones, self.patrol.tour_s, n_agents=self.n_agents
        )
        self.patrol.depart_due(0, self.physics.pos)  # drones that never take off (at_s = 0)
        self.metrics.active = self.patrol.active
        self._heading = np.zeros(self.n_agents)  # (N,) radians, kept while hovering
        # (drone * P + point) of the pairs within VISIT_RADIUS_M at the last control step, sorted
        self._over_keys = np.flatnonzero(self._over_points(self.physics.pos[None])[0])
        self._pending: dict[int, list[np.ndarray]] = defaultdict(list)  # due tick -> rows
        self._sync_events(self.events.update(0))
        return self._observe()

    def reset(self) -> np.ndarray:
        """Restart the episode (same seed, same episode); observations of tick 0 (N, obs_dim)."""
        return self._restart()

    def step(self, predictions: np.ndarray) -> StepResult:
        pred = np.asarray(predictions).astype(np.int64, copy=False).reshape(-1)
        if pred.shape != (self.n_agents,):
            raise ValueError(f"predictions must have shape ({self.n_agents},), got {pred.shape}")
        if pred.min() < 0 or pred.max() >= self.n_classes:
            raise ValueError(f"predictions must be class ids in [0, {self.n_classes})")
        self.metrics.scored(self.tick, pred, self._true, self._event_id)
        if self.cfg.labels == "reports":
            reported = (pred > 0) & self.patrol.active
            self._draw_labels(
                np.where(reported, self.cfg.label_fraction, self.cfg.background_label_fraction)
            )
        self.patrol.act(pred, self._point_in_view, self.physics.pos)

        traj = self.physics.advance(self.patrol.targets(self.physics.pos))  # (K, N, 3)
        self._passages(traj)
        self.metrics.collisions = self.physics.drone_collisions + self.physics.ground_collisions

        self.tick += 1
        self.patrol.update(self.physics.pos)
        if self.patrol.changes_due(self.tick, self.physics.pos):
            self.metrics.active = self.patrol.active  # only patrolling drones' views count
        self._sync_events(self.events.update(self.tick))
        obs = self._observe()
        due = self._pending.pop(self.tick, [])
        labels = np.concatenate(due) if due else np.zeros((0, 3), dtype=np.int64)
        # No operator confirms what a departed drone sees from its way home or the ground.
        labels = labels[self.patrol.depart_tick[labels[:, 0]] > labels[:, 1]]
        self.metrics.labelled(self.tick, labels)
        return StepResult(obs=obs, labels=labels, tick=self.tick)

    # ---- pieces of a tick ---------------------------------------------------------------

    def _sync_events(self, changed: np.ndarray) -> None:
        for pt in changed:
            self.physics.show_event(int(pt), int(self.events.kind[pt]))

    def _over_points(self, traj: np.ndarray) -> np.ndarray:
        """(K, N, 3) positions -> (K, N, P) bool: within VISIT_RADIUS_M of each point."""
        d = np.linalg.norm(traj[:, :, None, :2] - self.map.points[None, None], axis=-1)
        return d < VISIT_RADIUS_M

    def _box_pairs(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Keys ``drone * P + point``, sorted, of every point inside each drone's box
        [lo, hi] (N, 2) (edges included): the points in the box's x range from the points
        sorted by x (``searchsorted``), then their y tested; a few per drone where a dense (N, P)
        test costs ~10 ms a tick at 1,000 drones and 1,000 points."""
        px = self._px_sorted  # (P,) x of the points, ascending
        first = np.searchsorted(px, lo[:, 0], side="left")  # (N,) first x >= lo
        stop = np.searchsorted(px, hi[:, 0], side="right")  # (N,) first x > hi
        count = np.maximum(stop - first, 0)
        drone = np.repeat(np.arange(len(lo)), count)  # (M,)
        start = np.repeat(first - np.cumsum(count) + count, count)  # (M,) offset of each run
        point = self._px_order[start + np.arange(count.sum())]  # (M,)
        y = self.map.points[point, 1]
        keep = (y >= lo[drone, 1]) & (y <= hi[drone, 1])
        return np.sort(drone[keep] * self.map.n_points + point[keep])

    def _near_pairs(self, traj: np.ndarray, active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(drone, point) index pairs (M,), (M,), drone by drone and point by point, that
        `_passages` must look at: an active drone and a point within VISIT_RADIUS_M of its
        tick's bounding box (so of any of its control steps ``traj`` (K, N, 3)), or one it was
        over at the last tick. Every other pair is outside the disc all tick: the dense
        (K, N, P) test costs ~150 ms a tick at 1,000 drones and 128 points, this one a few."""
        reach = VISIT_RADIUS_M + _BOX_SLACK_M
        lo = traj[:, :, :2].min(axis=0) - reach  # (N, 2)
        hi = traj[:, :, :2].max(axis=0) + reach  # (N, 2)
        keys = np.union1d(self._box_pairs(lo, hi), self._over_keys)  # sorted, unique
        drone, point = np.divmod(keys, self.map.n_points)
        return drone[active[drone]], point[active[drone]]

    def _passages(self, traj: np.ndarray) -> None:
        active = self.patrol.active  # (N,) a departed drone neither visits nor passes signs
        # Only the (drone, point) pairs that can be within the disc: the same distances and
        # comparisons as `_over_points` on every pair, on far fewer pairs.
        drone, point = self._near_pairs(traj, active)  # (M,), (M,)
        d = np.linalg.norm(traj[:, drone, :2] - self.map.points[point][None], axis=-1)  # (K, M)
        over = d < VISIT_RADIUS_M  # (K, M)
        keys = drone * self.map.n_points + point  # (M,) sorted
        was_over = np.isin(keys, self._over_keys, assume_unique=True)
        seq = np.concatenate([was_over[None], over], axis=0)  # (K+1, M)
        left = seq[:-1] & ~seq[1:]  # (K, M) left a point's disc
        # A sign counts once a drone could have obeyed it: it was there at the previous tick's
        # observation too. One that appears while a drone is already leaving its point cannot
        # be obeyed (a Crazyflie at cruise speed needs ~1 m and ~0.5 s to stop).
        appeared = np.array(
            [self.events.log[e].appear_tick if e >= 0 else 0 for e in self.events.event_id]
        )
        sign = (self.events.kind == SIGN) & (appeared < self.tick)  # (P,)
        passes = left & sign[point][None, :]  # (K, M)
        below = traj[:, drone, 2] < self.cfg.altitude_limit_m  # (K, M)
        self.metrics.sign_passages += int(passes.sum())
        self.metrics.violations += int((passes & below).sum())
        k, m = np.nonzero(passes)  # in time order within the tick
        self.metrics.sign_passed(self.tick, drone[m], below[k, m])
        self._over_keys = keys[over[-1]]  # over at the last control step
        visited = np.zeros(self.map.n_points, dtype=bool)  # (P,)
        visited[point[over.any(axis=0)]] = True
        now_s = (self.tick + 1) * self.cfg.tick_s
        self.metrics.patrolled(now_s, visited, int(active.sum()))

    def _attach_sensor(self) -> None:
        """After every physics reset: the camera's scene (ground tiles) goes into the client."""
        if isinstance(self.sensor, CameraSensor):
            assert isinstance(self.physics, DronePhysics)  # the config keeps the camera in one
            self.sensor.attach(self.physics)

    def _nearest_point(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions (N, 2) -> the nearest cruise point (N,) and its distance (N,), for the
        drones with a point within sensing_radius_m; (0, inf) for the others, which see none.

        The distances and the choice (the lowest index among equally near points) are those of
        a dense (N, P) argmin; only the pairs within a square of the radius are computed (the
        dense form is ~10 ms a tick at 1,000 drones and 248 points)."""
        pts = self.map.points  # (P, 2)
        reach = self.cfg.sensing_radius_m + _BOX_SLACK_M
        drone, point = np.divmod(self._box_pairs(xy - reach, xy + reach), self.map.n_points)
        d = np.linalg.norm(xy[drone] - pts[point], axis=-1)  # (M,)
        order = np.lexsort((point, d, drone))  # by drone, then distance, then point index
        drone, point, d = drone[order], point[order], d[order]
        first = np.flatnonzero(np.diff(drone, prepend=-1))  # each drone's nearest
        nearest = np.zeros(len(xy), dtype=np.int64)
        dmin = np.full(len(xy), np.inf)
        nearest[drone[first]] = point[first]
        dmin[drone[first]] = d[first]
        return nearest, dmin

    def _observe(self) -> np.ndarray:
        pos, vel = self.physics.pos, self.physics.vel
        nearest, dmin = self._nearest_point(pos[:, :2])  # (N,), (N,)
        # a drone that left the patrol reports nothing, even parked near a cruise point
        in_view = (dmin < self.cfg.sensing_radius_m) & self.patrol.active
        self._point_in_view = np.where(in_view, nearest, -1)  # (N,)
        self._true = np.where(in_view, self.events.kind[nearest], 0).astype(np.int64)  # (N,)
        self._event_id = np.where(self._true > 0, self.events.event_id[nearest], -1)  # (N,)
        speed_xy = np.hypot(vel[:, 0], vel[:, 1])
        moving = speed_xy > HEADING_MIN_SPEED
        self._heading[moving] = np.arctan2(vel[moving, 1], vel[moving, 0])
        speed = np.linalg.norm(vel, axis=1)
        if isinstance(self.sensor, CameraSensor):
            assert isinstance(self.physics, DronePhysics)
            obs = self.sensor.observe(self.physics, speed, self._heading, self._noise_rng)
        else:
            vis = np.where(in_view, self.sensor.visibility(dmin), 0.0)
            obs = self.sensor.observe(
                self._true, vis, pos[:, 2], speed, self._heading, self._noise_rng
            )
        self.metrics.observed(self.tick, self._event_id)

        if self.cfg.labels == "observations":
            self._draw_labels(
                np.where(
                    self._true > 0, self.cfg.label_fraction, self.cfg.background_label_fraction
                )
            )
        return obs

    def _draw_labels(self, frac: np.ndarray) -> None:
        """Each drone's current observation gets its true class as a label with probability
        ``frac`` (N,); the label is delivered ``label_delay_ticks`` later."""
        # a drone that does not patrol (parked, departed) reports nothing to confirm
        chosen = np.flatnonzero((self._label_rng.random(self.n_agents) < frac) & self.patrol.active)
        if chosen.size:
            rows = np.stack(
                [chosen, np.full(chosen.size, self.tick), self._true[chosen]], axis=1
            ).astype(np.int64)  # (M, 3)
            self._pending[max(self.tick + self.cfg.label_delay_ticks, 1)].append(rows)

    # ---- probes and read-outs -----------------------------------------------------------

    def probe_set(self, per_class: int, window: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Held-out windows from the live sensor model: X (C*per_class, window, obs_dim) float32,
        y (C*per_class,) int64 = class of the last token.

        Each window is a drone's view on its way to a cruise point whose event is ``y`` (or an
        empty point for 'none'): half the windows end while hovering over the point (the last
        up to DWELL_TICKS tokens at rest within VISIT_RADIUS_M), half during the approach (last
        token uniform within the sensing radius); earlier tokens step back along a straight line
        at cruise speed, background once beyond the radius. Cruise altitude jitters like the
        drones' altitude band; the heading is uniform. Uses its own generator: the live episode
        is untouched, and the same seed gives the same probe set.

        Camera sensor: the windows are rendered in a scene of their own (``render_probe``): an
        event window shows its marker at a cruise point that can host it (any point if none
        can), a 'none' window an empty point, the drone flying along its heading toward it.
        """
        if per_class < 1 or window < 1:
            raise ValueError("per_class and window must be >= 1")
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, seed, 0x9E0B]))
        n, w = self.n_classes * per_class, window
        y = np.repeat(np.arange(self.n_classes, dtype=np.int64), per_class)  # (n,)
        hover = rng.random(n) < 0.5
        d_last = np.where(
            hover,
            rng.uniform(0, VISIT_RADIUS_M, n),
            rng.uniform(0, self.cfg.sensing_radius_m, n),
        )  # (n,)
        n_rest = np.where(hover, rng.integers(1, DWELL_TICKS + 1, n), 0)  # (n,)
        back = np.arange(w)[::-1][None, :]  # (1, w) tokens before the last
        moving = back >= n_rest[:, None]  # (n, w) in flight (the rest are hovering)
        # Steps back from d_last: a hovering window's first moving token is one step out.
        steps = np.where(moving, back - n_rest[:, None] + hover[:, None], 0)  # (n, w)
        dist = d_last[:, None] + steps * self.cfg.speed_mps * self.cfg.tick_s  # (n, w)
        in_view = dist < self.cfg.sensing_radius_m
        alt = self.cfg.cruise_altitude_m + rng.uniform(-ALT_HALF_BAND_M, ALT_HALF_BAND_M, n)
        altitude = np.broadcast_to(alt[:, None], (n, w))
        speed = np.where(moving, self.cfg.speed_mps, 0.0)
        heading = np.broadcast_to(rng.uniform(-np.pi, np.pi, n)[:, None], (n, w))
        if isinstance(self.sensor, CameraSensor):
            point = np.empty(n, dtype=np.int64)  # (n,) the cruise point each window flies to
            for c in range(self.n_classes):
                hosts = [pt for pt, k in self.events.hosts if k == c]
                pool = np.array(hosts or range(self.map.n_points))
                point[y == c] = rng.choice(pool, per_class)
            toward = np.stack([np.cos(heading), np.sin(heading)], -1)  # (n, w, 2)
            xy = self.map.points[point][:, None] - dist[..., None] * toward  # (n, w, 2)
            eyes = np.concatenate([xy, altitude[..., None]], -1)  # (n, w, 3)
            images = self.sensor.render_probe(point, y, eyes)  # (n, w, px, px, 3)
            return self.sensor.to_obs(images, altitude, speed, heading, rng), y
        cls = np.where(in_view, y[:, None], 0)  # (n, w)
        vis = np.where(in_view, self.sensor.visibility(dist), 0.0)
        x = self.sensor.observe(cls, vis, altitude, speed, heading, rng)  # (n, w, obs_dim)
        return x, y

    def input_config(self) -> dict[str, Any]:
        """How the agents read one flat observation, as the fields of ``agents.yan.io.
        InputConfig``: features -> one vector of ``obs_dim``; camera -> an image (the first
        ``camera_px**2 * 3`` values, HWC) split into ``camera_patch`` patches, then the
        telemetry vector."""
        if isinstance(self.sensor, CameraSensor):
            px = self.cfg.camera_px
            image = {"height": px, "width": px, "channels": 3, "patch": self.cfg.camera_patch}
            return {"vector_dim": TELEMETRY_DIM, "image": image}
        return {"vector_dim": self.obs_dim}

    def true_classes(self) -> np.ndarray:
        """True class of each agent's current observation (N,) int64 (for tests and oracles);
        'none' for a departed drone (it observes nothing useful)."""
        return np.where(self.patrol.active, self._true, 0)

    def target_points(self) -> np.ndarray:
        """Index (into ``layout()['cruise_points']``) of each drone's current target (N,); -1
        for a departed drone."""
        return self.patrol.target_points()

    def join_ticks(self) -> list[int]:
        """The tick at which each drone joins the patrol (``arrivals``; 0: from the start)."""
        return [int(t) for t in self.patrol.arrive_tick]

    def patrolling(self) -> np.ndarray:
        """(N,) bool: the drone patrols (has not departed). Departed drones stay in every array
        (observations keep their shape); they fly home, land and are ignored by the metrics."""
        return self.patrol.active

    def patrol_routes(self) -> list[list[int]]:
        """Each drone's route: the cruise points (indices into ``layout()['cruise_points']``) it
        cycles through in order; empty for a departed drone."""
        return [r.tolist() for r in self.patrol.segments()]

    def event_log(self) -> list[dict[str, Any]]:
        """Every event so far: id, point, zone, kind, appear_tick, clear_tick (planned)."""
        return [
            {
                "id": r.id,
                "point": r.point,
                "zone": ZONES[int(self.map.point_zone[r.point])],
                "kind": EVENT_CLASSES[r.cls],
                "appear_tick": r.appear_tick,
                "clear_tick": r.clear_tick,
            }
            for r in self.events.log
        ]

    def task_metrics(self) -> dict[str, float]:
        return self.metrics.summary(self.events.log, self.tick)

    def positions(self) -> np.ndarray:
        return self.physics.pos.astype(np.float32)

    def velocities(self) -> np.ndarray:
        return self.physics.vel.astype(np.float32)

    def layout(self) -> dict[str, Any]:
        return self.map.to_dict()

    def close(self) -> None:
        self.physics.close()
