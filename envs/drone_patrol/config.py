"""Typed config of the drone patrol world (no pybullet import)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from swarm._config import Section

#: Event classes an agent must tell apart; index = class id. "none" is background.
EVENT_CLASSES: tuple[str, ...] = (
    "none",
    "fire",
    "garbage_overflow",
    "river_garbage",
    "altitude_limit_sign",
)
ZONES: tuple[str, ...] = ("forest", "city", "river", "industrial")


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
    rate_per_min: float = Field(1.0, gt=0)
    """Mean appearances per cruise point per simulated minute while the point is free."""
    duration_s: float = Field(60.0, gt=0)
    """Mean lifetime of one event before it clears."""
    appears_after_s: float = Field(0.0, ge=0)
    """The kind does not exist before this simulated time (new kinds appear mid-run)."""
    later_zones: dict[Literal["forest", "city", "river", "industrial"], float] = Field(
        default_factory=dict
    )
    """Zones the kind spreads to mid-run, with the simulated time (s) it first exists there:
    ``{industrial: 150}`` makes drones of the industrial zone meet it long after the others."""


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

    agent: int = Field(ge=0)
    """Index of the drone (``drone_<agent>``)."""
    at_s: float = Field(ge=0)
    """Simulated time at which it leaves: it flies home and lands, and no longer patrols."""


class Arrival(Section):
    """A drone that joins the patrol mid-run, with a fresh model (a replacement, a new unit)."""

    agent: int = Field(ge=0)
    """Index of the drone (``drone_<agent>``)."""
    at_s: float = Field(gt=0)
    """Simulated time at which it takes off and joins its group's patrol. Until then it stands
    on the ground at its start position: it patrols, observes, reports and learns nothing, and
    the learners give it a fresh model when it joins."""


class DronePatrolConfig(Section):
    """A PyBullet area with zones, a river, cruise points and events from the brief."""

    kind: Literal["drone_patrol"] = "drone_patrol"
    """World type; the only built-in world for now."""
    area_m: float = Field(160.0, gt=10)
    """Side of the square patrol area, metres; the four zones are its quadrants."""
    cruise_points_per_zone: int = Field(3, ge=1, le=1024)
    """Cruise points in each zone; a drone cycles through the points of its zone (of its route
    in the zone, with ``routes_per_zone``)."""
    cruise_altitude_m: float = Field(6.0, gt=0)
    """Normal patrol altitude, below the 10 m that an altitude-limit sign demands."""
    altitude_limit_m: float = Field(10.0, gt=0)
    """A drone that recognises an altitude-limit sign climbs above this before going on."""
    speed_mps: float = Field(8.0, gt=0, le=40)
    """Cruise speed."""
    tick_s: float = Field(0.5, gt=0, le=10)
    """Simulated seconds per tick (one observation and one decision per agent)."""
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
    routes_per_zone: int = Field(1, ge=1)
    """``patrol: zones``: each zone's cruise points are cut into this many routes (contiguous
    pieces of a short tour of the zone, envs/drone_patrol/patrol.py) and the zone's drones are
    spread over them in turn. 1: every drone of a zone cycles all its points. A large swarm
    keeps each drone's beat as small as the default's (3 drones on 3 points) with more routes,
    where one route per zone would queue hundreds of drones on one tour."""
    departures: list[Departure] = Field(default_factory=list)
    """Drones that leave the patrol mid-run (the others take over their cruise points)."""
    arrivals: list[Arrival] = Field(default_factory=list)
    """Drones that join mid-run with a fresh model (the others make room for them)."""
    rotation_s: float | None = Field(None, gt=0)
    """Shift rotation (``patrol: zones``): every ``rotation_s`` simulated seconds each zone's
    drones move on to the next zone (ZONES order), so every drone meets, in turn, kinds it may
    never have had a label of. None: drones keep their zone."""
    feature_dim: int = Field(12, ge=2, le=1024)
    """Length of the event signature part of a feature observation."""
    feature_noise: float = Field(0.6, ge=0)
    """Std of the Gaussian noise on the signature (the task's difficulty)."""
    sensing_radius_m: float = Field(10.0, gt=0)
    """An event is in view when the drone is this close to its cruise point (horizontally)."""
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
    label_delay_ticks: int = Field(4, ge=0)
    """Labels arrive this many ticks after the observation (operators are slow)."""
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
