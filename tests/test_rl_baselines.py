"""bench/rl_baselines.py and bench/rl_anchor.py: the reference policies' scores and seeds, the
team-return definition they share, and the shape of a tiny RLlib PPO run."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import rl_baselines  # noqa: E402

KWARGS = {"N": 3, "max_cycles": 25, "continuous_actions": False}


def test_greedy_beats_random_by_a_wide_margin():
    # Measured (first 50 episodes, seeds 0-5): greedy - random = 13.4, 11.5, 10.1, 6.6, 7.7,
    # 9.6, the paired standard error 1.0-1.6; over 200 episodes of seed 0, -15.64 vs -27.12.
    # A margin of 5 is under the smallest of those gaps and above anything a broken controller
    # (e.g. one that ignores its velocity, -18.1, or picks a wrong axis) would keep.
    random = np.mean(rl_baselines.evaluate("random", KWARGS, 50, seed=0))
    greedy = np.mean(rl_baselines.evaluate("greedy", KWARGS, 50, seed=0))
    assert greedy - random > 5.0, (greedy, random)


def test_evaluate_is_deterministic_for_a_seed():
    for name in rl_baselines.POLICIES:
        a = rl_baselines.evaluate(name, KWARGS, 3, seed=11, copies=2)
        assert a == rl_baselines.evaluate(name, KWARGS, 3, seed=11, copies=2)
        assert a != rl_baselines.evaluate(name, KWARGS, 3, seed=12, copies=2)
        # a shorter run is the start of a longer one
        assert a[:2] == rl_baselines.evaluate(name, KWARGS, 2, seed=11, copies=2)


def test_team_return_matches_a_hand_computation():
    """Two episodes replayed here: each agent's rewards summed over the episode, then the mean
    over the agents, with the reset seeds written out from the SeedSequence arithmetic."""
    from mpe2 import simple_spread_v3

    seed = 5
    env = simple_spread_v3.parallel_env(**KWARGS)
    expected = []
    for episode in (0, 1):
        obs, _ = env.reset(
            seed=int(np.random.SeedSequence([seed, 0, episode]).generate_state(1)[0])
        )
        per_agent = dict.fromkeys(env.possible_agents, 0.0)
        while env.agents:
            stacked = np.stack([obs[a] for a in env.possible_agents])
            acts = rl_baselines.greedy_actions(stacked, 3)
            obs, rewards, _, _, _ = env.step(
                dict(zip(env.possible_agents, acts.tolist(), strict=True))
            )
            for a, r in rewards.items():
                per_agent[a] += r
        expected.append(sum(per_agent.values()) / 3)
    got = rl_baselines.evaluate("greedy", KWARGS, 2, seed=seed)
    assert got == pytest.approx(expected, rel=1e-12)
    assert all(-200 < r < 0 for r in got)  # every reward is minus a distance or a collision


def test_episode_seeds_are_the_platforms():
    """evaluate's copy c, episode e starts where ParallelEnvWorld's copy c does: e = 0 is the
    first reset of each copy."""
    from envs.pz_config import PettingZooConfig
    from envs.pz_world import ParallelEnvWorld

    cfg = PettingZooConfig(env=rl_baselines.ENV, kwargs=KWARGS, copies=2)
    world = ParallelEnvWorld(cfg, n_agents=6, seed=7)
    env = rl_baselines.make_env(KWARGS)
    for c in range(2):
        obs, _ = env.reset(seed=rl_baselines.episode_seed(7, c, 0))
        first = np.stack([obs[a] for a in env.possible_agents])
        np.testing.assert_array_equal(first, world.obs[3 * c : 3 * c + 3])


def test_greedy_reads_the_observation_layout():
    """An agent at rest 0.5 to the right of its nearest landmark pushes -x (action 1); one
    already moving there fast enough coasts (0); one on its landmark, at rest, does nothing."""
    obs = np.zeros((3, 18), np.float32)
    obs[0, 4:10] = [-0.5, 0.0, 1.0, 1.0, -1.0, 1.0]  # landmarks relative to agent 0
    obs[1, 0:2] = [-1.8, 0.0]  # agent 1: velocity -x, same landmarks
    obs[1, 4:10] = obs[0, 4:10]
    obs[2, 4:10] = [0.0, 0.01, 1.0, 1.0, -1.0, 1.0]
    np.testing.assert_array_equal(rl_baselines.greedy_actions(obs, 3), [1, 0, 0])
    with pytest.raises(ValueError, match="observes 17 numbers"):
        rl_baselines.greedy_actions(obs[:, :17], 3)


@pytest.mark.slow
def test_ppo_anchor_runs_a_tiny_budget(ray_local):
    """One PPO iteration (a 4,000 env-step batch covers the 2,000 asked for) in the shared
    test Ray: the result has the promised shape and plausible numbers."""
    import rl_anchor

    messages: list[str] = []
    res = rl_anchor.train_ppo(KWARGS, 2000, seed=0, progress=messages.append)
    assert res.env_steps >= 2000
    assert res.curve and messages
    assert all(s <= res.env_steps for s, _ in res.curve)
    # fixed-length episodes, copies in lockstep: every 25 env steps end one episode per copy
    assert res.episodes * 25 == res.env_steps
    # a barely trained policy plays about as uniform-random play does (-27 per episode, std
    # 7.6), so means over 160 episodes lie well inside (-60, 0); rewards are never positive
    for value in [r for _, r in res.curve] + [res.final]:
        assert math.isfinite(value) and -60 < value < 0, res
    assert res.config["gamma"] == 0.99 and res.config["num_env_runners"] == 0
    assert res.wall_s > 0
