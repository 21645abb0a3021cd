"""Reference policies for MPE2 simple_spread: how well does acting at random, and a hand-written
greedy controller, do on the episodes a learner is scored on?

Usage:
    .venv/bin/python bench/rl_baselines.py --episodes 200    # ~3 s on one core

A learning curve means little without its floor and a point of comparison. This module gives
both, on the env and seeds our platform uses (`envs/pz_world.py`), with one definition of the
score that `rl_anchor.py` (RLlib's PPO) reuses:

- team return: the sum over an episode's steps of the sum of all agents' rewards, divided by
  the number of agents (the mean per-agent episode return, as `rl/team_return` on the
  platform);
- episode seeds: copy c's e-th episode (e from 0) is reset with seed
  `SeedSequence([seed, c, e]).generate_state(1)[0]`, the arithmetic of
  `ParallelEnvWorld._episode_seed`, whose first reset uses e = 0 (tests/test_rl_baselines.py
  holds the two to the same seeds). `evaluate(..., copies=C)` deals its episodes round robin
  over C copies, the order in which a C-copy platform run finishes its fixed-length episodes.

Policies:
- `random`: each agent draws one of the 5 discrete actions uniformly (a numpy Generator seeded
  from the seed).
- `greedy`: each agent reads its own observation and heads for its nearest landmark, with no
  regard for the others (so two agents may share a landmark and leave another one uncovered).

The layout and the action meanings, checked in mpe2's source (simple_spread.py `observation`,
_mpe_utils/simple_env.py `_set_action`, _mpe_utils/core.py `integrate_state`): an observation
is [self_vel(2), self_pos(2), landmark - self (2N), other agent - self (2(N-1)), comm (2(N-1))];
action 0 does nothing and 1..4 push -x, +x, -y, +y. A push adds 0.5 to the velocity along its
axis (force 5, mass 1, dt 0.1); each step the position moves by 0.1 x the velocity from before
the push, and the velocity is damped by 0.25. Only one axis can be pushed per step.

The controller is a proportional-derivative rule: the wanted acceleration is
`KP * (landmark - self) - KD * velocity`; the agent pushes along the action with the largest
dot product with it, or not at all when it is shorter than DEAD_ZONE (near the landmark and
slow, where any push would overshoot and oscillate). Variants measured, 200 episodes of
N=3, max_cycles=25, seed 0: team return, mean (std 5.8-7.9 each), and the paired difference
to the kept rule +- its standard error:

    PD: KP=1, KD=0.3, dead zone 0.05 (kept)             -15.64
    PD: KD 0.2 / 0.4 / 0.1                              -15.88 / -16.18 / -16.36
                                                        (-0.24+-0.17 / -0.53+-0.17 / -0.72+-0.24)
    PD: dead zone 0.02 / 0.1                            -15.74 / -16.15  (-0.10+-0.09 / -0.51+-0.14)
    the action whose predicted position, the action
      held 2 / 3 / 4 steps, is nearest the landmark     -15.80 / -15.89 / -16.28
    the action whose resting point (push, then coast:
      0.4 v + 0.2 u ahead) is nearest the landmark      -16.58  (-0.94+-0.16)
    push toward the landmark, velocity ignored          -18.07  (-2.43+-0.23)
    no action at all / random                           -24.86 / -27.12

The differences between the better rules are within about two standard errors; what matters
is that the velocity is taken into account at all. The variants were chosen on these same
episodes, so -15.64 is, if anything, slightly flattering to the kept rule.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: bench/ is on sys.path, the repo root is not

from envs.pz_world import load_env_factory  # noqa: E402

ENV = "mpe2.simple_spread_v3:parallel_env"
ENV_KWARGS: dict[str, Any] = {"N": 3, "max_cycles": 25, "continuous_actions": False}
POLICIES = ("random", "greedy")

# mpe2 simple_env._set_action: the unit push of discrete actions 0..4
ACTION_DIRS = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.float64)
KP = 1.0
KD = 0.3  # s: how far ahead the velocity is extrapolated
DEAD_ZONE = 0.05

Policy = Callable[[np.ndarray], np.ndarray]
"""(n_agents, obs_dim) observations in `possible_agents` order -> (n_agents,) int actions."""


def episode_seed(seed: int, copy: int, episode: int) -> int:
    """Reset seed of copy `copy`'s episode `episode` (from 0), as ParallelEnvWorld seeds."""
    return int(np.random.SeedSequence([seed, copy, episode]).generate_state(1)[0])


def make_env(env_kwargs: dict[str, Any]) -> Any:
    """A simple_spread ParallelEnv with these kwargs, discrete actions required."""
    if env_kwargs.get("continuous_actions", False):
        raise ValueError("the baselines act in discrete actions: set continuous_actions=False")
    return load_env_factory(ENV)(**env_kwargs)


def obs_layout(n: int, obs_dim: int) -> tuple[slice, slice]:
    """(velocity, landmark offsets) slices of an N-agent simple_spread observation; ValueError
    if the size is not the full-observability layout (e.g. num_landmark_neighbors set)."""
    want = 4 + 2 * n + 4 * (n - 1)
    if obs_dim != want:
        raise ValueError(
            f"simple_spread with N={n} observes {obs_dim} numbers, not the {want} of "
            "[vel(2), pos(2), landmarks(2N), others(2(N-1)), comm(2(N-1))]"
        )
    return slice(0, 2), slice(4, 4 + 2 * n)


def greedy_actions(obs: np.ndarray, n_landmarks: int) -> np.ndarray:
    """Each agent's PD step toward its nearest landmark (see the module docstring)."""
    vel_s, lm_s = obs_layout(n_landmarks, obs.shape[1])
    vel = obs[:, vel_s].astype(np.float64)
    landmarks = obs[:, lm_s].astype(np.float64).reshape(len(obs), n_landmarks, 2)
    nearest = np.argmin((landmarks**2).sum(-1), axis=1)
    offset = landmarks[np.arange(len(obs)), nearest]
    want = KP * offset - KD * vel
    actions = 1 + np.argmax(want @ ACTION_DIRS[1:].T, axis=1)
    actions[np.linalg.norm(want, axis=1) < DEAD_ZONE] = 0
    return actions


def make_policy(name: str, n_agents: int, seed: int) -> Policy:
    if name == "random":
        rng = np.random.default_rng(seed)
        return lambda obs: rng.integers(0, len(ACTION_DIRS), size=len(obs))
    if name == "greedy":
        # simple_spread has as many landmarks as agents
        return lambda obs: greedy_actions(obs, n_agents)
    raise ValueError(f"unknown policy {name!r}; one of {POLICIES}")


def run_episode(env: Any, policy: Policy, reset_seed: int) -> float:
    """One episode from `env.reset(seed=reset_seed)`; its team return."""
    names = list(env.possible_agents)
    obs, _ = env.reset(seed=reset_seed)
    total = 0.0
    while env.agents:
        live = [a for a in names if a in env.agents]
        actions = policy(np.stack([np.asarray(obs[a]) for a in live]))
        obs, rewards, _, _, _ = env.step({a: int(actions[j]) for j, a in enumerate(live)})
        total += float(sum(rewards.values()))
    return total / len(names)


def evaluate(
    policy_name: str,
    env_kwargs: dict[str, Any],
    episodes: int,
    seed: int,
    copies: int = 1,
) -> list[float]:
    """Team returns of `episodes` episodes of the policy, the k-th on copy k % copies (its
    episode k // copies). Deterministic for a seed; the first k of a longer run are a shorter
    run's k."""
    env = make_env(env_kwargs)
    policy = make_policy(policy_name, len(env.possible_agents), seed)
    returns = [
        run_episode(env, policy, episode_seed(seed, k % copies, k // copies))
        for k in range(episodes)
    ]
    env.close()
    return returns


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--copies", type=int, default=1)
    args = parser.parse_args(argv)
    print(
        f"simple_spread {ENV_KWARGS}, {args.episodes} episodes, seed {args.seed}, "
        f"{args.copies} copies; team return (mean per-agent episode return)"
    )
    print(f"{'policy':8s} {'mean':>8s} {'std':>6s} {'min':>8s} {'max':>8s} {'wall s':>7s}")
    for name in POLICIES:
        t0 = time.perf_counter()
        r = np.asarray(evaluate(name, ENV_KWARGS, args.episodes, args.seed, args.copies))
        wall = time.perf_counter() - t0
        print(f"{name:8s} {r.mean():8.2f} {r.std():6.2f} {r.min():8.2f} {r.max():8.2f} {wall:7.1f}")


if __name__ == "__main__":
    main()
