"""Online actor-critic on the Yan model: K agents that learn a policy from reward while acting.

Used for worlds that hand out rewards (any PettingZoo ParallelEnv, envs/pz_world.py). Every
agent has its own Yan model with a policy and a value head (agents/yan/io.py `act`), stacked
in one flat (K, P) tensor like `Population`, so gossip exchanges deltas of it the same way.

Acting: an agent reads the last ``window`` observations of its current episode (zeros before
the episode's first step) and samples an action from its policy; the window's last state gives
the policy logits and the value estimate.

Learning (``rl.enabled``): every ``rl.rollout`` ticks each agent takes ``rl.epochs`` passes of
PPO's clipped objective (Schulman et al. 2017) over the rollout it just lived, with advantages
from generalised advantage estimation (Schulman et al. 2016; gamma ``rl.discount``, lambda
``rl.gae_lambda``), normalised per agent; loss = policy + value_coef * value - entropy_coef *
entropy; each agent's gradient clipped to ``rl.max_grad_norm`` on its own; the per-agent
optimizer of `Population` (Adam with its own moments and step count per agent). The last
rollout step bootstraps from the value of the observation that follows it, or from 0 when the
episode ended there. Steps where an agent is not alive (terminated before its team) are left
out of its loss; an agent with no live step in a rollout stays unchanged.

Everything random (action sampling, router noise) comes from one torch generator seeded with
the run seed, so a run is a pure function of its seed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from agents.config import LearnConfig, ModelConfig, RLConfig
from agents.population import StackedOptimizer
from agents.yan import io
from agents.yan.io import HeadConfig
from agents.yan.model import hidden, init_flat, num_params, param_specs, unflatten
from agents.yan.selective import RouteRecord, Routing, load_balance_loss, selective_stats


class PolicyPopulation:
    """K agents' Yan models with policy and value heads, stacked in one flat (K, P) tensor."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        learn_cfg: LearnConfig,
        n_agents: int,
        obs_dim: int,
        n_actions: int,
        seed: int,
    ) -> None:
        self.model_cfg = model_cfg
        self.n_agents, self.obs_dim, self.n_actions = n_agents, obs_dim, n_actions
        heads = HeadConfig(n_actions=n_actions, next_step=False)
        self.specs = param_specs(model_cfg, obs_dim, heads)
        self.num_params = num_params(self.specs)
        row = init_flat(model_cfg, obs_dim, heads, seed)  # (P,)
        self.flat = torch.nn.Parameter(row.expand(n_agents, -1).clone().contiguous())  # (K, P)
        self.optimizer = StackedOptimizer(
            learn_cfg.optimizer, learn_cfg.lr, n_agents, self.num_params
        )
        self.generator = torch.Generator().manual_seed(seed)
        self._route_records: list[RouteRecord] = []

    def policy(self, x: Tensor, routing: Routing | None = None) -> tuple[Tensor, Tensor]:
        """x (K, B, W, obs_dim) windows -> policy logits (K, B, A) and values (K, B) of the
        last step of each window."""
        params = unflatten(self.flat, self.specs)
        h = hidden(self.model_cfg, params, {"vector": x}, routing)[:, :, -1:]  # (K, B, 1, D)
        logits, value = io.act(params, h)
        return logits[:, :, 0], value[:, :, 0]

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
        n_actions: int,
        seed: int,
    ) -> None:
        self.rl = rl_cfg
        self.n_agents, self.obs_dim, self.n_actions = n_agents, obs_dim, n_actions
        self.population = PolicyPopulation(model_cfg, learn_cfg, n_agents, obs_dim, n_actions, seed)
        K, R, W = n_agents, rl_cfg.rollout, learn_cfg.window
        self._hist = np.zeros((K, W, obs_dim), np.float32)  # (K, W, obs_dim) this episode's
        self._x = np.zeros((R, K, W, obs_dim), np.float32)  # rollout: windows acted on
        self._a = np.zeros((R, K), np.int64)  # actions
        self._logp = np.zeros((R, K), np.float32)  # log-prob of the action when taken
        self._v = np.zeros((R, K), np.float32)  # value estimate when acting
        self._r = np.zeros((R, K), np.float32)  # reward that followed
        self._done = np.zeros((R, K), bool)  # the episode ended after this step
        self._alive = np.zeros((R, K), bool)  # the agent was acting (not yet terminated)
        self._ret_run = np.zeros(K)  # (K,) running discounted return, for reward scaling
        self._ret_stats = np.zeros(3)  # count, mean, M2 of those returns (Welford)
        self._t = 0  # steps filled in the current rollout
        self._pending = False  # the last step still waits for its reward
        self._new_examples = np.zeros(K, np.int64)
        self.updates = 0
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
        """One tick for every agent; returns the actions (K,) int64.

        obs (K, obs_dim): what each agent observes now. reward (K,): what the previous action
        earned; done (K,) bool: the previous action ended the agent's episode, so ``obs`` is the
        first of a new one; alive (K,) bool: the agent takes part in this step (its action is
        used). truncated (K,) bool with final_obs (K, obs_dim): episodes among the done ones
        that a time limit cut off, and their last observation: their last reward gets
        discount * V(final window) added (partial-episode bootstrapping, Pardo et al. 2018),
        so the value function does not have to learn the clock. The first call of a run passes
        no reward.
        """
        K = self.n_agents
        obs = np.asarray(obs, np.float32).reshape(K, self.obs_dim)
        done_k = np.zeros(K, bool) if done is None else np.asarray(done, bool).reshape(K)
        alive_k = np.ones(K, bool) if alive is None else np.asarray(alive, bool).reshape(K)
        if self._pending:
            r = np.zeros(K, np.float32) if reward is None else np.asarray(reward, np.float32)
            r = self._scale(r.reshape(K), done_k)
            cut = np.zeros(K, bool) if truncated is None else np.asarray(truncated, bool)
            cut = cut.reshape(K) & done_k
            if cut.any() and final_obs is not None:
                last = np.concatenate(
                    [self._hist[:, 1:], np.asarray(final_obs, np.float32).reshape(K, 1, -1)], 1
                )
                with torch.no_grad():
                    _, v_last = self.population.policy(torch.from_numpy(last[:, None]))
                r = r + self.rl.discount * v_last[:, 0].numpy() * cut
            self._r[self._t - 1] = r
            self._done[self._t - 1] = done_k
        # this episode's window: cleared where a new episode starts
        self._hist[done_k] = 0.0
        self._hist[:, :-1] = self._hist[:, 1:]
        self._hist[:, -1] = obs
        if self._pending and self._t == self.rl.rollout:
            if self.rl.enabled:
                self._update(bootstrap_ok=~done_k)
            self._t = 0
        with torch.no_grad():
            logits, value = self.population.policy(torch.from_numpy(self._hist[:, None]))
        logp_all = F.log_softmax(logits[:, 0], dim=-1)  # (K, A)
        action = torch.multinomial(logp_all.exp(), 1, generator=self.population.generator).squeeze(
            1
        )  # (K,)
        t = self._t
        self._x[t] = self._hist
        self._a[t] = action.numpy()
        self._logp[t] = logp_all.gather(1, action[:, None])[:, 0].numpy()
        self._v[t] = value[:, 0].numpy()
        self._alive[t] = alive_k
        self._new_examples += alive_k
        self._t += 1
        self._pending = True
        return action.numpy().astype(np.int64)

    def _scale(self, r: np.ndarray, done: np.ndarray) -> np.ndarray:
        """Divide rewards by the running std of the discounted return (PPO's reward scaling,
        Engstrom et al. 2020): values and advantages stay O(1) whatever the env's reward scale,
        so one set of coefficients fits many envs."""
        self._ret_run = self._ret_run * self.rl.discount + r
        n, mean, m2 = self._ret_stats
        for x in self._ret_run:
            n += 1
            d = x - mean
            mean += d / n
            m2 += d * (x - mean)
        self._ret_stats[:] = (n, mean, m2)
        self._ret_run[done] = 0.0
        std = np.sqrt(m2 / n) if n > 1 else 1.0
        return (r / max(std, 1e-4)).astype(np.float32)

    def take_example_counts(self) -> np.ndarray:
        """Steps each agent lived since the last call (K,) int64: how much experience its
        next delta carries (the coordinator's FedAvg weights)."""
        out, self._new_examples = self._new_examples, np.zeros(self.n_agents, np.int64)
        return out

    def _advantages(self, bootstrap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """GAE over the rollout: advantages and returns (R, K)."""
        gamma, lam = self.rl.discount, self.rl.gae_lambda
        R = self.rl.rollout
        adv = np.zeros((R, self.n_agents), np.float32)
        next_v, next_adv = bootstrap, np.zeros(self.n_agents, np.float32)
        for t in range(R - 1, -1, -1):
            cont = 1.0 - self._done[t].astype(np.float32)
            delta = self._r[t] + gamma * next_v * cont - self._v[t]
            next_adv = delta + gamma * lam * cont * next_adv
            adv[t] = next_adv
            next_v = self._v[t]
        return adv, adv + self._v

    def _update(self, bootstrap_ok: np.ndarray) -> None:
        pop, rl = self.population, self.rl
        with torch.no_grad():
            _, v_next = pop.policy(torch.from_numpy(self._hist[:, None]))
        bootstrap = v_next[:, 0].numpy() * bootstrap_ok
        adv, ret = self._advantages(bootstrap.astype(np.float32))
        alive = torch.from_numpy(self._alive.T.copy()).float()  # (K, R)
        n = alive.sum(1)  # (K,)
        active = n > 0
        a = torch.from_numpy(self._a.T.copy())  # (K, R)
        old_logp = torch.from_numpy(self._logp.T.copy())
        adv_t = torch.from_numpy(adv.T.copy())
        mean = (adv_t * alive).sum(1, keepdim=True) / n.clamp(min=1)[:, None]
        var = (((adv_t - mean) ** 2) * alive).sum(1, keepdim=True) / n.clamp(min=1)[:, None]
        adv_t = (adv_t - mean) / (var.sqrt() + 1e-8)
        ret_t = torch.from_numpy(ret.T.copy())
        x = torch.from_numpy(self._x.transpose(1, 0, 2, 3).copy())  # (K, R, W, obs_dim)
        cfg = pop.model_cfg

        def masked_mean(v: Tensor) -> Tensor:  # (K, R) -> (K,)
            return (v * alive).sum(1) / n.clamp(min=1)

        for _ in range(rl.epochs):
            routing = None
            if cfg.ffn_groups > 1:
                routing = Routing(noise_scale=None, generator=pop.generator)
            logits, value = pop.policy(x, routing)  # (K, R, A), (K, R)
            logp_all = F.log_softmax(logits, dim=-1)
            logp = logp_all.gather(2, a[..., None])[..., 0]  # (K, R)
            ratio = (logp - old_logp).exp()
            surrogate = torch.minimum(ratio * adv_t, ratio.clamp(1 - rl.clip, 1 + rl.clip) * adv_t)
            entropy = -(logp_all.exp() * logp_all).sum(-1)  # (K, R)
            policy_loss = -masked_mean(surrogate)
            value_loss = masked_mean((value - ret_t) ** 2)
            ent = masked_mean(entropy)
            loss = policy_loss + rl.value_coef * value_loss - rl.entropy_coef * ent  # (K,)
            if routing is not None:
                loss = loss + load_balance_loss(routing.records)
                pop._route_records = [
                    RouteRecord(r.selected, r.probs.detach()) for r in routing.records
                ]
            (grad,) = torch.autograd.grad(loss.sum(), pop.flat)  # (K, P)
            norm = grad.norm(dim=1, keepdim=True)
            grad = grad * (rl.max_grad_norm / norm.clamp(min=rl.max_grad_norm))
            pop.optimizer.step(pop.flat.data, grad, active=active)
        with torch.no_grad():
            kl = masked_mean(old_logp - logp)
            clipped = masked_mean(((ratio - 1).abs() > rl.clip).float())
        self.updates += 1
        self.stats = {
            "policy_loss": float(policy_loss.detach().mean()),
            "value_loss": float(value_loss.detach().mean()),
            "entropy": float(ent.detach().mean()),
            "approx_kl": float(kl.mean()),
            "clip_frac": float(clipped.mean()),
        }
