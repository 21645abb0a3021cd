"""Unit tests of envs/pz_world.py: any PettingZoo ParallelEnv as the Runner's world, here MPE2
simple_spread with tiny episodes (no Ray)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from envs.pz_config import PettingZooConfig
from envs.pz_world import ParallelEnvWorld, load_env_factory

pytest.importorskip("mpe2")

SPREAD = "mpe2.simple_spread_v3:parallel_env"
OBS_DIM = 18  # N = 3: own velocity 2, own position 2, 3 landmarks 6, 2 others 4, their comm 4
N_ACTIONS = 5  # no-op, left, right, down, up


def _world(copies: int = 2, max_cycles: int = 3, seed: int = 0, **kwargs: Any) -> ParallelEnvWorld:
    cfg = PettingZooConfig(
        env=SPREAD,
        kwargs={"N": 3, "max_cycles": max_cycles, "continuous_actions": False, **kwargs},
        copies=copies,
    )
    return ParallelEnvWorld(cfg, 3 * copies, seed)


def test_shapes_spaces_and_agent_ids_with_copies() -> None:
    world = _world(copies=2)
    obs = world.reset()
    assert (world.obs_dim, world.n_actions, world.n_agents) == (OBS_DIM, N_ACTIONS, 6)
    assert obs.shape == (6, OBS_DIM) and obs.dtype == np.float32
    assert world.agent_ids == [f"{c}/agent_{j}" for c in range(2) for j in range(3)]
    assert world.alive.all()
    step = world.step(np.zeros(6, np.int64))
    assert step.obs.shape == (6, OBS_DIM) and step.obs.dtype == np.float32
    assert step.rewards.shape == (6,) and step.rewards.dtype == np.float32
    assert step.done.shape == step.alive.shape == (6,) and step.tick == 1
    assert _world(copies=1).agent_ids == ["agent_0", "agent_1", "agent_2"]
    world.close()


def test_copies_differ_and_a_run_is_a_function_of_its_seed() -> None:
    a, b, other = _world(seed=4), _world(seed=4), _world(seed=5)
    obs_a, obs_b = a.reset(), b.reset()
    np.testing.assert_array_equal(obs_a, obs_b)
    assert not np.array_equal(obs_a[:3], obs_a[3:])  # copy 0 and copy 1 start elsewhere
    assert not np.array_equal(obs_a, other.reset())
    actions = np.array([1, 2, 3, 4, 0, 1])
    np.testing.assert_array_equal(a.step(actions).obs, b.step(actions).obs)


def test_episode_end_sets_done_resets_with_the_next_seed_and_records_the_team_return() -> None:
    # Prepare: 3-step episodes, 2 copies
    world = _world(copies=2, max_cycles=3, seed=7)
    world.reset()
    rewards = []
    # Execute: one whole episode
    for _ in range(3):
        step = world.step(np.full(6, 2, np.int64))
        rewards.append(step.rewards)
    # Assert: every agent's episode ended at the time limit, so each is truncated with its last
    # observation kept, and the observation it got is the first of its copy's next episode
    assert step.done.all() and step.alive.all()
    assert step.truncated is not None and step.truncated.all()
    assert step.final_obs is not None and np.abs(step.final_obs).sum(1).min() > 0
    env = load_env_factory(SPREAD)(N=3, max_cycles=3, continuous_actions=False)
    for c in range(2):
        second_episode = np.random.SeedSequence([7, c, 1]).generate_state(1)[0]
        first, _ = env.reset(seed=int(second_episode))
        expected = np.stack([first[f"agent_{j}"] for j in range(3)])
        np.testing.assert_allclose(step.obs[3 * c : 3 * c + 3], expected)
        assert not np.allclose(step.final_obs[3 * c : 3 * c + 3], expected)
    # team return: each copy's summed rewards over its agents, per agent, averaged over copies
    total = np.sum(rewards, axis=0)  # (6,)
    team = [total[:3].sum() / 3, total[3:].sum() / 3]
    metrics = world.task_metrics()
    assert metrics["rl/team_return"] == pytest.approx(np.mean(team), rel=1e-5)
    assert metrics["rl/episodes"] == 2
    assert metrics["rl/reward_per_step"] == pytest.approx(total.sum() / 18, rel=1e-5)
    # nothing finished since: no team return, the episode count stays
    world.step(np.zeros(6, np.int64))
    after = world.task_metrics()
    assert after["rl/team_return"] is None and after["rl/episodes"] == 2


def test_steps_before_the_time_limit_are_neither_done_nor_truncated() -> None:
    world = _world(copies=1, max_cycles=3)
    world.reset()
    for _ in range(2):
        step = world.step(np.ones(3, np.int64))
        assert not step.done.any()
        assert step.truncated is not None and not step.truncated.any()
        assert step.final_obs is not None and not step.final_obs.any()
    assert world.task_metrics()["rl/team_return"] is None


def test_bad_actions_raise() -> None:
    world = _world(copies=1)
    world.reset()
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        world.step(np.zeros(4, np.int64))
    with pytest.raises(ValueError, match=r"in \[0, 5\)"):
        world.step(np.array([0, 5, 0]))


def test_agent_count_mismatch_names_the_right_count() -> None:
    cfg = PettingZooConfig(env=SPREAD, kwargs={"N": 3, "max_cycles": 3}, copies=2)
    with pytest.raises(ValueError, match=r"agents.count is 5.*3 agents x 2 copies = 6.*count: 6"):
        ParallelEnvWorld(cfg, 5, seed=0)


def test_continuous_actions_are_refused_with_the_discrete_option_named() -> None:
    with pytest.raises(ValueError, match=r"same Discrete action space.*continuous_actions=False"):
        _world(copies=1, continuous_actions=True)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("no_such_package_xyz.envs:parallel_env", "cannot import 'no_such_package_xyz.envs'"),
        ("mpe2.simple_spread_v3:no_such_env", "has no attribute 'no_such_env'"),
        ("mpe2.simple_spread_v3:__name__", "is not callable"),
    ],
)
def test_bad_import_paths_say_what_is_wrong(path: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        load_env_factory(path)
    # a world built around such a path fails the same way (config checks only the module)
    cfg = PettingZooConfig.model_construct(env=path, kwargs={}, copies=1, tick_s=0.1)
    with pytest.raises(ValueError, match=reason):
        ParallelEnvWorld(cfg, 3, seed=0)


def test_a_non_parallel_env_is_refused() -> None:
    cfg = PettingZooConfig(env="mpe2.simple_spread_v3:env", kwargs={"N": 3}, copies=1)
    with pytest.raises(
        ValueError, match="not a PettingZoo ParallelEnv .it is an AEC env.*parallel_env"
    ):
        ParallelEnvWorld(cfg, 3, seed=0)
