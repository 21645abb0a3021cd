"""An outside anchor for the learning benchmarks: RLlib's PPO, one policy shared by all agents,
trained on MPE2 simple_spread and scored the way `rl_baselines.py` scores its policies.

Usage:
    .venv/bin/python bench/rl_anchor.py --steps 50000 --seed 0

Our learners are judged by the team return they reach on simple_spread; this says what a
well-known, independently written learner reaches with the same env, the same episode seeds
and the same score in the same number of env steps. `train_ppo` is the library entry point
(bench/rl_bench.py imports it); it runs inside the caller's Ray and never starts or stops one
(without one it raises: RLlib would start its own on every core, dashboard included).

Setup:
- The env is `rl_baselines.ENV` with the caller's kwargs, wrapped by RLlib's own
  `ParallelPettingZooEnv`, its agents renamed 0..N-1 (see SeededSpread); every agent maps to
  the one RLModule "shared" (parameter sharing, as in RLlib's
  examples/multi_agent/pettingzoo_parameter_sharing.py). Copy c of the vector env resets its
  e-th episode with `rl_baselines.episode_seed(seed, c, e)`, as the platform does; RLlib by
  itself would seed only each copy's first reset.
- Everything runs in the calling process: num_env_runners=0 (the local EnvRunner samples,
  NUM_ENVS copies stepped in lockstep so the policy runs once per step for all of them) and
  num_learners=0 (the update runs here too). PPO alternates sampling and updating, so a
  remote EnvRunner would only add a process and a copy of the weights per iteration. The
  process uses as many torch threads as the caller allows (2 in the run below).
- Seeds: `config.debugging(seed=...)` seeds torch, numpy and random in the EnvRunner and the
  Learner, the env seeds every episode as above, and RLlib's env check (which resets and
  steps every copy once, shifting both the episode seeds and the step counts) is off. Runs
  with seed 0 under different PYTHONHASHSEEDs gave the same curve.
- Steps: one step of the N-agent env is one env step (RLlib's default
  count_steps_by="env_steps"); a train batch of TRAIN_BATCH env steps holds N x as many agent
  steps for the shared module. Training runs whole iterations until at least `env_steps`
  have been taken, so `AnchorResult.env_steps` may exceed the budget by up to
  TRAIN_BATCH + NUM_ENVS - 1 (the copies step together). The env wrapper counts its own
  steps and `train_ppo` checks the total against RLlib's.
- Team return: RLlib's multi-agent episode return is the sum over agents of each agent's
  return (`MultiAgentEpisode.get_return`, in ray/rllib/env/multi_agent_episode.py); an
  episode cut across two `sample()` calls arrives as chunks (`prev_episode_chunks` of
  `on_episode_end`), whose returns add. Divided by the agent count it is the team return of
  `rl_baselines.py`; the env wrapper sums the same rewards itself and the callback checks the
  two agree on every episode. (RLlib's own `episode_return_mean` is a mean over its last 100
  episodes, across iterations; the curve here uses exactly the episodes of each iteration.)

Hyperparameters (`HPARAMS`): RLlib 2.60's wheel ships no tuned examples (no rllib/tuned_examples)
and its examples hold none for MPE, so these are the usual PPO settings rather than RLlib's
PPOConfig defaults: lr 3e-4, gamma 0.99, GAE lambda 0.95, clip 0.2, 10 epochs and gradients
clipped to global norm 0.5 (the PPO paper's MuJoCo settings, Stable-Baselines3's defaults);
minibatches of 256 agent steps, a train batch of 4,000 env steps (RLlib's default size; 12,000
agent steps at N=3), an entropy bonus of 0.01, and separate policy and value MLPs of 64x64
tanh. Two RLlib defaults are changed on purpose: `use_kl_loss` off (plain PPO-clip; RLlib adds
an adaptive KL penalty by default) and `vf_clip_param` effectively off: RLlib clamps the
squared value error at vf_clip_param (10 by default, ppo_torch_learner.py), which zeroes the
value gradient wherever the error exceeds ~3.2, and the value targets here reach tens to
~100 (per-step team rewards near -1, gamma 0.99, bootstrapped through the time limit).

Measured (`--steps 50000 --seed 0`, 2 cores shared with other work): the team return per
4,000-step iteration went -27.6, -27.5, -25.5, -26.7, -24.4, -23.9, -24.0, -23.7, -23.7, -24.9,
-23.7, -23.7, -23.6 (52,000 env steps; `final` -23.6), against -27.1 for uniform-random play
and -15.6 for the greedy controller (rl_baselines.py, 200 episodes). An iteration took ~6 s
when the cores were free (~650 env steps/s, ~2 s of it the update) and up to 70 s while other
work loaded them (the whole run: 536 s, 97 env steps/s). Before the agents were numbered (see
SeededSpread) the same seed, with another agent order, ended at -26.1: at this budget a run's
score moves by a few points with its sampling alone, so compare means over seeds.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: bench/ is on sys.path, the repo root is not
sys.path.insert(0, str(Path(__file__).resolve().parent))  # imported from elsewhere: rl_baselines

import rl_baselines  # noqa: E402  (the env, the seeds and the score: one place)

MODULE_ID = "shared"
NUM_ENVS = 8
TRAIN_BATCH = 4000
HPARAMS: dict[str, Any] = {
    "lr": 3e-4,
    "gamma": 0.99,
    "lambda_": 0.95,
    "clip_param": 0.2,
    "num_epochs": 10,
    "minibatch_size": 256,
    "train_batch_size_per_learner": TRAIN_BATCH,
    "entropy_coeff": 0.01,
    "vf_loss_coeff": 1.0,
    "use_kl_loss": False,
    "vf_clip_param": 1e6,
    "grad_clip": 0.5,
    "grad_clip_by": "global_norm",
}
MODEL: dict[str, Any] = {
    "fcnet_hiddens": [64, 64],
    "fcnet_activation": "tanh",
    "vf_share_layers": False,
}
FINAL_FRACTION = 0.1  # `final`: the episodes that ended in this last part of the run
RETURN_KEY = "team_return"  # metric: (env steps when the episode ended, its team return)


@dataclass
class AnchorResult:
    """One PPO run: its learning curve and final score in team return (see the module doc)."""

    curve: list[tuple[int, float]]
    """(env steps so far, mean team return of the episodes that ended in that iteration)."""
    final: float
    """Mean team return of the episodes that ended in the last 10% of the env steps."""
    env_steps: int
    """Env steps taken (one step of the N-agent env counts once)."""
    wall_s: float
    config: dict[str, Any] = field(default_factory=dict)
    """Hyperparameters and setup used."""
    episodes: int = 0
    """Episodes that ended during training."""


def _spread_env_class() -> type:
    """The env class, built on first use so that importing this module does not import RLlib."""
    import gymnasium as gym
    from ray.rllib.env.wrappers.pettingzoo_env import ParallelPettingZooEnv

    class SeededSpread(ParallelPettingZooEnv):
        """simple_spread with agents 0..N-1 (the order of `possible_agents`), every episode
        seeded as the platform seeds it; counts its steps and sums its rewards."""

        def __init__(self, config: dict[str, Any]):
            super().__init__(rl_baselines.make_env(dict(config["kwargs"])))
            # RLlib keeps agent IDs in sets and batches them in set order; the order of a set
            # of strings changes with each process's hash seed (PYTHONHASHSEED), which made
            # runs with the same seed differ. Small ints hash to themselves.
            self.names = list(self.par_env.possible_agents)
            self.agents = list(range(len(self.names)))
            self.possible_agents = list(self.agents)
            self.observation_spaces = {
                i: self.par_env.observation_space(n) for i, n in enumerate(self.names)
            }
            self.action_spaces = {i: self.par_env.action_space(n) for i, n in enumerate(self.names)}
            self.observation_space = gym.spaces.Dict(self.observation_spaces)
            self.action_space = gym.spaces.Dict(self.action_spaces)
            self.base_seed = int(config["seed"])
            self.copy = 0  # set by TeamReturns.on_environment_created
            self.episodes = 0
            self.steps = 0
            self.episode_reward = 0.0  # all agents' rewards so far this episode

        def _by_index(self, d: dict) -> dict:
            return {(k if k == "__all__" else self.names.index(k)): v for k, v in d.items()}

        def reset(self, *, seed: int | None = None, options: dict | None = None):
            reset_seed = rl_baselines.episode_seed(self.base_seed, self.copy, self.episodes)
            self.episodes += 1
            self.episode_reward = 0.0
            obs, infos = super().reset(seed=reset_seed, options=options)
            return self._by_index(obs), self._by_index(infos)

        def step(self, action_dict: dict):
            out = super().step({self.names[i]: a for i, a in action_dict.items()})
            self.steps += 1
            self.episode_reward += float(sum(out[1].values()))
            return tuple(self._by_index(d) for d in out)

    return SeededSpread


def _callbacks_class() -> type:
    from ray.rllib.callbacks.callbacks import RLlibCallback

    class TeamReturns(RLlibCallback):
        """Numbers the copies; logs each finished episode's (env steps, team return)."""

        def on_environment_created(self, *, env_runner: Any, env: Any, **kwargs: Any) -> None:
            for c, sub in enumerate(env.envs):
                sub.unwrapped.copy = c

        def on_episode_end(
            self,
            *,
            episode: Any,
            prev_episode_chunks: list | None = None,
            metrics_logger: Any = None,
            env: Any = None,
            env_index: int,
            **kwargs: Any,
        ) -> None:
            subs = [e.unwrapped for e in env.envs]
            mine = subs[env_index]
            total = episode.get_return() + sum(c.get_return() for c in prev_episode_chunks or ())
            team = float(total) / len(mine.possible_agents)
            ours = mine.episode_reward / len(mine.possible_agents)
            if not math.isclose(team, ours, rel_tol=1e-5, abs_tol=1e-4):
                raise RuntimeError(f"RLlib's episode return {team} * N != the env's {ours} * N")
            # the copies step in lockstep: their summed steps are this runner's env steps
            steps = sum(s.steps for s in subs)
            metrics_logger.log_value(RETURN_KEY, (steps, team), reduce="item_series")

    return TeamReturns


def build_config(env_kwargs: dict[str, Any], seed: int) -> Any:
    """The PPOConfig of one run (new API stack, torch)."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    return (
        PPOConfig()
        .api_stack(enable_rl_module_and_learner=True, enable_env_runner_and_connector_v2=True)
        .framework("torch")
        .environment(
            _spread_env_class(),
            env_config={"kwargs": dict(env_kwargs), "seed": seed},
            # RLlib's env check resets and steps every copy once, which would shift the
            # episode seeds and the step counts
            disable_env_checking=True,
        )
        .env_runners(num_env_runners=0, num_envs_per_env_runner=NUM_ENVS)
        .learners(num_learners=0)
        .multi_agent(
            policies={MODULE_ID},
            policy_mapping_fn=lambda agent_id, episode, **kw: MODULE_ID,
        )
        .rl_module(
            rl_module_spec=MultiRLModuleSpec(
                rl_module_specs={MODULE_ID: RLModuleSpec(model_config=DefaultModelConfig(**MODEL))}
            )
        )
        .training(**HPARAMS)
        .callbacks(_callbacks_class())
        .debugging(seed=seed)
    )


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def train_ppo(
    env_kwargs: dict[str, Any],
    env_steps: int,
    seed: int,
    progress: Callable[[str], None] | None = None,
) -> AnchorResult:
    """Train PPO for at least `env_steps` env steps in the caller's Ray; see the module doc."""
    import ray
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME

    if not ray.is_initialized():
        # RLlib would start a Ray of its own on every core, with a dashboard
        raise RuntimeError(
            "train_ppo runs in the caller's Ray: ray.init(num_cpus=2, include_dashboard=False) "
            "first"
        )
    t0 = time.perf_counter()
    algo = build_config(env_kwargs, seed).build_algo()
    curve: list[tuple[int, float]] = []
    finished: list[tuple[int, float]] = []  # (env steps at its end, team return)
    steps = 0
    try:
        while steps < env_steps:
            result = algo.train()
            runner = result[ENV_RUNNER_RESULTS]
            steps = int(runner[NUM_ENV_STEPS_SAMPLED_LIFETIME])
            episodes = runner.get(RETURN_KEY, [])
            if isinstance(episodes, float):  # peeked empty series: nan
                episodes = []
            finished.extend((int(s), float(r)) for s, r in episodes)
            mean = _mean([r for _, r in episodes])
            if episodes:
                curve.append((steps, mean))
            if progress is not None:
                progress(
                    f"ppo seed {seed}: {steps} env steps, {len(episodes)} episodes, "
                    f"team return {mean:.2f}, {time.perf_counter() - t0:.0f}s"
                )
        counted = sum(e.unwrapped.steps for e in algo.env_runner.env.envs)
    finally:
        algo.stop()
    if counted != steps:
        raise RuntimeError(f"the env copies took {counted} steps, RLlib counted {steps}")
    tail = [r for s, r in finished if s > (1 - FINAL_FRACTION) * steps]
    return AnchorResult(
        curve=curve,
        final=_mean(tail),
        env_steps=steps,
        wall_s=time.perf_counter() - t0,
        config={
            **HPARAMS,
            "model": MODEL,
            "num_env_runners": 0,
            "num_envs_per_env_runner": NUM_ENVS,
            "num_learners": 0,
            "count_steps_by": "env_steps",
            "seed": seed,
            "env": rl_baselines.ENV,
            "env_kwargs": dict(env_kwargs),
        },
        episodes=len(finished),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        res = train_ppo(
            rl_baselines.ENV_KWARGS,
            args.steps,
            args.seed,
            progress=lambda m: print(m, file=sys.stderr, flush=True),
        )
    finally:
        ray.shutdown()
    print(
        f"PPO (RLlib, shared policy) on simple_spread {rl_baselines.ENV_KWARGS}, seed {args.seed}"
    )
    print(f"{'env steps':>10s} {'team return':>12s}")
    for s, r in res.curve:
        print(f"{s:10d} {r:12.2f}")
    print(
        f"final (last {FINAL_FRACTION:.0%} of {res.env_steps} env steps): {res.final:.2f}; "
        f"{res.episodes} episodes, {res.wall_s:.0f} s, {res.env_steps / res.wall_s:.0f} env steps/s"
    )


if __name__ == "__main__":
    main()
