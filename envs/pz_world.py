"""Any PettingZoo ParallelEnv as a world the Runner drives, one tick = one env step.

``ParallelEnvWorld`` builds ``copies`` instances of the env named in the scenario
(``world.env: 'package.module:callable'``, called with ``world.kwargs``), and presents all their
agents as one swarm of N agents in a fixed order: copy 0's ``possible_agents``, then copy 1's,
and so on. The Runner needs fixed-size arrays, so:

- observations are flattened to (N, obs_dim) float32 (every agent must have the same ``Box``
  observation shape); an agent that is not alive (terminated before the end of its episode, or
  not yet spawned) observes zeros;
- actions come as (N,) int64 when every agent has the same ``Discrete`` action space, or as
  (N, action_dim) float32 when every agent has the same ``Box`` action space (one shape, one
  pair of finite bounds, flattened to ``action_dim`` numbers): those are clipped to the box
  here, before the env sees them, so a learner keeps the action it drew (a Gaussian's sample
  may fall outside). Other action spaces are refused with the reason. The actions of agents
  not alive are dropped;
- rewards (N,) float32 are what each agent's previous action earned (0 for agents not alive);
- an agent cut off by a time limit (truncated, not terminated) also hands over its last
  observation (``final_obs``), so the learner can bootstrap from it: a time limit is not a
  property of the state, and treating it as an end would teach the value function the clock;
- when every agent of a copy is done (terminated or truncated), that copy's episode is over: its
  team return (sum of its agents' rewards over the episode, divided by its agent count) is
  recorded, it is reset at once with the next seed, and its agents' ``done`` flag is set for
  this step, so the observation they receive is the first of the new episode.

Seeds: copy c's e-th episode is reset with seed ``hash(seed, c, e)`` (numpy SeedSequence), so a
run is reproducible and copies differ.

``task_metrics`` reports, for the episodes that finished since the previous call:
``rl/team_return`` (mean team return; None when none finished), ``rl/episodes`` (cumulative
count), and ``rl/reward_per_step`` (mean reward per live agent-step since the previous call).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from envs.pz_config import PettingZooConfig


@dataclass
class RLStepResult:
    obs: np.ndarray  # (N, obs_dim) float32
    rewards: np.ndarray  # (N,) float32: earned by the actions just taken
    done: np.ndarray  # (N,) bool: the agent's episode ended; obs starts the next one
    alive: np.ndarray  # (N,) bool: the agent acts in the coming step
    tick: int
    truncated: np.ndarray | None = None  # (N,) bool: ended by a time limit, not by the task
    final_obs: np.ndarray | None = None  # (N, obs_dim): the last observation of those episodes


def load_env_factory(path: str) -> Any:
    """'package.module:callable' -> the callable (ValueError with the reason if not found)."""
    module, _, attr = path.partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise ValueError(f"cannot import {module!r} for world.env {path!r}: {exc}") from None
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{module!r} has no attribute {attr!r} (world.env {path!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"world.env {path!r} is not callable")
    return obj


def _common_action_space(env: str, act_spaces: dict[str, Any]) -> spaces.Discrete | spaces.Box:
    """The one action space every agent has (a dict agent -> space, in agent order): all
    Discrete(n) of one n, or all one Box (shape, bounds) of finite bounds and a float dtype.
    Anything else is a ValueError that says what is wrong and what would do."""
    (first, space), *rest = act_spaces.items()
    if not isinstance(space, (spaces.Discrete, spaces.Box)):
        raise ValueError(
            f"world.env {env!r}: agent {first!r} acts in {space}, a {type(space).__name__} "
            "space; only Discrete and Box action spaces are supported (a learner samples one "
            "number or one vector per agent), not MultiDiscrete, MultiBinary, Tuple or Dict"
        )
    for a, other in rest:
        if type(other) is not type(space) or not _same_space(other, space):
            raise ValueError(
                f"world.env {env!r}: agent {a!r} acts in {other}, agent {first!r} in {space}; "
                "every agent needs the same action space (one Discrete(n), or one Box of one "
                "shape and bounds): the agents share one model layout"
            )
    if isinstance(space, spaces.Box):
        if not np.issubdtype(space.dtype, np.floating):
            raise ValueError(
                f"world.env {env!r}: agent {first!r} acts in {space}, a Box of "
                f"{space.dtype}; a Box action space must hold floats (a Gaussian policy's "
                "draws are real numbers)"
            )
        if not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
            raise ValueError(
                f"world.env {env!r}: agent {first!r} acts in {space}, a Box with infinite "
                "bounds; a continuous action space needs finite ones (the policy's scale and "
                "the clip come from them): wrap the env's actions to a bounded range"
            )
        if not space.low.size or not (space.low < space.high).all():
            raise ValueError(
                f"world.env {env!r}: agent {first!r} acts in {space}, a Box with no numbers "
                "or with low >= high somewhere; every action number needs a range low < high"
            )
    return space


def _same_space(a: Any, b: Any) -> bool:
    if isinstance(a, spaces.Discrete):
        return bool(a.n == b.n and a.start == b.start)
    return bool(
        a.shape == b.shape and np.array_equal(a.low, b.low) and np.array_equal(a.high, b.high)
    )


class ParallelEnvWorld:
    def __init__(self, cfg: PettingZooConfig, n_agents: int, seed: int):
        self.cfg = cfg
        self.seed = seed
        factory = load_env_factory(cfg.env)
        self.envs = [factory(**cfg.kwargs) for _ in range(cfg.copies)]
        env = self.envs[0]
        missing = [
            attr
            for attr in ("reset", "step", "possible_agents", "observation_space", "action_space")
            if not hasattr(env, attr)
        ]
        # an AEC env has all of these too, plus `last` (one agent acts per step)
        aec = callable(getattr(env, "last", None))
        if missing or aec:
            why = "it is an AEC env" if aec else f"no {missing[0]!r}"
            raise ValueError(
                f"world.env {cfg.env!r} returned {type(env).__name__}, which is not a "
                f"PettingZoo ParallelEnv ({why}); for an AEC env use its parallel_env() or "
                "pettingzoo.utils.conversions.aec_to_parallel"
            )
        self.names: list[str] = list(env.possible_agents)
        obs_shapes = {a: env.observation_space(a) for a in self.names}
        act_spaces = {a: env.action_space(a) for a in self.names}
        first = self.names[0]
        for a in self.names:
            space = obs_shapes[a]
            if not isinstance(space, spaces.Box) or space.shape != obs_shapes[first].shape:
                raise ValueError(
                    f"world.env {cfg.env!r}: agent {a!r} observes {space}; every agent needs a "
                    f"Box observation of one shape (agent {first!r}: {obs_shapes[first]})"
                )
        self.obs_dim = int(np.prod(obs_shapes[first].shape))
        self.action_space = _common_action_space(cfg.env, act_spaces)
        act = self.action_space
        box = act if isinstance(act, spaces.Box) else None
        self.n_actions = int(act.n) if isinstance(act, spaces.Discrete) else 0
        """Discrete(n): n; 0 for a Box."""
        self.action_dim = int(np.prod(box.shape)) if box else 0
        """Box: the numbers of one action, flattened; 0 for a Discrete space."""
        self.action_low = box.low.reshape(-1).astype(np.float64) if box else np.zeros(0)
        self.action_high = box.high.reshape(-1).astype(np.float64) if box else np.zeros(0)
        """(action_dim,) the box's bounds, flattened (empty for a Discrete space)."""
        self.per_copy = len(self.names)
        self.agent_ids = (
            self.names
            if cfg.copies == 1
            else [f"{c}/{a}" for c in range(cfg.copies) for a in self.names]
        )
        if n_agents != len(self.agent_ids):
            raise ValueError(
                f"agents.count is {n_agents}, but world.env {cfg.env!r} with these kwargs has "
                f"{self.per_copy} agents x {cfg.copies} copies = {len(self.agent_ids)}: set "
                f"agents.count: {len(self.agent_ids)}"
            )
        self.n_agents = n_agents
        self._restart()

    # ---- episode -------------------------------------------------------------------------

    def _episode_seed(self, copy: int) -> int:
        ss = np.random.SeedSequence([self.seed, copy, self._episodes_of[copy]])
        return int(ss.generate_state(1)[0])

    def _restart(self) -> np.ndarray:
        self.tick = 0
        self._ticks_of = np.zeros(self.cfg.copies, np.int64)  # steps taken by each copy
        self._episodes_of = [0] * self.cfg.copies
        self._returns = np.zeros(self.cfg.copies)  # (copies,) this episode's summed rewards
        self._finished: list[float] = []  # team returns since the last task_metrics
        self.episodes = 0
        self._reward_sum = 0.0
        self._live_steps = 0
        self.obs = np.zeros((self.n_agents, self.obs_dim), np.float32)
        self.alive = np.zeros(self.n_agents, bool)
        for c in range(self.cfg.copies):
            self._reset_copy(c)
        return self.obs.copy()

    def _reset_copy(self, c: int) -> None:
        obs, _ = self.envs[c].reset(seed=self._episode_seed(c))
        self._episodes_of[c] += 1
        self._returns[c] = 0.0
        self._write(c, obs)

    def _write(self, c: int, obs: dict[str, Any]) -> None:
        lo = c * self.per_copy
        block = self.obs[lo : lo + self.per_copy]
        block[:] = 0.0
        live = self.alive[lo : lo + self.per_copy]
        live[:] = False
        for j, name in enumerate(self.names):
            if name in obs and name in self.envs[c].agents:
                block[j] = np.asarray(obs[name], np.float32).reshape(-1)
                live[j] = True

    def reset(self) -> np.ndarray:
        """Restart every copy from the first episode; observations (N, obs_dim)."""
        return self._restart()

    def step(self, actions: np.ndarray, copies: tuple[int, int] | None = None) -> RLStepResult:
        """Step every copy, or only copies lo..hi-1 (``copies``, with their agents' actions):
        a shard that hosts whole copies has them stepped as soon as it has acted, while the
        others still act (swarm/driver.py). Copies are independent, so stepping them in parts,
        in copy order, gives exactly what one whole step gives. The result's arrays cover all
        N agents; rows outside the part hold no news (zero rewards, no ends)."""
        lo_c, hi_c = (0, self.cfg.copies) if copies is None else copies
        if not 0 <= lo_c < hi_c <= self.cfg.copies:
            raise ValueError(f"copies must lie in [0, {self.cfg.copies}), got {lo_c}..{hi_c}")
        first, n = lo_c * self.per_copy, (hi_c - lo_c) * self.per_copy
        act = self._actions(actions, n)
        rewards = np.zeros(self.n_agents, np.float32)
        done = np.zeros(self.n_agents, bool)
        truncated = np.zeros(self.n_agents, bool)
        final_obs = np.zeros((self.n_agents, self.obs_dim), np.float32)
        for c in range(lo_c, hi_c):
            env = self.envs[c]
            lo = c * self.per_copy
            live = [j for j, name in enumerate(self.names) if name in env.agents]
            chosen = {self.names[j]: self._action(act[lo - first + j]) for j in live}
            obs, rew, term, trunc, _ = env.step(chosen)
            for j, name in enumerate(self.names):
                rewards[lo + j] = float(rew.get(name, 0.0))
                if trunc.get(name, False) and not term.get(name, False) and name in obs:
                    # cut by a time limit: the learner bootstraps from this last observation
                    truncated[lo + j] = True
                    final_obs[lo + j] = np.asarray(obs[name], np.float32).reshape(-1)
            self._reward_sum += float(rewards[lo : lo + self.per_copy].sum())
            self._live_steps += len(live)
            self._returns[c] += float(rewards[lo : lo + self.per_copy].sum())
            self._ticks_of[c] += 1
            if env.agents:
                self._write(c, obs)
                continue
            self._finished.append(float(self._returns[c]) / self.per_copy)
            self.episodes += 1
            done[lo : lo + self.per_copy] = True
            self._reset_copy(c)
        self.tick = int(self._ticks_of.min())
        return RLStepResult(
            self.obs.copy(),
            rewards,
            done,
            self.alive.copy(),
            int(self._ticks_of[lo_c]),
            truncated,
            final_obs,
        )

    def _actions(self, actions: np.ndarray, n: int) -> np.ndarray:
        """n agents' actions, checked: (n,) int64 in [0, n_actions), or (n, action_dim) finite
        numbers clipped to the box (float64, so the clip is exact in any dtype of the box)."""
        if not self.action_dim:
            act = np.asarray(actions).astype(np.int64, copy=False).reshape(-1)
            if act.shape != (n,):
                raise ValueError(f"actions must have shape ({n},), got {act.shape}")
            if act.min() < 0 or act.max() >= self.n_actions:
                raise ValueError(f"actions must be in [0, {self.n_actions})")
            return act
        act = np.asarray(actions, np.float64)
        if act.size != n * self.action_dim:
            raise ValueError(f"actions must have shape ({n}, {self.action_dim}), got {act.shape}")
        if not np.isfinite(act).all():
            raise ValueError("actions must be finite numbers")
        return np.clip(act.reshape(n, self.action_dim), self.action_low, self.action_high)

    def _action(self, a: np.ndarray) -> int | np.ndarray:
        """One agent's action as its env takes it: an int, or an array of the Box's shape and
        dtype."""
        if not self.action_dim:
            return int(a)
        space = self.action_space
        return a.reshape(space.shape).astype(space.dtype)  # type: ignore[arg-type]

    # ---- read-outs ----------------------------------------------------------------------

    def task_metrics(self) -> dict[str, float | None]:
        finished, self._finished = self._finished, []
        per_step = self._reward_sum / self._live_steps if self._live_steps else None
        self._reward_sum, self._live_steps = 0.0, 0
        return {
            "rl/team_return": float(np.mean(finished)) if finished else None,
            "rl/episodes": float(self.episodes),
            "rl/reward_per_step": per_step,
        }

    def positions(self) -> np.ndarray:
        """No positions to show for a generic env: (N, 0)."""
        return np.zeros((self.n_agents, 0), np.float32)

    def layout(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        for env in self.envs:
            env.close()
