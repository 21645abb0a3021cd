"""Typed config of the drone patrol world (no pybullet import)."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import Field, model_validator

from swarm._config import MAX_AGENT_INDEX, MAX_TICK, Section

#: Event classes an agent must tell apart; index = class id. "none" is background.
EVENT_CLASSES: tuple[str, ...] = (
    "none",
    "fire",
    "garbage_overflow",
    "river_garbage",
    "altitude_limit_sign",
)
ZONES: tuple[str, ...] = ("forest", "city", "river", "industrial")

#: Latest simulated time a world key may name, seconds: MAX_TICK ticks of the longest tick_s
#: (10 s). Anything later would never happen in any run, and `first_tick` of it at the
#: shortest tick_s (1 ms) stays far inside the int64 tick arrays (~1.1e16 < 9.2e18).
MAX_TIME_S = MAX_TICK * 10.0
#: Most cruise points per zone (and so routes per zone: a route needs a point).
MAX_POINTS_PER_ZONE = 1024


def first_tick(t_s: float, tick_s: float) -> int:
    """The first tick at or after the simulated time ``t_s``: what every scheduled thing of the
    world (events, departures, arrivals, rotations, leads) rounds to. A small epsilon keeps
    float division honest: 3.0 s / 0.5 s is tick 6, not 7."""
    return int(np.ceil(t_s / tick_s - 1e-9))


#: The default world's beat: its area side, and drones (and cruise points) per zone route.
BEAT_AREA_M, BEAT_DRONES, BEAT_ROUTE = 160.0, 12, 3


def scaled_layout(n_agents: int) -> dict[str, float | int]:
    """The world keys that keep each of ``n_agents`` drones' beat as in the default world (12
    drones, 160 m, 3 points and 3 drones per zone): the area grows with sqrt(n) so the points
    stay as dense, a zone gets one point per drone, and its drones fly routes of ~3 points in
    groups of ~3. A drone then has an event in view as often as in the default world, however
    many fly (bench/scale_bench.py, scenarios/swarm_scale.yaml)."""
    per_zone = max(BEAT_ROUTE, n_agents // 4)
    return {
        "area_m": round(BEAT_AREA_M * max(1.0, n_agents / BEAT_DRONES) ** 0.5, 1),
        "cruise_points_per_zone": per_zone,
        "routes_per_zone": max(1, per_zone // BEAT_ROUTE),
    }


class EventKindConfig(Section):
    """Where and how often one kind of event appears at cruise points."""

    zones: list[Literal["forest", "city", "river", "industrial"]] = Field(min_length=1)
    """Zones whose cruise points can host this event kind."""
    rate_per_min: float = Field(1.0, gt=0, le=6000)
    """Mean appearances per cruise point per simulated minute while the point is free; at most
    6,000 (100 a second), past which a freed point refills at the next tick anyway (with
    probability 1 - e^-10 at 0.1 s ticks)."""
    duration_s: float = Field(60.0, gt=0, le=MAX_TIME_S)
    """Mean lifetime of one event before it clears; at most MAX_TIME_S (the longest run)."""
    appears_after_s: float = Field(0.0, ge=0, le=MAX_TIME_S)
    """The kind does not exist before this simulated time (new kinds appear mid-run); at most
    MAX_TIME_S, the longest run."""
    later_zones: dict[
        Literal["forest", "city", "river", "industrial"],
        Annotated[float, Field(ge=0, le=MAX_TIME_S)],
    ] = Field(default_factory=dict)
    """Zones the kind spreads to mid-run, with the simulated time (s) it first exists there:
    ``{industrial: 150}`` makes drones of the industrial zone meet it long after the others.
    Times from 0 to MAX_TIME_S, the longest run."""


EventName = Literal["fire", "garbage_overflow", "river_garbage", "altitude_limit_sign"]


def _default_events() -> dict[EventName, EventKindConfig]:
    # Each zone hosts its own kinds, so a drone patrolling one zone meets only some of them:
    # that is what makes sharing knowledge worth anything.
    return {
        "fire": EventKindConfig(zones=["forest"], rate_per_min=2.0, duration_s=60.0),
        "garbage_overflow": EventKindConfig(zones=["city"], rate_per_min=2.0, duration_s=60.0),
        "river_garbage": EventKindConfig(zones=["river"], rate_per_min=2.0, duration_s=60.0),
        "altitude_limit_sign": EventKindConfig(
            zones=["industrial"], rate_per_min=2.0, duration_s=90.0
        ),
    }


class Departure(Section):
    """A drone that leaves the patrol (battery, fault) at a simulated time."""

    agent: int = Field(ge=0, le=MAX_AGENT_INDEX)
    """Index of the drone (``drone_<agent>``), at most MAX_AGENT_INDEX (200,000)."""
    at_s: float = Field(ge=0, le=MAX_TIME_S)
    """Simulated time at which it leaves: it flies home and lands, and no longer patrols. At
    most MAX_TIME_S, the longest run."""


class Arrival(Section):
    """A drone that joins the patrol mid-run, with a fresh model (a replacement, a new unit)."""

    agent: int = Field(ge=0, le=MAX_AGENT_INDEX)
    """Index of the drone (``drone_<agent>``), at most MAX_AGENT_INDEX (200,000)."""
    at_s: float = Field(gt=0, le=MAX_TIME_S)
    """Simulated time at which it takes off and joins its group's patrol. Until then it stands
    on the ground at its start position: it patrols, observes, reports and learns nothing, and
    the learners give it a fresh model when it joins. At most MAX_TIME_S, the longest run."""


class DronePatrolConfig(Section):
    """A PyBullet area with zones, a river, cruise points and events from the brief."""

    kind: Literal["drone_patrol"] = "drone_patrol"
    """World type; the only built-in world for now."""
    area_m: float = Field(160.0, gt=10, le=100_000)
    """Side of the square patrol area, metres; the four zones are its quadrants. At most 100 km,
    seven times the ~14.6 km at which agents.count's cap (100,000 drones) keeps the default
    beat (`scaled_layout`)."""
    cruise_points_per_zone: int = Field(3, ge=1, le=MAX_POINTS_PER_ZONE)
    """Cruise points in each zone; a drone cycles through the points of its zone (of its route
    in the zone, with ``routes_per_zone``)."""
    cruise_altitude_m: float = Field(6.0, gt=0, le=1000)
    """Normal patrol altitude, below the 10 m that an altitude-limit sign demands. At most 1 km,
    eight times the 120 m ceiling of open-category drones (EU 2019/947; 400 ft in the US)."""
    altitude_limit_m: float = Field(10.0, gt=0, le=1000)
    """A drone that recognises an altitude-limit sign climbs above this before going on; at
    most 1 km, as cruise_altitude_m."""
    speed_mps: float = Field(8.0, gt=0, le=40)
    """Cruise speed."""
    tick_s: float = Field(0.5, ge=0.001, le=10)
    """Simulated seconds per tick (one observation and one decision per agent). At least 1 ms:
    two steps of the fastest physics (2,000 Hz), and MAX_TIME_S in ticks stays inside int64."""
    physics_hz: int = Field(240, ge=30, le=2000)
    """PyBullet step rate (240 Hz is the common quadrotor-simulation rate)."""
    physics_workers: Literal[1, 2, 4] = 1
    """Processes that share the physics (envs/drone_patrol/physics_pool.py): 2 splits the
    drones into the west and east halves of the map, 4 into the zones, each half (zone) in its
    own PyBullet client and process; the same physics, since drones of different zones never
    meet. For large swarms on several cores (``patrol: zones`` and ``sensor: features`` only)."""
    sensor: Literal["features", "camera"] = "features"
    """Perception: 'features' is the fast synthetic feature sensor (large swarms); 'camera'
    renders a small downward RGB image of the scene under each drone with PyBullet."""
    camera_px: int = Field(16, ge=4, le=128)
    """Side of the square camera image, pixels (sensor: camera)."""
    camera_patch: int = Field(4, ge=1, le=128)
    """Side of the square patch the model reads as one token (must divide camera_px)."""
    camera_fov_deg: float = Field(60.0, gt=5, lt=170)
    """Field of view of the downward camera, degrees."""
    patrol: Literal["zones", "shared"] = "zones"
    """Patrol coordination: 'zones' = drone i patrols zone i % 4 (each meets only some event
    kinds); 'shared' = all cruise points are split among the drones along one tour and
    re-balanced whenever a drone leaves."""
    routes_per_zone: int = Field(1, ge=1, le=MAX_POINTS_PER_ZONE)
    """``patrol: zones``: each zone's cruise points are cut into this many routes (contiguous
    pieces of a short tour of the zone, envs/drone_patrol/patrol.py) and the zone's drones are
    spread over them in turn. 1: every drone of a zone cycles all its points. A large swarm
    keeps each drone's beat as small as the default's (3 drones on 3 points) with more routes,
    where one route per zone would queue hundreds of drones on one tour. At most
    cruise_points_per_zone (a route needs a point), so at most MAX_POINTS_PER_ZONE (1,024)."""
    departures: list[Departure] = Field(default_factory=list)
    """Drones that leave the patrol mid-run (the others take over their cruise points)."""
    arrivals: list[Arrival] = Field(default_factory=list)
    """Drones that join mid-run with a fresh model (the others make room for them)."""
    rotation_s: float | None = Field(None, gt=0, le=MAX_TIME_S)
    """Shift rotation (``patrol: zones``): every ``rotation_s`` simulated seconds each zone's
    drones move on to the next zone (ZONES order), so every drone meets, in turn, kinds it may
    never have had a label of. None: drones keep their zone. At most MAX_TIME_S, the longest
    run."""
    feature_dim: int = Field(12, ge=2, le=1024)
    """Length of the event signature part of a feature observation."""
    feature_noise: float = Field(0.6, ge=0, le=100)
    """Std of the Gaussian noise on the signature (the task's difficulty); at most 100 times
    the unit spread of the class prototypes (envs/drone_patrol/sensor.py), where the signature
    is noise."""
    sensing_radius_m: float = Field(10.0, gt=0, le=1000)
    """An event is in view when the drone is this close to its cruise point (horizontally); at
    most 1 km, far past where a drone's downward sensor makes out an event."""
    label_fraction: float = Field(0.3, ge=0, le=1)
    """Fraction of event observations an operator confirms (labels are scarce)."""
    background_label_fraction: float = Field(0.05, ge=0, le=1)
    """Fraction of background ('none') observations that get a label."""
    labels: Literal["observations", "reports"] = "observations"
    """Where labels come from. 'observations': the operator labels a random fraction of what
    drones see (label_fraction of event observations, background_label_fraction of the rest),
    whatever they answered. 'reports': the operator confirms or corrects label_fraction of the
    drones' reports (an answer other than 'none') and spot-checks background_label_fraction of
    the silent observations, so a drone that never reports an event rarely learns of it."""
    label_delay_ticks: int = Field(4, ge=0, le=MAX_TICK)
    """Labels arrive this many ticks after the observation (operators are slow); at most
    MAX_TICK (2^40), the longest run."""
    events: dict[EventName, EventKindConfig] = Field(default_factory=_default_events)
    """Event kinds by name (from EVENT_CLASSES)."""

    @model_validator(mode="after")
    def _camera_patches(self) -> DronePatrolConfig:
        if self.camera_px % self.camera_patch:
            raise ValueError(
                f"camera_patch ({self.camera_patch}) must divide camera_px ({self.camera_px})"
            )
        return self

    @model_validator(mode="after")
    def _physics_split_by_zone(self) -> DronePatrolConfig:
        if self.physics_workers > 1 and (self.patrol != "zones" or self.sensor != "features"):
            # 'shared' routes cross the zones, and the camera renders every drone's client
            raise ValueError(
                f"physics_workers: {self.physics_workers} splits the drones by zone: it needs "
                f"patrol: zones and sensor: features (got patrol: {self.patrol}, sensor: "
                f"{self.sensor})"
            )
        return self

    @model_validator(mode="after")
    def _rotation_by_zone(self) -> DronePatrolConfig:
        if self.rotation_s is not None and (self.patrol != "zones" or self.physics_workers > 1):
            # 'shared' has no zones to rotate through; the physics pool keeps a zone's drones
            # in their own process, which a drone moving to another zone would leave
            raise ValueError(
                f"rotation_s moves drones from zone to zone: it needs patrol: zones and "
                f"physics_workers: 1 (got patrol: {self.patrol}, physics_workers: "
                f"{self.physics_workers})"
            )
        return self

    @model_validator(mode="after")
    def _routes_in_zones(self) -> DronePatrolConfig:
        if self.routes_per_zone > 1 and self.patrol != "zones":
            raise ValueError(
                f"routes_per_zone: {self.routes_per_zone} cuts each zone's tour: it needs "
                f"patrol: zones (got patrol: {self.patrol})"
            )
        if self.routes_per_zone > self.cruise_points_per_zone:
            raise ValueError(
                f"routes_per_zone ({self.routes_per_zone}) must not exceed "
                f"cruise_points_per_zone ({self.cruise_points_per_zone}): a route needs a point"
            )
        return self

    @model_validator(mode="after")
    def _arrivals_before_departures(self) -> DronePatrolConfig:
        joins: dict[int, float] = {}
        for a in self.arrivals:
            if a.agent in joins:
                raise ValueError(f"arrivals: agent {a.agent} (drone_{a.agent}) arrives twice")
            joins[a.agent] = a.at_s
        for d in self.departures:
            if d.agent in joins and d.at_s <= joins[d.agent]:
                raise ValueError(
                    f"departures: agent {d.agent} (drone_{d.agent}) departs at {d.at_s:g} s, "
                    f"not after it arrives ({joins[d.agent]:g} s)"
                )
        return self

    @model_validator(mode="after")
    def _altitudes(self) -> DronePatrolConfig:
        if self.cruise_altitude_m >= self.altitude_limit_m:
            # Otherwise no sign could ever be violated and the task figure means nothing.
            raise ValueError(
                f"cruise_altitude_m ({self.cruise_altitude_m}) must be below "
                f"altitude_limit_m ({self.altitude_limit_m})"
            )
        return self
