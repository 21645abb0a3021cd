"""Unit tests of envs/pz_world.py: any PettingZoo ParallelEnv as the Runner's world, here MPE2
simple_spread with tiny episodes (no Ray)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from gymnasium import spaces

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


# ---- continuous actions -------------------------------------------------------------------------


class OddEnv:
    """A minimal ParallelEnv whose agents act in the given spaces (one per agent) and observe 2
    numbers; records what each step was given."""

    def __init__(self, action_spaces: list[Any]) -> None:
        self.possible_agents = [f"a{i}" for i in range(len(action_spaces))]
        self.agents: list[str] = []
        self._acts = dict(zip(self.possible_agents, action_spaces, strict=True))
        self.given: list[dict[str, Any]] = []

    def observation_space(self, agent: str) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, (2,), np.float32)

    def action_space(self, agent: str) -> Any:
        return self._acts[agent]

    def reset(self, seed: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        self.agents = list(self.possible_agents)
        return {a: np.zeros(2, np.float32) for a in self.agents}, {}

    def step(self, actions: dict[str, Any]) -> tuple[dict[str, Any], ...]:
        self.given.append(actions)
        obs = {a: np.zeros(2, np.float32) for a in self.agents}
        zero = {a: 0.0 for a in self.agents}
        return obs, zero, dict.fromkeys(self.agents, False), dict.fromkeys(self.agents, False), {}

    def close(self) -> None:
        pass


def _odd_world(*action_spaces: Any) -> ParallelEnvWorld:
    # the config's own checks allow only known packages: built as a test's config is
    cfg = PettingZooConfig.model_construct(
        env=f"{__name__}:OddEnv", kwargs={"action_spaces": list(action_spaces)}, copies=1,
        tick_s=0.1, pipeline=True,
    )  # fmt: skip
    return ParallelEnvWorld(cfg, len(action_spaces), seed=0)


def test_a_box_action_space_is_taken_with_its_size_and_bounds() -> None:
    world = _world(copies=2, continuous_actions=True)
    world.reset()
    assert (world.action_dim, world.n_actions) == (N_ACTIONS, 0)  # Box(0, 1, (5,))
    np.testing.assert_array_equal(world.action_low, np.zeros(5))
    np.testing.assert_array_equal(world.action_high, np.ones(5))
    step = world.step(np.full((6, 5), 0.5, np.float32))
    assert step.obs.shape == (6, OBS_DIM) and step.rewards.shape == (6,) and step.tick == 1
    # the discrete world says it has no continuous part
    assert (_world().action_dim, _world().action_low.size) == (0, 0)


def test_the_world_clips_continuous_actions_to_the_box_before_the_env_sees_them() -> None:
    # Prepare: a (2, 3) Box of mixed bounds; one agent's action far outside it
    box = spaces.Box(np.array([[0, -1, -2], [0, 0, 5]]), np.array([[1, 1, 2], [3, 1, 6]]))
    world = _odd_world(box, box)
    env = world.envs[0]
    world.reset()
    assert world.action_dim == 6
    inside = np.array([0.5, 0.0, 1.0, 2.0, 0.5, 5.5])
    outside = np.array([-9.0, 9.0, 2.5, 3.5, -0.1, 100.0])
    # Execute
    world.step(np.stack([inside, outside]).astype(np.float32))
    # Assert: in the Box's shape and dtype, clipped to its bounds, the other untouched
    given = env.given[-1]
    assert given["a0"].shape == (2, 3) and given["a0"].dtype == box.dtype
    np.testing.assert_allclose(given["a0"].reshape(-1), inside)
    np.testing.assert_allclose(given["a1"].reshape(-1), [0, 1, 2, 3, 0, 6])


def test_continuous_actions_step_only_some_copies_too() -> None:
    whole, parts = (_world(copies=2, seed=3, continuous_actions=True) for _ in range(2))
    whole.reset(), parts.reset()
    acts = np.random.default_rng(0).uniform(-0.5, 1.5, (6, 5)).astype(np.float32)
    expected = whole.step(acts)
    parts.step(acts[:3], copies=(0, 1))
    got = parts.step(acts[3:], copies=(1, 2))
    np.testing.assert_array_equal(got.obs, expected.obs)
    np.testing.assert_array_equal(got.rewards[3:], expected.rewards[3:])


def test_bad_continuous_actions_raise() -> None:
    world = _world(copies=1, continuous_actions=True)
    world.reset()
    with pytest.raises(ValueError, match=r"shape \(3, 5\)"):
        world.step(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="finite"):
        world.step(np.full((3, 5), np.nan, np.float32))


@pytest.mark.parametrize(
    ("action_spaces", "says"),
    [
        ([spaces.Box(-np.inf, np.inf, (2,))] * 2, "a Box with infinite bounds"),
        # agents of other spaces form groups of their own (agent groups, below), but a tick's
        # decisions are ints or floats, not both
        ([spaces.Discrete(5), spaces.Box(0.0, 1.0, (5,))],
         "group 'a0' acts in Discrete(5) and group 'a1' in Box(0.0, 1.0, (5,), float32); "
         "groups that mix discrete and continuous actions are not supported yet"),
        ([spaces.MultiDiscrete([3, 3])] * 2, "a MultiDiscrete space; only Discrete and Box"),
        ([spaces.Box(0, 9, (2,), np.int64)] * 2, "a Box action space must hold floats"),
    ],
    ids=["infinite", "mixed", "multidiscrete", "integers"],
)  # fmt: skip
def test_action_spaces_a_learner_cannot_take_are_refused_with_the_reason(
    action_spaces: list[Any], says: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        _odd_world(*action_spaces)
