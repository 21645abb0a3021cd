"""Any PettingZoo ParallelEnv as a world the Runner drives, one tick = one env step.

``ParallelEnvWorld`` builds ``copies`` instances of the env named in the scenario
(``world.env: 'package.module:callable'``, called with ``world.kwargs``), and presents all their
agents as one swarm of N agents in a fixed order.

Agent groups. Agents of one copy that observe in one ``Box`` shape and act in one action space
form a group (``AgentGroup``): one model layout, so they can exchange weights. By default the
groups form by space, in the order of ``possible_agents``, each named after its agents without
their ``_<n>`` ending (MPE2 simple_tag: ``adversary`` 0..2, then ``agent``); ``world.groups``
names them by regular expression instead. The swarm's order is group-major over copies: group
0's agents of copy 0, of copy 1, ..., then group 1's, and so on, so each group's agents are one
contiguous range (a shard hosts one group's agents). With one group this is copy 0's
``possible_agents``, then copy 1's, as it always was.

The Runner needs fixed-size arrays, so:

- observations are flattened to (N, obs_dim) float32, obs_dim the widest group's: each agent's
  observation fills its group's first ``obs_dim`` columns, zeros after; an agent that is not
  alive (terminated before the end of its episode, or not yet spawned) observes zeros;
- actions come as (N,) int64 when every group acts in a ``Discrete`` space (each its own n),
  or as (N, action_dim) float32 when every group acts in a ``Box`` (one shape and pair of
  finite bounds per group, flattened to its ``action_dim`` numbers, zeros after for a
  narrower group): those are clipped to the agent's box here, before the env sees them, so a
  learner keeps the action it drew (a Gaussian's sample may fall outside). Other action
  spaces, and groups mixing the two kinds, are refused with the reason. The actions of agents
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
count), ``rl/reward_per_step`` (mean reward per live agent-step since the previous call), and,
in a world of two or more groups, ``rl/return/<group>`` (the mean over those episodes of the
group's rewards divided by its agent count per copy: a competitive world such as simple_tag
shows predators and prey apart; with one group it would repeat ``rl/team_return``).
"""

from __future__ import annotations

import importlib
import re
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


def _checked_action_space(env: str, agent: str, space: Any) -> spaces.Discrete | spaces.Box:
    """`space`, the action space of `agent` (and of its group), if a learner can act in it:
    Discrete(n), or a Box of finite bounds and a float dtype. Anything else is a ValueError
    that says what is wrong and what would do."""
    if not isinstance(space, (spaces.Discrete, spaces.Box)):
        raise ValueError(
            f"world.env {env!r}: agent {agent!r} acts in {space}, a {type(space).__name__} "
            "space; only Discrete and Box action spaces are supported (a learner samples one "
            "number or one vector per agent), not MultiDiscrete, MultiBinary, Tuple or Dict"
        )
    if isinstance(space, spaces.Box):
        if not np.issubdtype(space.dtype, np.floating):
            raise ValueError(
                f"world.env {env!r}: agent {agent!r} acts in {space}, a Box of "
                f"{space.dtype}; a Box action space must hold floats (a Gaussian policy's "
                "draws are real numbers)"
            )
        if not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
            raise ValueError(
                f"world.env {env!r}: agent {agent!r} acts in {space}, a Box with infinite "
                "bounds; a continuous action space needs finite ones (the policy's scale and "
                "the clip come from them): wrap the env's actions to a bounded range"
            )
        if not space.low.size or not (space.low < space.high).all():
            raise ValueError(
                f"world.env {env!r}: agent {agent!r} acts in {space}, a Box with no numbers "
                "or with low >= high somewhere; every action number needs a range low < high"
            )
    return space


def _same_space(a: Any, b: Any) -> bool:
    if isinstance(a, spaces.Discrete):
        return bool(a.n == b.n and a.start == b.start)
    if isinstance(a, spaces.Box):
        return bool(
            a.shape == b.shape and np.array_equal(a.low, b.low) and np.array_equal(a.high, b.high)
        )
    return bool(a == b)  # a space no learner takes: refused once its group is formed


@dataclass(frozen=True)
class AgentGroup:
    """Agents of one copy with one observation shape and one action space: one model layout.
    Over all copies the group's agents are one contiguous range of the swarm's indices."""

    name: str
    members: tuple[str, ...]
    """Its agents' names in one copy, in the env's ``possible_agents`` order."""
    obs_dim: int
    """The numbers of one observation, flattened."""
    action: spaces.Discrete | spaces.Box
    first: int
    """The swarm index of its first agent (copy 0's first member)."""
    count: int
    """Its agents over all copies: members x copies."""

    @property
    def n_actions(self) -> int:
        """Discrete(n): n; 0 for a Box."""
        return int(self.action.n) if isinstance(self.action, spaces.Discrete) else 0

    @property
    def action_dim(self) -> int:
        """Box: the numbers of one action, flattened; 0 for a Discrete space."""
        return int(np.prod(self.action.shape)) if isinstance(self.action, spaces.Box) else 0

    @property
    def action_low(self) -> np.ndarray:
        """(action_dim,) the box's lower bounds, flattened (empty for a Discrete space)."""
        box = self.action
        return box.low.reshape(-1).astype(np.float64) if isinstance(box, spaces.Box) else _NONE

    @property
    def action_high(self) -> np.ndarray:
        """(action_dim,) the box's upper bounds, flattened (empty for a Discrete space)."""
        box = self.action
        return box.high.reshape(-1).astype(np.float64) if isinstance(box, spaces.Box) else _NONE


_NONE = np.zeros(0)


def group_name(members: list[str]) -> str:
    """A group's name from its agents' names: their common name without the ``_<n>`` ending
    ('adversary' for adversary_0..2, 'agent' for agent_0), else the first agent's name."""
    stems = {re.sub(r"_\d+$", "", m) for m in members}
    return stems.pop() if len(stems) == 1 else members[0]


def _space_text(obs: Any, act: Any) -> str:
    return f"observes {obs}, acts in {act}"


def form_groups(
    env: str,
    names: list[str],
    obs: dict[str, Any],
    act: dict[str, Any],
    named: dict[str, str] | None,
) -> list[tuple[str, list[str]]]:
    """The agent groups of one copy as (name, members in ``names`` order): by space (agents
    with the same observation shape and action space; groups in the order of their first
    agent), or by the first of `named`'s regular expressions that matches an agent's whole
    name (groups in `named`'s order). ValueError names the agents and spaces that do not fit."""
    for a in names:
        if not isinstance(obs[a], spaces.Box):
            raise ValueError(
                f"world.env {env!r}: agent {a!r} observes {obs[a]}; every agent needs a Box "
                "observation (flattened to a vector of numbers)"
            )
    if named is None:
        found: list[list[str]] = []
        for a in names:
            home = next(
                (
                    g
                    for g in found
                    if obs[g[0]].shape == obs[a].shape
                    and type(act[g[0]]) is type(act[a])
                    and _same_space(act[g[0]], act[a])
                ),
                None,
            )
            if home is None:
                found.append([a])
            else:
                home.append(a)
        labels = [group_name(g) for g in found]
        # two groups whose agents share a stem (agent_0 observing 16 numbers, agent_1 14):
        # each is named after its first agent, which is unique
        labels = [
            label if labels.count(label) == 1 else g[0]
            for label, g in zip(labels, found, strict=True)
        ]
        return list(zip(labels, found, strict=True))
    members: dict[str, list[str]] = {g: [] for g in named}
    for a in names:
        home_name = next((g for g, pattern in named.items() if re.fullmatch(pattern, a)), None)
        if home_name is None:
            listed = ", ".join(f"{g}: {p!r}" for g, p in named.items())
            raise ValueError(
                f"world.groups: agent {a!r} of world.env {env!r} matches no group ({listed}); "
                "every agent must belong to one"
            )
        members[home_name].append(a)
    for g, agents in members.items():
        if not agents:
            raise ValueError(
                f"world.groups: group {g!r} ({named[g]!r}) matches no agent of world.env "
                f"{env!r} (its agents: {', '.join(names)})"
            )
    for g, agents in members.items():
        first = agents[0]
        for a in agents[1:]:
            if obs[a].shape != obs[first].shape or not (
                type(act[a]) is type(act[first]) and _same_space(act[a], act[first])
            ):
                raise ValueError(
                    f"world.groups: group {g!r} has agent {first!r}, which "
                    f"{_space_text(obs[first], act[first])}, and agent {a!r}, which "
                    f"{_space_text(obs[a], act[a])}; the agents of one group share one model "
                    "layout, so they need the same observation shape and action space"
                )
    return list(members.items())


def _one_kind_of_action(env: str, groups: list[AgentGroup]) -> None:
    """Every group acts in a Discrete space, or every group in a Box: a tick's decisions are
    one array of ints or of floats (ValueError otherwise)."""
    discrete = [g for g in groups if g.n_actions]
    boxes = [g for g in groups if g.action_dim]
    if discrete and boxes:
        d, b = discrete[0], boxes[0]
        raise ValueError(
            f"world.env {env!r}: group {d.name!r} acts in {d.action} and group {b.name!r} in "
            f"{b.action}; groups that mix discrete and continuous actions are not supported "
            "yet (a tick's decisions are one array, of ints or of floats)"
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
        self.per_copy = len(self.names)
        self._layout(env, cfg.groups)
        if n_agents != self.n_agents:
            raise ValueError(
                f"agents.count is {n_agents}, but world.env {cfg.env!r} with these kwargs has "
                f"{self.per_copy} agents x {cfg.copies} copies = {self.n_agents}: set "
                f"agents.count: {self.n_agents}"
            )
        self._restart()

    def _layout(self, env: Any, named: dict[str, str] | None) -> None:
        """The agent groups, the swarm's order (group-major over copies) and the array widths."""
        cfg, copies = self.cfg, self.cfg.copies
        obs = {a: env.observation_space(a) for a in self.names}
        act = {a: env.action_space(a) for a in self.names}
        self.groups: list[AgentGroup] = []
        first = 0
        for name, members in form_groups(cfg.env, self.names, obs, act, named):
            # the members share one space (form_groups): it is checked once
            space = _checked_action_space(cfg.env, members[0], act[members[0]])
            dim = int(np.prod(obs[members[0]].shape))
            self.groups.append(
                AgentGroup(name, tuple(members), dim, space, first, len(members) * copies)
            )
            first += len(members) * copies
        _one_kind_of_action(cfg.env, self.groups)
        self.n_agents = first
        self._order()
        self._widths()

    def _order(self) -> None:
        """Where each copy's agents sit in the swarm (group-major over copies) and their ids."""
        copies = self.cfg.copies
        # rows[c, j]: the swarm index of copy c's j-th agent (possible_agents order)
        self._rows = np.zeros((copies, self.per_copy), np.int64)
        self._group_of = np.zeros(self.per_copy, np.int64)  # j -> its group's index
        for gi, g in enumerate(self.groups):
            for k, m in enumerate(g.members):
                j = self.names.index(m)
                self._group_of[j] = gi
                self._rows[:, j] = g.first + np.arange(copies) * len(g.members) + k
        ids = [""] * self.n_agents
        for c in range(copies):
            for j, name in enumerate(self.names):
                ids[self._rows[c, j]] = name if copies == 1 else f"{c}/{name}"
        self.agent_ids = ids

    def _widths(self) -> None:
        """The arrays' widths (the widest group's), and each agent's own part of them."""
        self.obs_dim = max(g.obs_dim for g in self.groups)
        """The width of an observation row: the widest group's observation."""
        self.n_actions = max(g.n_actions for g in self.groups)
        """Discrete groups: the largest n (one group: its n); 0 for Box groups."""
        self.action_dim = max(g.action_dim for g in self.groups)
        """Box groups: the width of a decision row, the widest group's action (one group: the
        numbers of one action, flattened); 0 for Discrete groups."""
        one = self.groups[0]
        self.action_space = one.action
        """The action space of the first group (of every agent, when there is one group)."""
        self.action_low, self.action_high = one.action_low, one.action_high
        """The first group's box bounds, flattened (with one group every agent's, of
        action_dim numbers; empty for a Discrete space)."""
        # per agent (swarm order): its group's observation width, number of actions, box
        # bounds padded to action_dim (zeros: a padded number is clipped to 0)
        g_of_row = np.zeros(self.n_agents, np.int64)
        for g_i, g in enumerate(self.groups):
            g_of_row[g.first : g.first + g.count] = g_i
        self._obs_dims = np.array([self.groups[gi].obs_dim for gi in self._group_of])
        self._n_of_row = np.array([self.groups[gi].n_actions for gi in g_of_row], np.int64)
        self._low = np.zeros((self.n_agents, self.action_dim))
        self._high = np.zeros((self.n_agents, self.action_dim))
        for g in self.groups:
            rows = slice(g.first, g.first + g.count)
            self._low[rows, : g.action_dim] = g.action_low
            self._high[rows, : g.action_dim] = g.action_high

    # ---- episode -------------------------------------------------------------------------

    def _episode_seed(self, copy: int) -> int:
        ss = np.random.SeedSequence([self.seed, copy, self._episodes_of[copy]])
        return int(ss.generate_state(1)[0])

    def _restart(self) -> np.ndarray:
        self.tick = 0
        self._ticks_of = np.zeros(self.cfg.copies, np.int64)  # steps taken by each copy
        self._episodes_of = [0] * self.cfg.copies
        self._returns = np.zeros(self.cfg.copies)  # (copies,) this episode's summed rewards
        # (copies, groups): this episode's summed rewards of each group's agents
        self._group_returns = np.zeros((self.cfg.copies, len(self.groups)))
        self._finished: list[float] = []  # team returns since the last task_metrics
        # per group: its return per agent of each episode since the last task_metrics
        self._finished_by_group: list[list[float]] = [[] for _ in self.groups]
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
        self._group_returns[c] = 0.0
        self._write(c, obs)

    def _write(self, c: int, obs: dict[str, Any]) -> None:
        rows = self._rows[c]
        self.obs[rows] = 0.0
        self.alive[rows] = False
        for j, name in enumerate(self.names):
            if name in obs and name in self.envs[c].agents:
                self.obs[rows[j], : self._obs_dims[j]] = np.asarray(obs[name], np.float32).reshape(
                    -1
                )
                self.alive[rows[j]] = True

    def reset(self) -> np.ndarray:
        """Restart every copy from the first episode; observations (N, obs_dim)."""
        return self._restart()

    def step(self, actions: np.ndarray, copies: tuple[int, int] | None = None) -> RLStepResult:
        """Step every copy, or only copies lo..hi-1 (``copies``, with their agents' actions):
        a shard that hosts whole copies has them stepped as soon as it has acted, while the
        others still act (swarm/driver.py); with one group only, where a copy's agents are
        one range of the swarm. Copies are independent, so stepping them in parts, in copy
        order, gives exactly what one whole step gives. The result's arrays cover all N
        agents; rows outside the part hold no news (zero rewards, no ends)."""
        lo_c, hi_c = (0, self.cfg.copies) if copies is None else copies
        if not 0 <= lo_c < hi_c <= self.cfg.copies:
            raise ValueError(f"copies must lie in [0, {self.cfg.copies}), got {lo_c}..{hi_c}")
        if len(self.groups) > 1 and (lo_c, hi_c) != (0, self.cfg.copies):
            raise ValueError(
                f"copies {lo_c}..{hi_c - 1}: a world of {len(self.groups)} agent groups steps "
                "whole (a copy's agents are not one range of the swarm)"
            )
        first, n = lo_c * self.per_copy, (hi_c - lo_c) * self.per_copy
        act = self._actions(actions, first, n)
        rewards = np.zeros(self.n_agents, np.float32)
        done = np.zeros(self.n_agents, bool)
        truncated = np.zeros(self.n_agents, bool)
        final_obs = np.zeros((self.n_agents, self.obs_dim), np.float32)
        for c in range(lo_c, hi_c):
            env = self.envs[c]
            rows = self._rows[c]
            live = [j for j, name in enumerate(self.names) if name in env.agents]
            chosen = {self.names[j]: self._action(act[rows[j] - first], j) for j in live}
            obs, rew, term, trunc, _ = env.step(chosen)
            for j, name in enumerate(self.names):
                rewards[rows[j]] = float(rew.get(name, 0.0))
                if trunc.get(name, False) and not term.get(name, False) and name in obs:
                    # cut by a time limit: the learner bootstraps from this last observation
                    truncated[rows[j]] = True
                    d = self._obs_dims[j]
                    final_obs[rows[j], :d] = np.asarray(obs[name], np.float32).reshape(-1)
            mine = rewards[rows]  # (per_copy,) in possible_agents order
            self._reward_sum += float(mine.sum())
            self._live_steps += len(live)
            self._returns[c] += float(mine.sum())
            if len(self.groups) > 1:  # each side's own (one group: the team return)
                np.add.at(self._group_returns[c], self._group_of, mine.astype(np.float64))
            self._ticks_of[c] += 1
            if env.agents:
                self._write(c, obs)
                continue
            self._finished.append(float(self._returns[c]) / self.per_copy)
            for gi, g in enumerate(self.groups if len(self.groups) > 1 else []):
                self._finished_by_group[gi].append(
                    float(self._group_returns[c, gi]) / len(g.members)
                )
            self.episodes += 1
            done[rows] = True
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

    def _actions(self, actions: np.ndarray, first: int, n: int) -> np.ndarray:
        """The actions of agents first..first+n-1, checked: (n,) int64, each in [0, n) of its
        group's Discrete(n), or (n, action_dim) finite numbers clipped to each agent's box
        (float64, so the clip is exact in any dtype of the box)."""
        if not self.action_dim:
            act = np.asarray(actions).astype(np.int64, copy=False).reshape(-1)
            if act.shape != (n,):
                raise ValueError(f"actions must have shape ({n},), got {act.shape}")
            limit = self._n_of_row[first : first + n]
            bad = np.flatnonzero((act < 0) | (act >= limit))
            if bad.size:
                if len(self.groups) == 1:
                    raise ValueError(f"actions must be in [0, {self.n_actions})")
                i = first + int(bad[0])
                raise ValueError(
                    f"action {act[bad[0]]} of agent {self.agent_ids[i]!r} is not in "
                    f"[0, {limit[bad[0]]}), its group's actions"
                )
            return act
        act = np.asarray(actions, np.float64)
        if act.size != n * self.action_dim:
            raise ValueError(f"actions must have shape ({n}, {self.action_dim}), got {act.shape}")
        if not np.isfinite(act).all():
            raise ValueError("actions must be finite numbers")
        rows = slice(first, first + n)
        return np.clip(act.reshape(n, self.action_dim), self._low[rows], self._high[rows])

    def _action(self, a: np.ndarray, j: int) -> int | np.ndarray:
        """The action of a copy's j-th agent as its env takes it: an int, or an array of its
        Box's shape and dtype (from the first numbers of its decision row)."""
        if not self.action_dim:
            return int(a)
        space = self.groups[self._group_of[j]].action
        d = int(np.prod(space.shape))
        return a[:d].reshape(space.shape).astype(space.dtype)  # type: ignore[arg-type]

    # ---- read-outs ----------------------------------------------------------------------

    def task_metrics(self) -> dict[str, float | None]:
        finished, self._finished = self._finished, []
        per_step = self._reward_sum / self._live_steps if self._live_steps else None
        self._reward_sum, self._live_steps = 0.0, 0
        out: dict[str, float | None] = {
            "rl/team_return": float(np.mean(finished)) if finished else None,
            "rl/episodes": float(self.episodes),
            "rl/reward_per_step": per_step,
        }
        by_group, self._finished_by_group = self._finished_by_group, [[] for _ in self.groups]
        if len(self.groups) > 1:
            for g, returns in zip(self.groups, by_group, strict=True):
                out[f"rl/return/{g.name}"] = float(np.mean(returns)) if returns else None
        return out

    def positions(self) -> np.ndarray:
        """No positions to show for a generic env: (N, 0)."""
        return np.zeros((self.n_agents, 0), np.float32)

    def layout(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        for env in self.envs:
            env.close()
