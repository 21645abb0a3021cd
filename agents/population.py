"""K agents' Yan models stacked: one batched call serves all K, every agent keeps its own weights,
optimizer state and recurrent state.

All agents start from the same initial weights (`init_flat(seed)`): a common init is what makes
parameter averaging between agents meaningful (FedAvg, McMahan et al. 2017, fig. 1). Gossip code
may edit `flat.data` in place (also through `flat.data.numpy()`, which shares memory), so `flat`
stays one contiguous float32 CPU tensor and is never replaced.

With selective activation (model_cfg.ffn_groups > 1) training adds the Switch load-balance loss
and anneals each agent's router noise over its own step count; `select_stats` holds the latest
routing figures per agent for the runner to log (agents/yan/selective.py).

Observations arrive flat, one float vector of `obs_dim` per agent and step, whatever the
sensor: the learner's rings and replay memories hold plain arrays. `inputs` (an InputConfig)
says how to read one: a vector-only input is the vector itself; with an image the vector is
[image pixels (H*W*C, HWC order), vector (vector_dim)], and `split_obs` cuts it into the model's
{"image", "vector"} observation right before every forward.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.optim.adam import adam

from agents.config import LearnConfig, ModelConfig
from agents.yan.io import InputConfig, self_supervised_loss
from agents.yan.model import (
    Obs,
    State,
    as_obs,
    forward_chunkwise,
    forward_last,
    forward_parallel,
    forward_step,
    hidden,
    init_flat,
    init_state,
    num_params,
    param_specs,
    views,
)
from agents.yan.selective import (
    RouteRecord,
    Routing,
    load_balance_loss,
    noise_scale,
    selective_stats,
)

# Adam constants: the defaults of Kingma & Ba 2015 (and torch.optim.Adam).
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
# logits_parallel switches to the chunkwise form above this many tokens: the parallel form's
# (C, 2, T, T) mixing matrix grows as T^2. Measured here (default model, K=16, B=4, 1 thread,
# parallel vs chunkwise): T=64 14.5 vs 23 ms, T=128 62 vs 52 ms, T=256 183 vs 37 ms.
CHUNKWISE_FROM_T = 128
# chunk length: per token the Toeplitz work grows as L, the Python loop over chunks as T / L;
# at 64 a 16384-token prefill of one default agent took 0.43 s here
CHUNK = 64
# Tokens (agents x sequences x steps) per forward/backward pass when a call over many agents
# is cut into groups of agents (`agent_spans`). One pass over K = 500 agents' training batches
# (16 x 8 tokens) allocates activations of ~33 MB; glibc serves blocks that large with fresh
# mmaps, so every pass pays page faults, and they overflow the caches. Groups of 8,192 tokens
# (64 agents) took 270-300 ms where one pass took 390-490 ms (forward + backward, default
# model, 1 thread, this machine). Each agent's computation is its own (batched matmuls over the
# agent dim, per-agent reductions), so grouping changes no agent's arithmetic, only the
# shapes of the batched calls: the same bits on the machines measured, though a BLAS may pick
# another kernel for another batch size (tests compare against a float64 reference instead).
AGENT_CHUNK_TOKENS = 8192


class StackedOptimizer:
    """Adam or SGD over a stacked (K, P) tensor: each agent's row is its own parameter group,
    with its own moments and step count.

    Not torch.optim.Adam over the whole tensor because (1) an agent that did not train this step
    must stay exactly unchanged, yet Adam with nonzero momentum moves a parameter even at zero
    gradient, and (2) Adam's bias correction needs each agent's own step count: with one shared
    count an agent's first real step would be taken with a near-1 correction and move ~3x lr.
    The update itself is torch's fused Adam kernel (torch.optim.adam.adam), given only the rows
    of the agents that trained: ~10x faster than the same update written as tensor ops.
    """

    def __init__(self, kind: str, lr: float, n_agents: int, n_params: int) -> None:
        self.kind, self.lr = kind, lr
        self.m = torch.zeros(n_agents, n_params)  # (K, P) first moment
        self.v = torch.zeros(n_agents, n_params)  # (K, P) second moment
        self.t = torch.zeros(n_agents)  # (K,) steps taken by each agent (float: fused kernel)

    @torch.no_grad()
    def step(self, flat: Tensor, grad: Tensor, active: Tensor) -> None:
        """Update rows of `flat` (K, P) in place where active (K,) bool; other rows untouched."""
        rows = active.nonzero().flatten().tolist()
        if not rows:
            return
        if self.kind == "sgd":
            flat[rows] -= self.lr * grad[rows]
            self.t[rows] += 1
            return

        def pick(x: Tensor) -> list[Tensor]:
            return [x[k] for k in rows]  # row views: updated in place

        adam(
            pick(flat), pick(grad), pick(self.m), pick(self.v), [], pick(self.t),
            fused=True, amsgrad=False, beta1=ADAM_BETAS[0], beta2=ADAM_BETAS[1], lr=self.lr,
            weight_decay=0.0, eps=ADAM_EPS, maximize=False,
        )  # fmt: skip

    def reset(self, agents: list[int] | None = None) -> None:
        """Forget the optimizer state of some agents (all if None), e.g. after a model swap."""
        idx = slice(None) if agents is None else agents
        self.m[idx] = 0.0
        self.v[idx] = 0.0
        self.t[idx] = 0.0


Inputs = int | InputConfig | Mapping[str, Any]
"""What one flat observation holds: an int is a vector of that width; an InputConfig, or its
fields as a dict (e.g. a world's `input_config()`), describes an image plus a vector."""


def input_config(inputs: Inputs) -> InputConfig:
    """The InputConfig of an `Inputs` description; flat observations cannot carry tokens."""
    if isinstance(inputs, InputConfig):
        inp = inputs
    elif isinstance(inputs, int | np.integer):
        inp = InputConfig(vector_dim=int(inputs))
    else:
        inp = InputConfig.model_validate(dict(inputs))
    if inp.vocab:
        raise ValueError(
            f"flat observations hold an image and a vector, not discrete tokens: vocab must be "
            f"0, got {inp.vocab}"
        )
    return inp


def flat_dim(inp: InputConfig) -> int:
    """Width of one flat observation: image pixels (H*W*C) then the vector."""
    im = inp.image
    return inp.vector_dim + (0 if im is None else im.height * im.width * im.channels)


class Population:
    """K agents' Yan models stacked in one flat (K, P) parameter tensor."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        learn_cfg: LearnConfig,
        n_agents: int,
        obs_dim: Inputs,
        n_classes: int,
        seed: int,
    ) -> None:
        """obs_dim: the width of a vector observation, or the InputConfig of an image + vector
        one (see `Inputs`); `self.obs_dim` is then the flat width, `self.inputs` the config."""
        self.model_cfg, self.learn_cfg = model_cfg, learn_cfg
        self.inputs = input_config(obs_dim)
        self.n_agents, self.obs_dim, self.n_classes = n_agents, flat_dim(self.inputs), n_classes
        self.specs = param_specs(model_cfg, self.inputs, n_classes)
        self.num_params = num_params(self.specs)
        row = init_flat(model_cfg, self.inputs, n_classes, seed)  # (P,)
        self.flat = torch.nn.Parameter(row.expand(n_agents, -1).clone().contiguous())  # (K, P)
        self.optimizer = StackedOptimizer(
            learn_cfg.optimizer, learn_cfg.lr, n_agents, self.num_params
        )
        self.state: State = init_state(model_cfg, n_agents, 1)
        # router exploration noise: owned here so a run stays a pure function of the seed
        self.generator = torch.Generator().manual_seed(seed)
        self._route_records: list[RouteRecord] = []  # the last train_step's, detached
        self._grad: Tensor | None = None  # train_step's gradient buffer when it runs in groups
        self.pooled = False
        """True: one model for all K rows, trained on everyone's data (the centralized upper
        bound): each step averages the active agents' gradients and applies the mean to every
        row, so the rows, starting equal, stay equal (`pool_gradients`)."""

    # -- acting (recurrent form) ---------------------------------------------------------------

    @torch.no_grad()
    def step(self, x_t: np.ndarray | Tensor) -> Tensor:
        """x_t (K, obs_dim) -> logits (K, n_classes); advances every agent's recurrent state."""
        x = torch.as_tensor(x_t, dtype=torch.float32).view(self.n_agents, 1, self.obs_dim)
        logits, self.state = forward_step(
            self.model_cfg, views(self.flat, self.specs), self.split_obs(x), self.state
        )
        return logits[:, 0]  # (K, n_classes)

    def reset_state(self) -> None:
        self.state = init_state(self.model_cfg, self.n_agents, 1)

    @torch.no_grad()
    def renew(self, agents: list[int], seed: int) -> None:
        """Give these agents a fresh model (a new device joining): their rows back to the
        initial parameters of `seed` (what every agent started from), their optimizer state
        and recurrent state forgotten (not with `pooled`: one model that everyone uses)."""
        if not agents or self.pooled:  # one pooled model: a newcomer flies with it
            return
        self.flat[agents] = init_flat(self.model_cfg, self.inputs, self.n_classes, seed)
        self.optimizer.reset(agents)
        for slope, decay in self.state:  # zero state: an empty history
            slope[agents] = 0.0
            decay[agents] = 0.0

    def split_obs(self, x: Tensor) -> Obs:
        """Flat observations (..., obs_dim) -> the model's observation: `x` itself for a
        vector-only input, else {"image": (..., H, W, C), "vector": (..., vector_dim)} (views)."""
        if x.shape[-1] != self.obs_dim:
            raise ValueError(f"observations have width {x.shape[-1]}, expected {self.obs_dim}")
        im = self.inputs.image
        if im is None:
            return x
        n = im.height * im.width * im.channels
        obs = {"image": x[..., :n].unflatten(-1, (im.height, im.width, im.channels))}
        if self.inputs.vector_dim:
            obs["vector"] = x[..., n:]  # (..., vector_dim)
        return obs

    # -- training (parallel form) --------------------------------------------------------------

    @torch.no_grad()
    def logits_parallel(self, x: np.ndarray | Tensor) -> Tensor:
        """x (K, B, T, obs_dim) -> logits (K, B, T, n_classes), every window from a zero state.

        Windows longer than CHUNKWISE_FROM_T tokens run in the chunkwise form (same function,
        memory linear in T)."""
        x = torch.as_tensor(x, dtype=torch.float32)
        out = []
        for lo, hi in agent_spans(self.n_agents, x.shape[1] * x.shape[2]):
            params = views(self.flat[lo:hi], self.specs)
            obs = _model_input(self.split_obs(x[lo:hi]))
            if x.shape[2] > CHUNKWISE_FROM_T:
                out.append(forward_chunkwise(self.model_cfg, params, obs, chunk=CHUNK)[0])
            else:
                out.append(forward_parallel(self.model_cfg, params, obs))
        return out[0] if len(out) == 1 else torch.cat(out)

    def train_step(
        self,
        x: np.ndarray | Tensor,
        y: np.ndarray | Tensor,
        mask: np.ndarray | Tensor,
        penalty: Callable[[Tensor], Tensor] | None = None,
        grad_mask: Tensor | None = None,
        unlabeled: np.ndarray | Tensor | None = None,
        ssl_weight: float = 0.0,
        taught: np.ndarray | Tensor | None = None,
        absent_scale: float = 1.0,
    ) -> Tensor:
        """One optimizer step per agent on its own batch; returns each agent's loss (K,).

        x (K, B, T, obs_dim), y (K, B) int64 label of the LAST token, mask (K, B) bool. Each
        agent's loss is the mean cross-entropy over its unmasked examples, and the summed loss
        is differentiated, so agent k's gradient is that of its own mean loss, whatever K is.
        Agents with no unmasked example are left exactly unchanged (weights and optimizer).

        penalty: maps the flat parameters (K, P) to a per-agent regulariser (K,) added to each
        agent's loss (online EWC uses it). grad_mask: (P,) or (K, P) bool, parameters outside it
        get zero gradient (training only a small subset of the weights).

        unlabeled: (K, Bu, Tu, obs_dim) windows of raw experience, no labels: with ssl_weight > 0
        each agent also minimises ssl_weight * its self-supervised next-step loss on them (the
        next-step head, agents/yan/io.py), so unlabelled experience teaches too, and every agent
        takes a step.

        taught: (K, n_classes) bool, the classes each agent has had labels of; with
        absent_scale < 1 the logits of its other classes are multiplied by absent_scale in its
        cross-entropy (restricted softmax, FedRS). Pooled: one model taught by everyone, so the
        classes any agent was taught.

        Selective FFN (ffn_groups > 1): the router picks groups under noise annealed over each
        agent's own step count, the load-balance loss of every token of the batch (masked rows
        included) is added to the loss, and `select_stats` is refreshed.
        """
        x = torch.as_tensor(x, dtype=torch.float32)
        y = torch.as_tensor(y, dtype=torch.int64)
        w = torch.as_tensor(mask, dtype=torch.bool).float()  # (K, B)
        u = None
        if unlabeled is not None and ssl_weight > 0:
            u = torch.as_tensor(unlabeled, dtype=torch.float32)  # (K, Bu, Tu, obs_dim)
        active = w.sum(1) > 0  # (K,)
        if u is not None:
            active = torch.ones_like(active)
        scale = None  # (K, 1, n_classes) logit scale of the restricted softmax
        if taught is not None and absent_scale < 1.0:
            t = torch.as_tensor(taught, dtype=torch.bool)
            if self.pooled:
                t = t.any(0, keepdim=True).expand_as(t)
            scale = torch.where(t, 1.0, absent_scale).unsqueeze(1)
        if self.model_cfg.ffn_groups > 1 or penalty is not None:
            # the router's noise and records, and the EWC penalty, read all K rows: one pass
            loss, grad = self._loss_grad(self.flat, x, y, w, u, ssl_weight, penalty, scale)
        else:
            loss, grad = self._loss_grad_in_groups(x, y, w, u, ssl_weight, scale)
        if grad_mask is not None:
            grad = grad * grad_mask.to(grad.dtype)
        if self.pooled:
            grad, active = pool_gradients(grad, active)
        self.optimizer.step(self.flat.data, grad, active=active)
        return loss.detach()

    def _loss_grad_in_groups(
        self,
        x: Tensor,
        y: Tensor,
        w: Tensor,
        u: Tensor | None,
        ssl_weight: float,
        scale: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """`_loss_grad` of all K rows, computed in groups of agents (AGENT_CHUNK_TOKENS); a
        group's rows are a leaf of their own. Same arguments and results, no penalty."""
        tokens = x.shape[1] * x.shape[2] + (0 if u is None else u.shape[1] * u.shape[2])
        spans = agent_spans(self.n_agents, tokens)
        if len(spans) == 1:
            return self._loss_grad(self.flat, x, y, w, u, ssl_weight, None, scale)
        if self._grad is None:
            # kept between steps: a fresh (K, P) buffer of this size is a fresh mmap, and
            # filling it page by page costs more than the copies themselves
            self._grad = torch.empty_like(self.flat.data)
        grad = self._grad  # (K, P)
        losses = []
        for lo, hi in spans:
            rows = self.flat.detach()[lo:hi].requires_grad_()
            part = None if u is None else u[lo:hi]
            s = None if scale is None else scale[lo:hi]
            loss_k, grad[lo:hi] = self._loss_grad(
                rows, x[lo:hi], y[lo:hi], w[lo:hi], part, ssl_weight, None, s
            )
            losses.append(loss_k)
        return torch.cat(losses), grad

    def _loss_grad(
        self,
        flat: Tensor,
        x: Tensor,
        y: Tensor,
        w: Tensor,
        u: Tensor | None,
        ssl_weight: float,
        penalty: Callable[[Tensor], Tensor] | None,
        scale: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """train_step's per-agent loss (k,), detached, and its gradient (k, P) for the rows
        `flat` (k, P): self.flat, or a leaf holding a copy of some of its rows, with their
        x (k, B, T, obs_dim), y (k, B), w (k, B) float mask, unlabeled windows u or None, and
        the restricted softmax's logit scale (k, 1, n_classes) or None."""
        params = views(flat, self.specs)
        cfg = self.model_cfg
        routing = None
        if cfg.ffn_groups > 1:
            a = noise_scale(self.optimizer.t, cfg.router_noise_anneal_steps)  # (K,)
            routing = Routing(
                noise_scale=a if bool((a > 0).any()) else None, generator=self.generator
            )
        obs = _model_input(self.split_obs(x))
        logits = forward_last(cfg, params, obs, routing)  # (k, B, n_classes)
        if scale is not None:
            logits = logits * scale
        ce = F.cross_entropy(
            logits.reshape(-1, self.n_classes), y.reshape(-1), reduction="none"
        ).view(y.shape)  # (k, B)
        n = w.sum(1)  # (k,)
        loss = (ce * w).sum(1) / n.clamp(min=1.0)  # (k,)
        if routing is not None:
            loss = loss + load_balance_loss(routing.records)  # (k,)
            self._route_records = [
                RouteRecord(r.selected, r.probs.detach()) for r in routing.records
            ]
        if u is not None:
            uo = as_obs(self.split_obs(u))
            h = hidden(cfg, params, uo, routing)  # (k, Bu, Tu, D)
            loss = loss + ssl_weight * self_supervised_loss(params.head, h, uo, self.inputs)  # (k,)
        if penalty is not None:
            loss = loss + penalty(flat)  # (k,)
        (grad,) = torch.autograd.grad(loss.sum(), flat)  # (k, P)
        return loss.detach(), grad

    @property
    def select_stats(self) -> dict[str, np.ndarray]:
        """Routing figures of the selective FFN from the last train_step, per agent where the
        array is (K,) or (K, G), plus the static per-token costs (selective.selective_stats).
        Before any train_step, or for a dense model, only density 1 and the static costs.
        Computed on read, so a train_step pays nothing for it."""
        return _numpy(selective_stats(self.model_cfg, self._route_records))

    # -- checkpointing -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Tensor]:
        """Plain tensors only: weights, optimizer moments and steps, recurrent state."""
        out = {
            "flat": self.flat.detach().clone(),
            "opt.m": self.optimizer.m.clone(),
            "opt.v": self.optimizer.v.clone(),
            "opt.t": self.optimizer.t.clone(),
        }
        for i, (v_hist, h) in enumerate(self.state):
            out[f"rec.{i}.v_hist"] = v_hist.clone()
            out[f"rec.{i}.h"] = h.clone()
        out["rng.router"] = self.generator.get_state()  # uint8 tensor
        return out

    def load_state_dict(self, sd: dict[str, Tensor]) -> None:
        """Copy in place (the `flat` tensor object stays the same; gossip may hold views)."""
        if tuple(sd["flat"].shape) != tuple(self.flat.shape):
            raise ValueError(
                f"state_dict holds flat {tuple(sd['flat'].shape)}, population is "
                f"{tuple(self.flat.shape)} (n_agents, num_params)"
            )
        self.flat.data.copy_(sd["flat"])
        self.optimizer.m.copy_(sd["opt.m"])
        self.optimizer.v.copy_(sd["opt.v"])
        self.optimizer.t.copy_(sd["opt.t"])
        self.state = [
            (sd[f"rec.{i}.v_hist"].clone(), sd[f"rec.{i}.h"].clone())
            for i in range(self.model_cfg.layers)
        ]
        if "rng.router" in sd:  # absent in checkpoints written before selective activation
            self.generator.set_state(sd["rng.router"])


def agent_spans(n_agents: int, tokens: int) -> list[tuple[int, int]]:
    """Agents [lo, hi) in groups of about AGENT_CHUNK_TOKENS tokens, given `tokens` per agent.

    Never a group of one agent out of several: with K = 1 the time-mixing matmul takes another
    path (its broadcast (C, 2, T, T) operand stays a transposed view instead of being copied,
    and the transposed GEMM rounds differently), so a lone agent would not get the bits it
    gets in the whole batch. Groups of two or more take the whole batch's path."""
    per = max(2, AGENT_CHUNK_TOKENS // max(tokens, 1))
    starts = list(range(0, n_agents, per))
    if len(starts) > 1 and n_agents - starts[-1] < 2:
        starts.pop()  # a lone last agent joins the group before it
    return [(lo, hi) for lo, hi in zip(starts, starts[1:] + [n_agents], strict=True)]


def _model_input(obs: Obs) -> Tensor:
    # forward_parallel / forward_last / forward_chunkwise annotate x as a Tensor, but read any
    # Obs (they embed it with model._embed); the cast only quiets the annotation.
    return cast(Tensor, obs)


def pool_gradients(grad: Tensor, active: Tensor) -> tuple[Tensor, Tensor]:
    """Per-agent gradients (K, P) -> their mean over the active agents, for every row, and all
    rows active if any was: K copies of one model take the same step on the pooled batch (each
    agent's own loss is a mean over its examples, so agents weigh equally)."""
    n = active.sum().clamp(min=1).to(grad.dtype)
    mean = (grad * active[:, None].to(grad.dtype)).sum(0, keepdim=True) / n  # (1, P)
    return mean.expand_as(grad).contiguous(), active.any().expand_as(active).clone()


def _numpy(stats: dict[str, Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in stats.items()}
