"""Selective activation of the feed-forward neurons, in stacked-population form.

RockAI describe Yan's selective activation only in the press: "a small network picks which
neurons take part in each pass, random at first and targeted later", and "not MoE". Everything
below is our reconstruction from public relatives (REFERENCES.md, "Yan / MCSD"):

  - The F = ffn_mult * D neurons of each FFN are split into G groups of Fg = F / G neurons
    (group g = rows g*Fg..(g+1)*Fg-1 of w1 and b1, the same columns of w2). It stays one FFN
    whose neurons are switched on and off per token, not G separate experts with their own
    output biases: b2 is always on.
  - A router per agent and layer scores the groups of each token with noisy top-k gating
    (Shazeer et al. 2017, eq. 4-5): H(x) = x W_gate + N(0, 1) * softplus(x W_noise) * a, and
    the k groups with the largest H(x) take part. a is our annealing factor: it falls linearly
    from 1 at an agent's first training step to 0 after `router_noise_anneal_steps` of its
    steps ("random at first, targeted later"); acting and evaluation use a = 0. W_gate and
    W_noise start at zero (Shazeer 2017, appendix A), so at first every group scores 0 and the
    pick is uniformly random.
  - Gating (ours): each selected group contributes with forward value exactly 1,

        y = b2 + sum_{g in topk} m_g FFN_g(x),  m_g = 1 + (s_g - stopgrad(s_g)),
        s = softmax(H(x)) over all G groups,

    so k = G is the dense FFN bit for bit (outputs and every gradient of the dense path), and
    the router learns through the straight-through term: dL/ds_g = <FFN_g(x), dL/dy> for the
    selected groups, the gradient a soft gate y = sum s_g FFN_g would get at s_g = 1. The router
    reads x detached, so this surrogate gradient (and the balance loss's) trains W_gate and
    W_noise only; the backbone gets the exact gradient of the function it computes. Shazeer's
    own G(x) = softmax(KeepTopK(H(x))) would scale each group by its gate value, so k = G would
    not be the dense FFN and the output magnitude would move with the router's confidence.
  - Load balance (Switch Transformer, Fedus et al. 2022, eq. 4), per agent and layer:
        loss = alpha * G * sum_g f_g * P_g,  alpha = 1e-2,
    f_g = fraction of the k * N token-slots routed to group g (no gradient), P_g = mean over
    the N tokens of s_g. Dividing f by k (Switch has k = 1) keeps the balanced value at alpha.
    The loss of all layers is summed and added to each agent's training loss.

Where neurons are really skipped: the recurrent step (acting, decoding) gathers the k selected
groups' slices of w1, b1 and w2 (`gather_groups`) and never reads the other groups' weights.
The parallel and chunkwise forms (training, evaluation) compute all F neurons and multiply the
unselected ones by 0: with a few tokens of a few agents per call the gather would cost more
than it saves, and masking keeps k = G exactly dense.

Shapes: K agents, N tokens, D = d_model, F = ffn neurons, G groups, Fg = F / G, k = top-k.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from agents.config import ModelConfig
from agents.yan.params import FFNParams, need

LOAD_BALANCE_ALPHA = 1e-2  # Switch Transformer's auxiliary-loss weight (Fedus et al. 2022, 2.2)
BYTES_PER_WEIGHT = 4  # float32


@dataclass
class RouteRecord:
    """What one layer's router did in one call."""

    selected: Tensor
    """(K, G, N) bool: group g takes part for token n."""
    probs: Tensor
    """(K, G, N) s = softmax(H(x)) over the groups, differentiable (the balance loss's P)."""


@dataclass
class Routing:
    """Per-call routing context of the selective FFN, and the record of what it chose.

    noise_scale None means no noise (acting, evaluation); training passes each agent's annealing
    factor a (K,) and a generator, so runs stay a pure function of the seed.
    """

    noise_scale: Tensor | None = None
    """(K,) the anneal factor a of each agent, or None for no noise."""
    generator: torch.Generator | None = None
    """Source of the N(0, 1) noise (None: torch's global generator)."""
    records: list[RouteRecord] = field(default_factory=list)
    """One entry per selective layer, in call order."""


def noise_scale(steps: Tensor, anneal_steps: int) -> Tensor:
    """Anneal factor a = max(0, 1 - steps / anneal_steps), per agent: steps (K,) -> (K,).

    1 at an agent's first training step, 0 from step `anneal_steps` on (0 anneal steps: never
    noisy)."""
    if anneal_steps <= 0:
        return torch.zeros_like(steps, dtype=torch.float32)
    return (1.0 - steps.float() / anneal_steps).clamp(min=0.0)


def route(
    w_gate: Tensor, w_noise: Tensor, x: Tensor, k: int, routing: Routing | None
) -> tuple[Tensor, Tensor]:
    """Noisy top-k choice of groups: x (K, D, N) -> (top-k indices (K, k, N), s (K, G, N)).

    w_gate, w_noise (K, G, D). The router reads x detached: its straight-through gradient and
    the balance loss train the router only, and the rest of the model gets exactly the gradient
    of the function it computes. Ties (e.g. an untrained, all-zero router without noise) go to
    the lower group index: a stable sort, so every form of the model picks the same groups.
    """
    x = x.detach()
    H = torch.bmm(w_gate, x)  # (K, G, N) clean logits x W_gate
    if routing is not None and routing.noise_scale is not None:
        std = F.softplus(torch.bmm(w_noise, x)) * routing.noise_scale.view(-1, 1, 1)  # (K,G,N)
        eps = torch.randn(H.shape, generator=routing.generator, dtype=H.dtype)
        H = H + eps * std  # Shazeer 2017 eq. 4
    top = H.detach().sort(dim=1, descending=True, stable=True).indices[:, :k]  # (K, k, N)
    return top, torch.softmax(H, dim=1)


def router(p: FFNParams) -> tuple[Tensor, Tensor]:
    """The selective FFN's router weights (w_gate, w_noise), (K, G, D) each."""
    return need(p.w_gate, "ffn.w_gate"), need(p.w_noise, "ffn.w_noise")


def ffn_parallel(p: FFNParams, x: Tensor, k: int, routing: Routing | None) -> Tensor:
    """Selective GELU FFN over many tokens: x (K, D, N) -> (K, D, N).

    Computes all F neurons and masks the unselected groups (see the module docstring).
    """
    w_gate, w_noise = router(p)  # (K, G, D) each
    K, Fw, _ = p.w1.shape
    G = w_gate.shape[1]
    top, s = route(w_gate, w_noise, x, k, routing)
    selected = torch.zeros_like(s, dtype=torch.bool).scatter_(1, top, True)  # (K, G, N)
    # forward value exactly 1 on selected groups (s - s is exactly 0; (1 + s) - s would round),
    # 0 elsewhere; d/ds = 1 (straight-through)
    gate = torch.where(selected, 1.0 + (s - s.detach()), 0.0)  # (K, G, N)
    h = F.gelu(torch.baddbmm(p.b1.unsqueeze(-1), p.w1, x))  # (K, F, N)
    h = (h.view(K, G, Fw // G, -1) * gate.unsqueeze(2)).view(K, Fw, -1)  # (K, F, N)
    if routing is not None:
        routing.records.append(RouteRecord(selected, s))
    return torch.baddbmm(p.b2.unsqueeze(-1), p.w2, h)  # (K, D, N)


def gather_groups(
    w1: Tensor, b1: Tensor, w2: Tensor, top: Tensor, groups: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The selected groups' weight slices, and only those: top (K, k, B) group indices ->
    w1 (K, B, k, Fg, D), b1 (K, B, k, Fg), w2 transposed (K, B, k, Fg, D).

    Advanced indexing copies just the k chosen (Fg, D) blocks per token; the other groups'
    memory is never touched (tests/test_agents_selective.py fills it with NaN to check).
    """
    K, Fw, D = w1.shape
    Fg = Fw // groups
    agent = torch.arange(K).view(K, 1, 1)  # (K, 1, 1)
    sel = top.transpose(1, 2)  # (K, B, k)
    w1g = w1.view(K, groups, Fg, D)[agent, sel]  # (K, B, k, Fg, D)
    b1g = b1.view(K, groups, Fg)[agent, sel]  # (K, B, k, Fg)
    w2g = w2.view(K, D, groups, Fg).permute(0, 2, 3, 1)[agent, sel]  # (K, B, k, Fg, D)
    return w1g, b1g, w2g


def ffn_step(p: FFNParams, x: Tensor, k: int) -> Tensor:
    """Selective GELU FFN for one token per sequence, reading only the k chosen groups' weights:
    x (K, D, B) -> (K, D, B). No noise: this is the acting / decoding form."""
    w_gate, w_noise = router(p)  # (K, G, D) each
    top, s = route(w_gate, w_noise, x, k, None)  # (K, k, B), (K, G, B)
    w1g, b1g, w2g = gather_groups(p.w1, p.b1, p.w2, top, w_gate.shape[1])
    K, D, B = x.shape
    kFg = w1g.shape[2] * w1g.shape[3]
    xt = x.transpose(1, 2).reshape(K * B, D, 1)  # (KB, D, 1) one token per row
    h = torch.baddbmm(b1g.reshape(K * B, kFg, 1), w1g.reshape(K * B, kFg, D), xt)  # (KB,kFg,1)
    h = F.gelu(h)
    if torch.is_grad_enabled():  # the straight-through gate: value 1, gradient to the router
        s_top = s.gather(1, top).transpose(1, 2).reshape(K * B, -1, 1, 1)  # (KB, k, 1, 1)
        gate = 1.0 + (s_top - s_top.detach())
        h = (h.view(K * B, -1, kFg // s_top.shape[1], 1) * gate).view(K * B, kFg, 1)
    y = torch.bmm(w2g.reshape(K * B, kFg, D).transpose(1, 2), h)  # (KB, D, 1) sum of k groups
    return y.view(K, B, D).transpose(1, 2) + p.b2.unsqueeze(-1)  # (K, D, B)


# ----------------------------------------------------------------------------------------------
# Load balance and measurements


def load_fractions(record: RouteRecord) -> Tensor:
    """f_g: fraction of the k * N token-slots routed to each group, (K, G), rows sum to 1."""
    sel = record.selected.float()  # (K, G, N)
    return sel.sum(-1) / sel.sum((1, 2)).clamp(min=1.0).unsqueeze(-1)


def load_balance_loss(records: list[RouteRecord]) -> Tensor:
    """Switch load-balance loss summed over layers, per agent: alpha * G * sum_g f_g P_g (K,).

    alpha when the load is uniform (f_g = P_g = 1 / G), up to alpha * G when one group takes
    everything; only P (the mean router probability) carries gradient (Fedus et al. 2022)."""
    total = torch.zeros(())
    for r in records:
        G = r.selected.shape[1]
        P = r.probs.mean(-1)  # (K, G)
        total = total + LOAD_BALANCE_ALPHA * G * (load_fractions(r) * P).sum(-1)
    return total


def cost_per_token(cfg: ModelConfig) -> dict[str, float]:
    """Static per-token cost of all FFN sublayers in the recurrent step, dense vs selective.

    FLOPs count a multiply-add as 2 (matmuls and biases; GELU and top-k left out), weight
    bytes are float32 parameters read. Selective: the router's W_gate (W_noise is not read
    without noise) plus k of G groups of w1, b1, w2, and b2.
    """
    D, G, k = cfg.d_model, cfg.ffn_groups, cfg.ffn_top_k
    Fw, L = cfg.ffn_mult * D, cfg.layers
    dense_flops = L * (4 * D * Fw + Fw + D)
    dense_weights = L * (2 * D * Fw + Fw + D)
    if G == 1:
        sel_flops, sel_weights = dense_flops, dense_weights
    else:
        active = Fw * k // G
        sel_flops = L * (2 * D * G + 4 * D * active + active + D)
        sel_weights = L * (G * D + 2 * D * active + active + D)
    return {
        "select/ffn_flops_per_token": float(sel_flops),
        "select/ffn_flops_per_token_dense": float(dense_flops),
        "select/ffn_weight_bytes_per_token": float(BYTES_PER_WEIGHT * sel_weights),
        "select/ffn_weight_bytes_per_token_dense": float(BYTES_PER_WEIGHT * dense_weights),
    }


@torch.no_grad()
def selective_stats(cfg: ModelConfig, records: list[RouteRecord]) -> dict[str, Tensor]:
    """Measured routing of one call, per agent, averaged over the selective layers.

    select/density (K,): fraction of FFN neurons active per token (k / G for top-k);
    select/load (K, G): f_g, the token-slot fraction per group; select/load_cv (K,): its
    coefficient of variation std_g / mean_g (0 = perfectly balanced; population std);
    select/balance_loss (K,): the Switch loss of the call. Plus the static `cost_per_token`.
    A dense model (no records) reports density 1 and a single group.
    """
    out: dict[str, Tensor] = {k: torch.tensor(v) for k, v in cost_per_token(cfg).items()}
    if not records:
        return out | {"select/density": torch.ones(()), "select/load_cv": torch.zeros(())}
    load = torch.stack([load_fractions(r) for r in records]).mean(0)  # (K, G)
    density = torch.stack([r.selected.float().mean((1, 2)) for r in records]).mean(0)  # (K,)
    cv = torch.stack(
        [(f.std(-1, correction=0) / f.mean(-1)) for f in (load_fractions(r) for r in records)]
    ).mean(0)  # (K,)
    return out | {
        "select/density": density,
        "select/load": load,
        "select/load_cv": cv,
        "select/balance_loss": load_balance_loss(records),
    }
