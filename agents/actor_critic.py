"""Online actor-critic on the Yan model: K agents that learn a policy from reward while acting.

Used for worlds that hand out rewards (any PettingZoo ParallelEnv, envs/pz_world.py). Every
agent owns two Yan models, an actor (policy head) and a critic (value head), both in its row
of one flat (K, P) tensor, stacked like `Population`'s, so gossip exchanges deltas of both the
same way.

Why two trunks and not one with two heads: on a shared trunk the value loss and a policy
gradient from a few dozen noisy samples pull the same features, and the trunk ended up reading
almost nothing of the state. Measured on a 1-D chain (move to 0, reward -|x|; K 8, window 1,
3000 ticks): with one trunk the trained policy was the same at every x (P(left) 0.26 .. 0.28
from x = -5 to 5) and so was the value (-1.3 .. -1.6); with two trunks P(left) went from 0.02
left of 0 to 0.99 right of it and the return from -100 to -38. A detached value head on the
policy's features learned an inverted value. (Andrychowicz et al. 2021, "What Matters in
On-Policy RL", also found separate policy and value networks better in most of their envs.)

Acting: an agent reads the last ``learning.window`` observations of its current episode (zeros
before the episode's first step), normalised by its own running mean and std of what it has
observed (``rl.obs_norm``), and samples an action from its actor's policy at the last step.

Actions (`ActionDist`): a Discrete(n) space is a categorical over the actor's n logits. A
continuous one (`ActionBox`, a gymnasium Box of finite bounds, flattened to d numbers) is a
diagonal Gaussian: the actor's d outputs are its mean, in units of the box's half-width about
its centre (mean = centre + half * output, so the small initial policy head starts every
agent at the box's centre whatever its units), and each agent has a state-independent log
standard deviation (d numbers, in the same units) appended to its row after [actor | critic],
so gossip shares it with the rest. The world clips a sample to the box; the learner keeps the
unclipped sample and its log-probability (as PPO does for bounded Box actions: the clip is
part of the env). Log-probability and entropy sum over the d dimensions.

Learning (``rl.enabled``): every ``rl.rollout`` ticks each agent takes ``rl.epochs`` passes of
PPO's clipped objective (Schulman et al. 2017) over the rollout it just lived, with advantages
from generalised advantage estimation (Schulman et al. 2016; gamma ``rl.discount``, lambda
``rl.gae_lambda``) normalised per agent; loss = policy + value_coef * value - entropy_coef *
entropy. The critic values every step of the rollout at update time (acting needs only the
actor). Actor and critic gradients are each clipped to ``rl.max_grad_norm`` per agent; the
per-agent optimizer of `Population` (Adam with its own moments and step count per agent).

Episode ends. The last step of a rollout bootstraps from the value of the window that follows
it. An episode that ended (``done``, or the agent stopped acting: ``alive`` went False) does
not, except when a time limit cut it off (``truncated``): then its last reward gets discount *
V(final window) added (partial-episode bootstrapping, Pardo et al. 2018), because the clock is
not in the observation and a value that has to guess it is wrong near every episode end.
Measured on mpe2 simple_spread (every episode ends by its time limit): without that bootstrap
the learner fell from -26.5 to -33 team return in 6000 ticks, with it it rose to -22.
Steps where an agent is not alive are left out of its loss; an agent with no live step in a
rollout stays unchanged.

Each agent's running statistics (observation mean / std, return std for reward scaling) are
its own, from its own experience: agents of a shard share nothing but the batched compute, so
a run with gossip.topology isolated is truly isolated.

Everything random (action sampling, router noise) comes from one torch generator seeded with
the run seed, so a run is a pure function of its seed.
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from agents.config import LearnConfig, ModelConfig, RLConfig
from agents.population import StackedOptimizer, pool_gradients
from agents.yan import io
from agents.yan.io import HeadConfig
from agents.yan.model import Spec, hidden, init_flat, num_params, param_specs, views
from agents.yan.selective import (
    RouteRecord,
    Routing,
    load_balance_loss,
    noise_scale,
    selective_stats,
)

OBS_CLIP = 10.0  # normalised observations are clipped to +-10 std (SB3's VecNormalize clip_obs)
STD_EPS = 1e-8  # keeps the division finite for a feature that never varied (e.g. MPE's comm)
ROLES = ("actor", "critic")
INIT_LOG_STD = -1.0
"""A Gaussian policy's initial log std, in units of the box's half-width: std 0.37 half-widths
(0.18 on MPE's [0, 1]), so fewer than 1% of the first draws fall outside the box. Measured
against 0 (std = the half-width, SB3's and CleanRL's default for actions scaled to [-1, 1])
and -0.5 on a 2-D bandit in [-1, 1] (reward -|clip(a) - 0.7| summed; 4 agents, rollout 20,
lr 3e-3): after 150 ticks the policy means were 0.10 from the target with -1 (mean over agents
and numbers; 0.7 at the start), 0.32 with -0.5 and 0.61 with 0, and with 0 they then ran past
the bound (1.1 from the target at 300 - 600 ticks): when a third of the draws are clipped, a
mean beyond the bound (always clipped, a constant reward) beats a wide spread around the
target (the clipped Gaussian's boundary bias, Chou et al. 2017, "Improving Stochastic Policy
Gradients in Continuous Control with Deep RL using the Beta Distribution"). On mpe2
simple_spread (continuous, 12 agents in one process, no gossip, 6000 ticks, rollout 100) no
choice learned clearly (last-fifth team return -24.5 with 0, -24.9 with -1, -25.0 with -0.5);
the cost of a small std: the probability ratio moves by 1/std per unit of mean, and PPO
clipped 34% of the ratios there with -1 against 17% with 0."""
LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True, eq=False)
class Rollout:
    """One rollout of K agents over R steps, as the PPO update reads it."""

    x: Tensor
    """(K, R, W, obs_dim) the windows acted on."""
    a: Tensor
    """(K, R) int64 the actions taken, or (K, R, d) float32 for a continuous space."""
    old_logp: Tensor
    """(K, R) their log-probabilities when taken."""
    adv: Tensor
    """(K, R) advantages."""
    ret: Tensor
    """(K, R) returns, the critic's targets."""
    alive: Tensor
    """(K, R) float: 1 where the agent was acting."""
    n: Tensor
    """(K,) live steps of each agent."""

    def mean(self, v: Tensor) -> Tensor:
        """(K, R) -> (K,): the mean over each agent's live steps."""
        return (v * self.alive).sum(1) / self.n.clamp(min=1)


@dataclass(frozen=True, eq=False)
class Lived:
    """The R steps of K agents a rollout lived, as its update reads them."""

    x: np.ndarray
    """(R, K, W, obs_dim) the windows acted on."""
    a: np.ndarray
    """(R, K) the actions taken, or (R, K, d) for a continuous space (as drawn, unclipped)."""
    logp: np.ndarray
    """(R, K) their log-probabilities when taken."""
    r: np.ndarray
    """(R, K) the rewards that followed, scaled (`_scaled_rewards`)."""
    end: np.ndarray
    """(R, K) bool: the agent's episode ended after the step."""
    cut: np.ndarray
    """(R, K) bool: ... by a time limit (bootstrapped from `final`)."""
    final: np.ndarray
    """(R, K, W, obs_dim) the window of each cut-off episode's last observation."""
    alive: np.ndarray
    """(R, K) bool: the agent was acting."""
    after: np.ndarray
    """(K, W, obs_dim) the window that follows the last step."""


@dataclass
class Learned:
    """What an update measured, applied with its weights."""

    stats: dict[str, float]
    route_records: list[RouteRecord]


@dataclass(eq=False)
class Update:
    """An update running beside acting (``rl.update_lag``): it steps `work`, a copy of the
    weights at the rollout's end (`start`); `due` acting ticks later the change is added to
    the live weights."""

    start: Tensor
    work: torch.nn.Parameter
    due: int
    thread: threading.Thread | None = None
    result: Learned | None = None
    error: BaseException | None = field(default=None)


class EpochResult(NamedTuple):
    """What one PPO pass measured, per agent (K, R) or (K,)."""

    logp: Tensor
    """(K, R) log-probability of the taken actions under the policy before the pass' step."""
    ratio: Tensor
    """(K, R) their probability ratio to when they were taken."""
    policy_loss: Tensor
    """(K,) the clipped surrogate objective, negated."""
    value_loss: Tensor
    """(K,) the critic's squared error."""
    entropy: Tensor
    """(K,) the policy's mean entropy."""


class RunningMoments:
    """Running mean and variance per row (K, *shape), one sample at a time (Welford 1962).

    Starts at mean 0, variance 1 with a tiny count, so the first update takes over at once and
    a row that has seen nothing normalises by the identity."""

    def __init__(self, rows: int, shape: tuple[int, ...] = ()) -> None:
        self.count = np.full(rows, 1e-4)  # (K,) gym's RunningMeanStd epsilon
        self.mean = np.zeros((rows, *shape))  # (K, *shape)
        self.var = np.ones((rows, *shape))  # (K, *shape)

    def update(self, x: np.ndarray, rows: np.ndarray) -> None:
        """Add one sample x (K, *shape) to the rows where rows (K,) bool is True."""
        if not rows.any():
            return
        n, mean, var = self.count[rows], self.mean[rows], self.var[rows]
        shape = (-1,) + (1,) * (mean.ndim - 1)
        total = n + 1
        delta = x[rows] - mean
        new_mean = mean + delta / total.reshape(shape)
        m2 = var * n.reshape(shape) + delta**2 * (n / total).reshape(shape)
        self.count[rows], self.mean[rows] = total, new_mean
        self.var[rows] = m2 / total.reshape(shape)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.var)


@dataclass(frozen=True)
class ActionBox:
    """A continuous action space: every agent acts with d numbers, the i-th meant to lie in
    [low[i], high[i]] (a gymnasium Box, flattened; the world clips what lies outside)."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    def __post_init__(self) -> None:
        low, high = np.asarray(self.low, np.float64), np.asarray(self.high, np.float64)
        if low.shape != high.shape or low.ndim != 1 or not low.size:
            raise ValueError(f"an action box needs d >= 1 lows and highs, got {low} and {high}")
        if not (np.isfinite(low).all() and np.isfinite(high).all() and (low < high).all()):
            raise ValueError(f"an action box needs finite bounds low < high, got {low}, {high}")

    @property
    def dim(self) -> int:
        return len(self.low)


class ActionDist(ABC):
    """How an actor's outputs become actions: sampled when acting, and the log-probability
    and entropy of the actions taken when learning. Some kinds have per-agent numbers of
    their own besides the two models (`extra_specs`), appended to the row."""

    outputs: int
    """The actor head's outputs per step."""
    dtype: ClassVar[type[np.generic]]
    """Of the actions `OnlineActorCritic.act` returns."""

    @property
    def extra_specs(self) -> list[Spec]:
        """Per-agent parameters appended to the row after [actor | critic]."""
        return []

    def init_extra(self) -> Tensor:
        """Their initial values (P_extra,), the same for every agent."""
        return torch.zeros(0)

    @abstractmethod
    def buffer(self, R: int, K: int) -> np.ndarray:
        """A rollout's worth of actions of K agents, zeros: (R, K, *action shape)."""

    @abstractmethod
    def sample(self, out: Tensor, extra: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """out (K, A) the actor's outputs, extra (K, P_extra) -> actions (K, *action shape)
        drawn from `gen`, and their log-probabilities (K,)."""

    @abstractmethod
    def evaluate(self, out: Tensor, extra: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
        """out (K, R, A), extra (K, P_extra), actions a (K, R, *action shape) -> their
        log-probabilities (K, R) and the policy's entropy (K, R)."""


class Categorical(ActionDist):
    """Discrete(n): the actor's n outputs are logits; an action is an int64 in [0, n)."""

    dtype = np.int64

    def __init__(self, n: int) -> None:
        self.outputs = n

    def buffer(self, R: int, K: int) -> np.ndarray:
        return np.zeros((R, K), np.int64)

    def sample(self, out: Tensor, extra: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        logp_all = F.log_softmax(out, dim=-1)  # (K, A)
        action = torch.multinomial(logp_all.exp(), 1, generator=gen)[:, 0]  # (K,)
        return action, logp_all.gather(1, action[:, None])[:, 0]

    def evaluate(self, out: Tensor, extra: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
        logp_all = F.log_softmax(out, dim=-1)  # (K, R, A)
        logp = logp_all.gather(2, a[..., None])[..., 0]  # (K, R)
        return logp, -(logp_all.exp() * logp_all).sum(-1)


class Gaussian(ActionDist):
    """A Box of d numbers: a diagonal Gaussian, mean = centre + half * out (the actor's d
    outputs) and std = half * exp(log_std), log_std (d,) per agent, state-independent (PPO's
    MuJoCo policy, Schulman et al. 2017); centre and half are the box's middle and
    half-width. Log-probabilities and entropy are of the action as drawn (before the world's
    clip), in the box's units, summed over the d dimensions."""

    dtype = np.float32

    def __init__(self, box: ActionBox, init_log_std: float | None = None) -> None:
        self.box, self.outputs = box, box.dim
        self.init_log_std = INIT_LOG_STD if init_log_std is None else init_log_std
        low = torch.tensor(box.low, dtype=torch.float64)  # (d,)
        high = torch.tensor(box.high, dtype=torch.float64)
        self.centre = ((low + high) / 2).float()
        self.half = ((high - low) / 2).float()
        self.log_half = self.half.log()

    @property
    def extra_specs(self) -> list[Spec]:
        return [("actor.log_std", (self.outputs,))]

    def init_extra(self) -> Tensor:
        return torch.full((self.outputs,), self.init_log_std)

    def buffer(self, R: int, K: int) -> np.ndarray:
        return np.zeros((R, K, self.outputs), np.float32)

    def mean_and_log_std(self, out: Tensor, log_std: Tensor) -> tuple[Tensor, Tensor]:
        """out (K, ..., d), log_std (K, d) -> the mean (K, ..., d) and the log std (K, 1.., d)
        of the action, in the box's units."""
        shape = (log_std.shape[0],) + (1,) * (out.dim() - 2) + (self.outputs,)
        return self.centre + self.half * out, (log_std + self.log_half).view(shape)

    def sample(self, out: Tensor, extra: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        mean, log_std = self.mean_and_log_std(out, extra)  # (K, d), (K, d)
        action = mean + log_std.exp() * torch.randn(mean.shape, generator=gen)
        return action, normal_log_prob(action, mean, log_std).sum(-1)

    def evaluate(self, out: Tensor, extra: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = self.mean_and_log_std(out, extra)  # (K, R, d), (K, 1, d)
        logp = normal_log_prob(a, mean, log_std).sum(-1)  # (K, R)
        # a Gaussian's entropy, 1/2 log(2 pi e sigma^2) per dimension, is the same everywhere
        entropy = (log_std + 0.5 * (1.0 + LOG_2PI)).sum(-1)  # (K, 1)
        return logp, entropy.expand_as(logp)


def normal_log_prob(x: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """log N(x; mean, exp(log_std)^2), elementwise."""
    z = (x - mean) * torch.exp(-log_std)
    return -0.5 * z * z - log_std - 0.5 * LOG_2PI


def gae(
    rewards: np.ndarray,
    ends: np.ndarray,
    values: np.ndarray,
    next_value: np.ndarray,
    gamma: float,
    lam: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation (Schulman et al. 2016) over a rollout of R steps of K
    agents: advantages and returns (R, K) float32.

    rewards, values (R, K); ends (R, K) bool: the episode ended after that step (a time-limit
    cut counts as an end; its reward already holds gamma * V(final window)); next_value (K,):
    the value of the window after the last step.
        delta_t = r_t + gamma V_{t+1} (1 - end_t) - V_t,   A_t = delta_t + gamma lambda
        (1 - end_t) A_{t+1},   return_t = A_t + V_t.
    """
    R, K = rewards.shape
    adv = np.zeros((R, K), np.float32)
    next_v, next_adv = next_value.astype(np.float32), np.zeros(K, np.float32)
    for t in range(R - 1, -1, -1):
        cont = 1.0 - ends[t].astype(np.float32)
        delta = rewards[t] + gamma * next_v * cont - values[t]
        next_adv = delta + gamma * lam * cont * next_adv
        adv[t] = next_adv
        next_v = values[t]
    return adv, (adv + values).astype(np.float32)


class PolicyPopulation:
    """K agents' actor and critic Yan models, stacked in one flat (K, P) tensor.

    Row layout: [actor | critic | extra], actor and critic each a whole Yan model of P_role
    numbers with the action head of agents/yan/io.py (policy outputs and value), extra the
    action distribution's own per-agent numbers (a Gaussian's log std; none for a discrete
    space); `specs` names them "actor.<name>", "critic.<name>" and e.g. "actor.log_std".
    The actor reads only its policy outputs and the critic only its value: the unused
    half of each head (D + 1 and A * (D + 1) numbers, ~1.5% of the row for the spread scenario)
    gets no gradient, so Adam never moves it and its gossip deltas are zero. Both roles start
    from the same `init_flat(seed)` draw (a common init is what makes averaging between agents
    meaningful; nothing requires the two roles to differ at the start)."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        learn_cfg: LearnConfig,
        n_agents: int,
        obs_dim: int,
        actions: int | ActionBox,
        seed: int,
    ) -> None:
        """actions: Discrete(n) as n, or a continuous action space."""
        self.model_cfg = model_cfg
        self.dist: ActionDist = (
            Gaussian(actions) if isinstance(actions, ActionBox) else Categorical(actions)
        )
        self.n_agents, self.obs_dim, self.n_actions = n_agents, obs_dim, self.dist.outputs
        heads = HeadConfig(n_actions=self.n_actions, next_step=False)
        self.model_specs = param_specs(model_cfg, obs_dim, heads)  # one role's layout
        self.role_params = num_params(self.model_specs)  # P_role
        self.specs: list[Spec] = [
            (f"{role}.{name}", shape) for role in ROLES for name, shape in self.model_specs
        ] + self.dist.extra_specs
        self.num_params = num_params(self.specs)
        row = init_flat(model_cfg, obs_dim, heads, seed).repeat(len(ROLES))  # (2 P_role,)
        if self.dist.extra_specs:
            row = torch.cat([row, self.dist.init_extra()])  # (P,)
        self.flat = torch.nn.Parameter(row.expand(n_agents, -1).clone().contiguous())  # (K, P)
        self.pooled = False
        """True: one policy for all K rows (gossip.topology centralized): every update applies the
        active agents' mean gradient to every row (agents.population.pool_gradients)."""
        self.optimizer = StackedOptimizer(
            learn_cfg.optimizer, learn_cfg.lr, n_agents, self.num_params
        )
        self.generator = torch.Generator().manual_seed(seed)
        self._route_records: list[RouteRecord] = []

    def split(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        """flat (K, P) -> views of its two models [actor | critic] (K, 2 P_role) and of the
        action distribution's extra numbers (K, P_extra), e.g. a Gaussian's log std."""
        models = len(ROLES) * self.role_params
        if models == flat.shape[1]:  # nothing extra (a discrete space): the row as it is
            return flat, flat[:, models:]
        return flat[:, :models], flat[:, models:]

    def _roles(
        self, x: Tensor, roles: slice, routing: Routing | None, flat: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """x (K, B, W, obs_dim) windows -> the action head of the chosen roles at each window's
        last step: policy outputs (K, n, B, A) and values (K, n, B), n = roles taken. flat:
        the (K, P) weights to run (default: the live ones, `self.flat`).

        The models [actor | critic] viewed as (K, 2, P_role) are 2K models of one layout, so
        both roles run as one stacked call over K * n "agents" (half the calls of two passes).
        """
        models, _ = self.split(self.flat if flat is None else flat)
        K = models.shape[0]
        rows = models.view(K, len(ROLES), self.role_params)[:, roles]  # (K, n, P_role)
        n = rows.shape[1]
        params = views(rows.reshape(K * n, -1), self.model_specs)  # K*n models
        xs = x.repeat_interleave(n, dim=0) if n > 1 else x  # (K*n, B, W, obs_dim)
        h = hidden(self.model_cfg, params, {"vector": xs}, routing)[:, :, -1:]  # (Kn, B, 1, D)
        logits, value = io.act(params.head, h)  # (Kn, B, 1, A), (Kn, B, 1)
        B = x.shape[1]
        return logits.view(K, n, B, -1), value.view(K, n, B)

    def policy(self, x: Tensor, routing: Routing | None = None) -> Tensor:
        """x (K, B, W, obs_dim) windows -> the actor's outputs (K, B, A) at their last step
        (logits, or a Gaussian's mean in half-widths about the box's centre)."""
        return self._roles(x, slice(0, 1), routing)[0][:, 0]

    def value(
        self, x: Tensor, routing: Routing | None = None, flat: Tensor | None = None
    ) -> Tensor:
        """x (K, B, W, obs_dim) windows -> the critic's values (K, B) at their last step."""
        return self._roles(x, slice(1, 2), routing, flat)[1][:, 0]

    def policy_and_value(
        self, x: Tensor, routing: Routing | None = None, flat: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Both at once (training): the actor's outputs (K, B, A), the critic's values (K, B).
        routing: the selective FFN's context for 2K models (actor and critic of each agent)."""
        logits, value = self._roles(x, slice(0, 2), routing, flat)
        return logits[:, 0], value[:, 1]

    @property
    def select_stats(self) -> dict[str, np.ndarray]:
        """Routing figures of the last update (density 1 for a dense model)."""
        stats = selective_stats(self.model_cfg, self._route_records)
        return {k: v.detach().numpy() for k, v in stats.items()}


class OnlineActorCritic:
    """K agents acting every tick and updating their policies every ``rl.rollout`` ticks."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        learn_cfg: LearnConfig,
        rl_cfg: RLConfig,
        n_agents: int,
        obs_dim: int,
        actions: int | ActionBox,
        seed: int,
    ) -> None:
        """actions: Discrete(n) as n, or a continuous action space."""
        self.rl = rl_cfg
        self.population = PolicyPopulation(model_cfg, learn_cfg, n_agents, obs_dim, actions, seed)
        self.n_agents, self.obs_dim = n_agents, obs_dim
        self.n_actions = self.population.n_actions  # the actor's outputs: n, or d
        K, R, W = n_agents, rl_cfg.rollout, learn_cfg.window
        self.obs_moments = RunningMoments(K, (obs_dim,))  # each agent's own observations
        self.return_moments = RunningMoments(K)  # each agent's running discounted return
        self._ret_run = np.zeros(K)  # (K,) running discounted return, for reward scaling
        self._hist = np.zeros((K, W, obs_dim), np.float32)  # this episode's normalised window
        self._x = np.zeros((R, K, W, obs_dim), np.float32)  # rollout: windows acted on
        self._a = self.population.dist.buffer(R, K)  # actions (R, K, *action shape)
        self._logp = np.zeros((R, K), np.float32)  # log-prob of the action when taken
        self._r = np.zeros((R, K), np.float32)  # reward that followed
        self._end = np.zeros((R, K), bool)  # the agent's episode ended after this step
        self._cut = np.zeros((R, K), bool)  # ... by a time limit: bootstrap from _final
        self._final = np.zeros((R, K, W, obs_dim), np.float32)  # window of the cut-off obs
        self._alive = np.zeros((R, K), bool)  # the agent was acting (not yet terminated)
        self._t = 0  # steps filled in the current rollout
        self._pending = False  # the last step still waits for its reward
        self._new_examples = np.zeros(K, np.int64)
        self.updates = 0
        self._job: Update | None = None  # an update running beside acting (rl.update_lag)
        # an update on its own thread draws from its own generator (the selective FFN's router
        # noise), so acting's draws do not depend on when the thread ran
        self._learn_generator = torch.Generator().manual_seed(seed + 1)
        self.stats: dict[str, float] = {}
        """Figures of the last update: policy_loss, value_loss, entropy, approx_kl, clip_frac."""

    def act(
        self,
        obs: np.ndarray,
        reward: np.ndarray | None = None,
        done: np.ndarray | None = None,
        alive: np.ndarray | None = None,
        truncated: np.ndarray | None = None,
        final_obs: np.ndarray | None = None,
    ) -> np.ndarray:
        """One tick for every agent; returns the actions: (K,) int64 for a discrete space, (K, d)
        float32 for a continuous one (as drawn: the world clips them to its box).

        obs (K, obs_dim): what each agent observes now. reward (K,): what the previous action
        earned; done (K,) bool: the previous action ended the agent's episode, so ``obs`` is the
        first of a new one; alive (K,) bool: the agent takes part in this step (its action is
        used; an agent that stops being alive without ``done`` has ended its episode too).
        truncated (K,) bool with final_obs (K, obs_dim): episodes among those that ended that
        a time limit cut off, and their last observation, to bootstrap from. The first call of
        a run passes no reward.
        """
        K = self.n_agents
        obs = np.asarray(obs, np.float32).reshape(K, self.obs_dim)
        done_k = np.zeros(K, bool) if done is None else np.asarray(done, bool).reshape(K)
        alive_k = np.ones(K, bool) if alive is None else np.asarray(alive, bool).reshape(K)
        if self._pending:
            self._record_outcome(reward, done_k, alive_k, truncated, final_obs)
        if self.rl.enabled and self.rl.obs_norm:
            self.obs_moments.update(obs.astype(np.float64), alive_k)
        # this episode's window: cleared where a new episode starts
        self._hist[done_k] = 0.0
        self._hist[:, :-1] = self._hist[:, 1:]
        self._hist[:, -1] = self._normalise(obs)
        if self._job is not None:
            self._job.due -= 1
            if self._job.due == 0:  # the update learned beside the last update_lag ticks
                self.settle()
        if self._pending and self._t == self.rl.rollout:
            if self.rl.enabled:
                self._update()
            self._t = 0
            self._cut[:] = False
        pop = self.population
        with torch.no_grad():
            out = pop.policy(torch.from_numpy(self._hist[:, None]))[:, 0]  # (K, A)
            action, logp = pop.dist.sample(out, pop.split(pop.flat)[1], pop.generator)
        t = self._t
        self._x[t] = self._hist
        self._a[t] = action.numpy()
        self._logp[t] = logp.numpy()
        self._alive[t] = alive_k
        self._new_examples += alive_k
        self._t += 1
        self._pending = True
        return action.numpy().astype(pop.dist.dtype)

    def _record_outcome(
        self,
        reward: np.ndarray | None,
        done: np.ndarray,
        alive: np.ndarray,
        truncated: np.ndarray | None,
        final_obs: np.ndarray | None,
    ) -> None:
        """What the pending (last recorded) step led to, as `act` receives it: its reward, and
        whether and how the agent's episode ended (done (K,) and alive (K,) bool)."""
        K, t = self.n_agents, self._t - 1
        r = np.zeros(K, np.float32) if reward is None else np.asarray(reward, np.float32)
        ended = done | (self._alive[t] & ~alive)
        self._r[t] = r.reshape(K)
        self._track_return(self._r[t], ended, self._alive[t])
        self._end[t] = ended
        cut = np.zeros(K, bool) if truncated is None else np.asarray(truncated, bool)
        cut = cut.reshape(K) & ended & (final_obs is not None)
        self._cut[t] = cut
        if cut.any():
            last = self._normalise(np.asarray(final_obs, np.float32).reshape(K, -1))
            self._final[t, cut, :-1] = self._hist[cut, 1:]
            self._final[t, cut, -1] = last[cut]

    def _normalise(self, obs: np.ndarray) -> np.ndarray:
        """(K, obs_dim) -> each agent's observation in units of its own running std."""
        if not self.rl.obs_norm:
            return obs
        m = self.obs_moments
        z = (obs - m.mean) / (m.std + STD_EPS)
        return np.clip(z, -OBS_CLIP, OBS_CLIP).astype(np.float32)

    def _track_return(self, r: np.ndarray, ended: np.ndarray, lived: np.ndarray) -> None:
        """Follow each agent's running discounted return, whose std scales its rewards."""
        self._ret_run = self._ret_run * self.rl.discount + r
        if self.rl.enabled:
            self.return_moments.update(self._ret_run, lived)
        self._ret_run[ended] = 0.0

    def _scaled_rewards(self) -> np.ndarray:
        """The rollout's rewards (R, K) divided by each agent's running std of its discounted
        return (PPO's reward scaling, Engstrom et al. 2020): values and advantages stay O(1)
        whatever the env's reward scale, so one set of coefficients fits many envs. Applied at
        update time, so a whole rollout shares one scale and the first one already has a
        rollout's worth of returns behind its std."""
        return (self._r / np.maximum(self.return_moments.std, 1e-4)).astype(np.float32)

    def take_example_counts(self) -> np.ndarray:
        """Steps each agent lived since the last call (K,) int64: how much experience its
        next delta carries (the coordinator's FedAvg weights)."""
        out, self._new_examples = self._new_examples, np.zeros(self.n_agents, np.int64)
        return out

    def _lived(self, *, copy: bool) -> Lived:
        """The rollout just lived, as its update reads it (copied when the update runs beside
        the next rollout, whose steps refill the buffers)."""
        c = np.copy if copy else np.asarray
        return Lived(
            x=c(self._x),
            a=c(self._a),
            logp=c(self._logp),
            r=self._scaled_rewards(),
            end=c(self._end),
            cut=c(self._cut),
            final=c(self._final),
            alive=c(self._alive),
            after=c(self._hist),
        )

    def _values(self, lived: Lived, flat: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The critic's values, now: of every rollout step (R, K), of the window after the
        last one (K,), and of the final window of each time-limit cut (R, K; 0 elsewhere)."""
        pop, R = self.population, self.rl.rollout
        windows = [lived.x.transpose(1, 0, 2, 3), lived.after[:, None]]  # (K, R | 1, W, obs)
        if lived.cut.any():
            windows.append(lived.final.transpose(1, 0, 2, 3))
        with torch.no_grad():
            v = pop.value(torch.from_numpy(np.concatenate(windows, 1)), flat=flat).numpy()
        v_final = v[:, R + 1 :].T * lived.cut if lived.cut.any() else np.zeros((R, self.n_agents))
        return v[:, :R].T, v[:, R], v_final.astype(np.float32)

    def _routing(self, generator: torch.Generator) -> Routing | None:
        cfg, pop = self.population.model_cfg, self.population
        if cfg.ffn_groups == 1:
            return None
        a = noise_scale(pop.optimizer.t, cfg.router_noise_anneal_steps)  # (K,)
        a = a.repeat_interleave(len(ROLES))  # (2K,) actor and critic of an agent alike
        return Routing(noise_scale=a if bool((a > 0).any()) else None, generator=generator)

    def _update(self) -> None:
        """Learn from the rollout just lived: at once (``rl.update_lag`` 0), or on a thread
        beside the next ``update_lag`` ticks of acting, applied before the tick after them."""
        pop = self.population
        if not self.rl.update_lag:
            self._apply(self._learn(self._lived(copy=False), pop.flat, pop.generator))
            return
        assert self._job is None, "the previous update is applied before the next one starts"
        start = pop.flat.detach().clone()
        self._job = Update(start, torch.nn.Parameter(start.clone()), self.rl.update_lag)
        lived, job = self._lived(copy=True), self._job

        def learn() -> None:
            try:
                job.result = self._learn(lived, job.work, self._learn_generator)
            except BaseException as exc:  # re-raised by the acting thread
                job.error = exc

        job.thread = threading.Thread(target=learn, name="ppo-update", daemon=True)
        job.thread.start()

    def settle(self) -> None:
        """Wait for an update running beside acting and apply it now (at the end of a run, or
        before reading the weights from outside the tick loop)."""
        job, self._job = self._job, None
        if job is None:
            return
        assert job.thread is not None
        job.thread.join()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        # as a change, so that what gossip merged into the live weights meanwhile stays
        self.population.flat.data.add_(job.work.data - job.start)
        self._apply(job.result)

    def _apply(self, result: Learned) -> None:
        self.updates += 1
        self.stats = result.stats
        self.population._route_records = result.route_records

    def _learn(self, lived: Lived, flat: torch.nn.Parameter, gen: torch.Generator) -> Learned:
        """`rl.epochs` PPO passes over the rollout, stepping `flat` (K, P) in place; returns the
        figures of the update: policy_loss, value_loss, entropy, approx_kl, clip_frac."""
        ro = self._rollout(lived, flat)
        records: list[RouteRecord] = []
        for _ in range(self.rl.epochs):
            last = self._ppo_epoch(ro, flat, gen, records)
        with torch.no_grad():
            kl = ro.mean(ro.old_logp - last.logp)
            clipped = ro.mean(((last.ratio - 1).abs() > self.rl.clip).float())
        stats = {
            "policy_loss": float(last.policy_loss.detach().mean()),
            "value_loss": float(last.value_loss.detach().mean()),
            "entropy": float(last.entropy.detach().mean()),
            "approx_kl": float(kl.mean()),
            "clip_frac": float(clipped.mean()),
        }
        return Learned(stats, records)

    def _rollout(self, lived: Lived, flat: Tensor) -> Rollout:
        """The rollout as the update reads it: per agent, its windows, actions, their
        log-probabilities when taken, advantages (GAE, normalised) and returns."""
        rl = self.rl
        v, v_next, v_final = self._values(lived, flat)
        # a time-limit cut ends the episode for GAE but earns gamma * V(final window)
        r = lived.r + rl.discount * v_final
        adv, ret = gae(r, lived.end, v, v_next, rl.discount, rl.gae_lambda)
        alive = torch.from_numpy(lived.alive.T.copy()).float()  # (K, R)
        ro = Rollout(
            x=torch.from_numpy(lived.x.transpose(1, 0, 2, 3).copy()),  # (K, R, W, obs_dim)
            a=torch.from_numpy(np.swapaxes(lived.a, 0, 1).copy()),  # (K, R, *action shape)
            old_logp=torch.from_numpy(lived.logp.T.copy()),  # (K, R)
            adv=torch.from_numpy(adv.T.copy()),  # (K, R)
            ret=torch.from_numpy(ret.T.copy()),  # (K, R)
            alive=alive,
            n=alive.sum(1),  # (K,)
        )
        # per-agent advantage normalisation over its live steps (as PPO's reference code):
        # the policy's step size does not depend on the reward scale
        mean = ro.mean(ro.adv)[:, None]
        std = ro.mean((ro.adv - mean) ** 2).sqrt()[:, None]
        return replace(ro, adv=(ro.adv - mean) / (std + STD_EPS))

    def _ppo_epoch(
        self,
        ro: Rollout,
        flat: torch.nn.Parameter,
        gen: torch.Generator,
        records: list[RouteRecord],
    ) -> EpochResult:
        """One pass of PPO's clipped objective over the rollout, one optimizer step per agent
        that lived in it; the selective FFN's routing of the pass goes to `records`."""
        pop, rl = self.population, self.rl
        routing = self._routing(gen)
        policy, value = pop.policy_and_value(ro.x, routing, flat)  # (K, R, A), (K, R)
        logp, entropy = pop.dist.evaluate(policy, pop.split(flat)[1], ro.a)  # (K, R) each
        ratio = (logp - ro.old_logp).exp()
        surrogate = torch.minimum(ratio * ro.adv, ratio.clamp(1 - rl.clip, 1 + rl.clip) * ro.adv)
        out = EpochResult(
            logp, ratio, -ro.mean(surrogate), ro.mean((value - ro.ret) ** 2), ro.mean(entropy)
        )
        loss = out.policy_loss + rl.value_coef * out.value_loss - rl.entropy_coef * out.entropy
        if routing is not None:
            balance = load_balance_loss(routing.records)  # (2K,)
            loss = loss + balance.view(-1, len(ROLES)).sum(1)
            records[:] = [RouteRecord(r.selected, r.probs.detach()) for r in routing.records]
        self._step(loss, ro.n > 0, flat)  # (K,) loss, agents that lived
        return out

    def _step(self, loss: Tensor, active: Tensor, flat: torch.nn.Parameter) -> None:
        """One optimizer step of the active (K,) agents on their losses (K,), actor and critic
        gradients clipped apart."""
        pop, rl = self.population, self.rl
        (grad,) = torch.autograd.grad(loss.sum(), flat)  # (K, P)
        # actor and critic clipped on their own: a large value gradient must not shrink
        # the policy's step
        models, extra = pop.split(grad)  # views: scaled in place
        parts = models.view(grad.shape[0], len(ROLES), -1)  # (K, 2, P_role)
        norm = parts.norm(dim=2, keepdim=True)  # (K, 2, 1)
        if extra.shape[1]:  # the policy's own numbers (a log std) are the actor's
            actor = torch.hypot(norm[:, 0], extra.norm(dim=1, keepdim=True))  # (K, 1)
            norm = torch.stack([actor, norm[:, 1]], 1)
            extra.mul_(rl.max_grad_norm / actor.clamp(min=rl.max_grad_norm))
        parts.mul_(rl.max_grad_norm / norm.clamp(min=rl.max_grad_norm))
        if pop.pooled:  # the centralized upper bound: one policy, everyone's experience
            grad, active = pool_gradients(grad, active)
        pop.optimizer.step(flat.data, grad, active=active)
