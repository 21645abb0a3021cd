"""Every environment we ship passes PettingZoo's parallel API and seed tests (one row each):
our drone patrol (feature and camera sensor) and the standard env of scenarios/spread.yaml, built
exactly as that scenario builds it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test, parallel_seed_test

from envs.drone_patrol.config import DronePatrolConfig
from envs.drone_patrol.pz import DronePatrolParallelEnv
from swarm.scenario import load_scenario

SPREAD = Path(__file__).parents[1] / "scenarios" / "spread.yaml"


def _scenario_env() -> Any:
    from envs.pz_world import load_env_factory

    world = load_scenario(SPREAD).world
    assert world.kind == "pettingzoo"
    return load_env_factory(world.env)(**world.kwargs, render_mode="rgb_array")


ENVS = {
    "drone_patrol_v0": lambda: DronePatrolParallelEnv(
        DronePatrolConfig(cruise_points_per_zone=1, area_m=80), n_agents=3, max_cycles=30,
        render_mode="rgb_array",
    ),
    "drone_patrol_v0-camera": lambda: DronePatrolParallelEnv(
        DronePatrolConfig(cruise_points_per_zone=1, area_m=80, sensor="camera", camera_px=8),
        n_agents=2, max_cycles=20, render_mode="rgb_array",
    ),
    "spread.yaml (mpe2 simple_spread_v3)": _scenario_env,
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(ENVS))
def test_parallel_api(name: str) -> None:
    env = ENVS[name]()
    parallel_api_test(env, num_cycles=40)
    env.close()


@pytest.mark.parametrize("name", sorted(ENVS))
def test_parallel_seed(name: str) -> None:
    parallel_seed_test(ENVS[name])


@pytest.mark.parametrize("name", sorted(ENVS))
def test_renders_rgb_array(name: str) -> None:
    env = ENVS[name]()
    env.reset(seed=1)
    frame = env.render()
    env.close()
    assert frame is not None and frame.dtype == np.uint8 and frame.shape[2] == 3
    assert len(np.unique(frame.reshape(-1, 3), axis=0)) >= 4  # zones, points, drones drawn


def test_drone_patrol_rewards_correct_reports() -> None:
    env = DronePatrolParallelEnv(DronePatrolConfig(cruise_points_per_zone=1, area_m=80),
                                 n_agents=4, max_cycles=60)  # fmt: skip
    _, infos = env.reset(seed=3)
    total_oracle = 0.0
    for _ in range(60):
        actions = {a: infos[a]["true_class"] for a in env.agents}  # a perfect observer
        _, rewards, _, _, infos = env.step(actions)
        assert all(r >= 0 for r in rewards.values())
        total_oracle += sum(rewards.values())
    env.close()
    assert total_oracle > 0  # events were in view and reported
    assert env.agents == []  # truncated after max_cycles
