"""Typed config of the drone patrol world (no pybullet import)."""

from __future__ import annotations

from typing import Literal

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


class DronePatrolConfig(Section):
    """A PyBullet area with zones, a river, cruise points and events from the brief."""

    kind: Literal["drone_patrol"] = "drone_patrol"
    """World type; the only built-in world for now."""
    area_m: float = Field(160.0, gt=10)
    """Side of the square patrol area, metres; the four zones are its quadrants."""
    cruise_points_per_zone: int = Field(3, ge=1, le=64)
    """Cruise points in each zone; a drone cycles through the points of its zone."""
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
    sensor: Literal["features"] = "features"
    """Perception: 'features' is the fast synthetic feature sensor."""
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
    label_delay_ticks: int = Field(4, ge=0)
    """Labels arrive this many ticks after the observation (operators are slow)."""
    events: dict[EventName, EventKindConfig] = Field(default_factory=_default_events)
    """Event kinds by name (from EVENT_CLASSES)."""

    @model_validator(mode="after")
    def _altitudes(self) -> DronePatrolConfig:
        if self.cruise_altitude_m >= self.altitude_limit_m:
            # Otherwise no sign could ever be violated and the task figure means nothing.
            raise ValueError(
                f"cruise_altitude_m ({self.cruise_altitude_m}) must be below "
                f"altitude_limit_m ({self.altitude_limit_m})"
            )
        return self
