"""How far two code paths' float results may differ, derived from the arithmetic; and the
float64 reference of one Population training step.

Two paths that compute the same function in another order (another BLAS kernel or SIMD width,
a reduction split across threads, 4 agents in one batched matmul instead of 1, the parallel
form instead of the recurrent one) agree only up to rounding. The tests marked `numerics`
compare them with the bounds below, and tests/numerics_matrix.sh runs those tests under every
kernel family this machine can select, at 1 and 2 threads. Bit-for-bit equality stays only
where both sides run the same operations on the same shapes (determinism, a checkpoint
round trip) or where the arithmetic is exact (multiplying by 1, adding 0).

Float32 rounding: each operation has a relative error of at most u = 2^-24. In a sum of n
terms the errors have random signs and grow as lambda sqrt(n) u, exceeded with probability at
most 2 exp(-lambda^2 / 2) (Higham & Mary 2019, "A new approach to probabilistic rounding error
analysis", SIAM J. Sci. Comput. 41(5); the worst case n u needs every error to have the same
sign), and a network is a chain of such sums. Across a chain of `stages` of them the errors
add, so relative to the largest magnitude of the result (never to one element, which may be a
near-zero difference of large terms)

    max |a - b| <= lambda * stages * sqrt(n) * u * max |b|,  lambda = 4   (`chain_bound`)

for one path against exact arithmetic; two float32 paths against each other get twice that.
Under every kernel family of tests/numerics_matrix.sh, at 1 and 2 threads, the tests using it
measured at most 0.16 of it (most below 0.03), and at most 0.29 of the Adam bounds below.

Adam: its step per coordinate is lr * m_hat / (sqrt(v_hat) + eps), whose size is bounded by
lr * r_max(t) whatever the gradients (`adam_ratio_bound`, ~1 over the first steps). Where a
gradient is far above its rounding error delta the step moves by at most
2 * lr * r_max * delta / (|g| - delta) (`adam_step_bound`); where |g| is within a few delta of
0 only the box holds: another kernel's last bit can turn such a step from +lr to -lr.
The moments m and v are linear and quadratic in g, so they are compared tightly everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from agents.config import ModelConfig
from agents.population import Population
from agents.yan.io import self_supervised_loss
from agents.yan.model import as_obs, forward_last, hidden, unflatten
from agents.yan.selective import Routing, load_balance_loss

U32 = 2.0**-24  # float32 unit roundoff
U64 = 2.0**-53  # float64 unit roundoff
# Adam's constants, from Kingma & Ba 2015 (alg. 1), not from the code under test
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


# Higham & Mary's confidence parameter: a sum exceeds lambda sqrt(n) u with probability at
# most 2 exp(-8) = 7e-4, and the max over a tensor's elements and stages sits well inside
CONFIDENCE = 4.0


def chain_bound(stages: int, n: int, u: float = U32) -> float:
    """Relative bound (to the result's max norm) on one path's rounding error after `stages`
    roundings of sums of at most `n` terms: CONFIDENCE * stages * sqrt(n) * u (module
    docstring)."""
    return CONFIDENCE * stages * math.sqrt(n) * u


def model_stages(cfg: ModelConfig, backward: bool = False) -> int:
    """Rounding stages from observation to logits (or, with backward, to a weight gradient):
    the encoder; per layer norm, w_in, the time mixing, the section norm, w_out, norm, w1, w2;
    the final norm, the head and the loss. The backward pass runs the chain once more."""
    forward = 1 + 8 * cfg.layers + 3
    return 2 * forward if backward else forward


def model_terms(cfg: ModelConfig, tokens: int) -> int:
    """The longest sum in a pass over `tokens` tokens per agent: a feature dim (2D into w_out,
    F into w2), or the tokens themselves (the time mixing; a weight gradient sums over all)."""
    return max(2 * cfg.d_model, cfg.ffn_mult * cfg.d_model, tokens)


def assert_close_rel(actual: Tensor, expected: Tensor, rel: float, what: str) -> None:
    """max |actual - expected| <= rel * max |expected| (a bound relative to the max norm)."""
    scale = expected.abs().max().item()
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= rel * scale, f"{what}: max error {err:.3g} > {rel:.3g} x scale {scale:.3g}"


# ---- the float64 reference of Population.train_step --------------------------------------------


@dataclass
class Step:
    """One training step of every agent of a population, per agent: its loss (K,), gradient,
    and the weights and optimizer state after the step (K, P); float64 in a reference."""

    loss: Tensor
    grad: Tensor
    flat: Tensor
    m: Tensor
    v: Tensor
    t: Tensor
    active: Tensor  # (K,) bool: the agents that took a step


def snapshot(pop: Population) -> dict[str, Tensor]:
    """The state a train_step reads and writes: weights, moments, step counts (copies)."""
    opt = pop.optimizer
    return {
        "flat": pop.flat.detach().clone(),
        "m": opt.m.clone(),
        "v": opt.v.clone(),
        "t": opt.t.clone(),
    }


def reference_loss(
    pop: Population,
    flat: Tensor,
    x: Tensor,
    y: Tensor,
    mask: Tensor,
    unlabeled: Tensor | None = None,
    ssl_weight: float = 0.0,
) -> Tensor:
    """Each agent's training loss (K,) at weights `flat` (K, P), in flat's dtype, written from
    the definitions (Population.train_step's docstring): the mean cross-entropy of the last
    token over the agent's unmasked examples, plus the load-balance loss of a selective FFN
    (noise-free routing), plus ssl_weight times the self-supervised next-step loss."""
    cfg, dtype = pop.model_cfg, flat.dtype
    params = unflatten(flat, pop.specs)
    routing = Routing() if cfg.ffn_groups > 1 else None
    obs = pop.split_obs(x.to(dtype))
    logits = forward_last(cfg, params, obs, routing)  # (K, B, n_classes)
    ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)
    w = mask.to(dtype)
    loss = (ce * w).sum(1) / w.sum(1).clamp(min=1.0)  # (K,)
    if routing is not None:
        loss = loss + load_balance_loss(routing.records)
    if unlabeled is not None and ssl_weight > 0:
        uo = as_obs(pop.split_obs(unlabeled.to(dtype)))
        h = hidden(cfg, params, uo, routing)
        loss = loss + ssl_weight * self_supervised_loss(params, h, uo, pop.inputs)
    return loss


def reference_step(
    pop: Population,
    before: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    mask: Tensor,
    unlabeled: Tensor | None = None,
    ssl_weight: float = 0.0,
    pooled: bool = False,
) -> Step:
    """The step `pop.train_step` must take from the state `before` (a `snapshot`), in float64:
    the loss and gradient of `reference_loss`, then textbook Adam (Kingma & Ba 2015, alg. 1,
    with torch's eps outside the square root) or SGD, on the agents with data only.

    pooled: the centralised population (Population.pooled): every row takes the step of the
    mean gradient of the active agents."""
    flat = before["flat"].double().requires_grad_(True)
    loss = reference_loss(pop, flat, x, y, mask, unlabeled, ssl_weight)
    (grad,) = torch.autograd.grad(loss.sum(), flat)
    active = mask.any(1)
    if unlabeled is not None and ssl_weight > 0:
        active = torch.ones_like(active)  # unlabelled windows teach every agent
    if pooled:
        grad = grad[active].mean(0, keepdim=True).expand_as(grad)
        active = active.any().expand_as(active)
    flat, m, v, t = (before[k].double().clone() for k in ("flat", "m", "v", "t"))
    a = active
    lr = pop.optimizer.lr
    t[a] += 1
    if pop.optimizer.kind == "sgd":
        flat[a] -= lr * grad[a]
    else:
        b1, b2 = ADAM_BETAS
        m[a] = b1 * m[a] + (1 - b1) * grad[a]
        v[a] = b2 * v[a] + (1 - b2) * grad[a].square()
        m_hat = m[a] / (1 - b1 ** t[a, None])
        v_hat = v[a] / (1 - b2 ** t[a, None])
        flat[a] -= lr * m_hat / (v_hat.sqrt() + ADAM_EPS)
    return Step(loss.detach(), grad, flat, m, v, t, active)


def adam_ratio_bound(t: Tensor) -> Tensor:
    """r_max(t) (K,): the largest |m_hat / sqrt(v_hat)| after t steps, over all gradient
    histories. m_hat = sum_s a_s g_s and v_hat = sum_s b_s g_s^2 with
    a_s = (1-b1) b1^(t-s) / (1-b1^t) and b_s = (1-b2) b2^(t-s) / (1-b2^t), so by Cauchy-Schwarz
    |m_hat| <= sqrt(sum_s a_s^2 / b_s) sqrt(v_hat). It is 1 at t = 1, 1.0014 at t = 2, 1.0036
    at t = 3, and tends to (1-b1) / sqrt((1-b2)(1 - b1^2/b2)) = 7.27 over hundreds of steps
    (the worst history: one large gradient, then zeros)."""
    b1, b2 = ADAM_BETAS
    out = []
    for steps in t.tolist():
        n = max(int(steps), 1)
        s = torch.arange(1, n + 1, dtype=torch.float64)
        a = (1 - b1) * b1 ** (n - s) / (1 - b1**n)
        b = (1 - b2) * b2 ** (n - s) / (1 - b2**n)
        out.append(float((a.square() / b).sum().sqrt()))
    return torch.tensor(out, dtype=torch.float64)


def adam_step_bound(g: Tensor, delta: Tensor, lr: float, t: Tensor) -> Tensor:
    """How far two Adam steps may differ per coordinate (K, P) when their gradients differ by
    at most delta (K, 1) around g (K, P), with the same moments before the step.

    Step = lr * r with r = m_hat / (sqrt(v_hat) + eps). d m_hat / dg = a_t and d v_hat / dg =
    2 b_t g (adam_ratio_bound's weights of the newest gradient), and v_hat >= b_t g^2, so
    |dr/dg| <= (a_t / sqrt(b_t) + |r|) / |g| <= 2 r_max / |g|: along the segment between the
    two gradients |g| >= |g_ref| - delta, so the steps differ by at most
    2 lr r_max delta / (|g_ref| - delta). Both steps also lie in [-lr r_max, lr r_max]: where
    |g_ref| <= 2 delta that box, 2 lr r_max, is the bound."""
    r_max = adam_ratio_bound(t)[:, None]  # (K, 1)
    margin = (g.abs() - delta).clamp(min=0.0)
    ratio = torch.where(margin > 0, delta / margin.clamp(min=1e-300), torch.inf)
    return 2 * lr * r_max * ratio.clamp(max=1.0)


def assert_took_step(
    pop: Population,
    before: dict[str, Tensor],
    loss: Tensor,
    ref: Step,
    rho: float,
    what: str,
    rows: list[int] | None = None,
) -> None:
    """The float32 step `pop` took from `before` (returning `loss`) is `ref` up to float32
    rounding: a float32 gradient within delta = rho * max|g_ref| (per agent) of the float64
    one (rho from chain_bound), then Adam's or SGD's arithmetic on it. Agents without a step
    are bit-for-bit unchanged (nothing is computed on them). rows: compare only these agents
    of `pop` (all by default) with the same rows of `ref`."""
    after = snapshot(pop)
    rows = list(range(ref.loss.shape[0])) if rows is None else rows
    on = ref.active[rows]
    idle = [r for r, a in zip(rows, on.tolist(), strict=True) if not a]
    for key in ("flat", "m", "v", "t"):
        assert torch.equal(after[key][idle], before[key][idle]), f"{what}: idle agents' {key}"
    busy = [r for r, a in zip(rows, on.tolist(), strict=True) if a]
    if not busy:
        return
    g = ref.grad[busy]  # (k, P) float64
    delta = rho * g.abs().amax(1, keepdim=True)  # (k, 1) the float32 gradient's error bound
    lr = pop.optimizer.lr

    def check(name: str, got: Tensor, want: Tensor, bound: Tensor) -> None:
        err = (got.double() - want).abs()
        worst = (err / bound.clamp(min=1e-300)).max().item()
        assert worst <= 1.0, (
            f"{what}: {name} off by {err.max().item():.3g}, {worst:.3g}x its bound "
            f"({int((err > bound).sum())} of {err.numel()} elements outside)"
        )

    # the loss: the forward half of the gradient's chain, relative to max(|loss|, 1)
    check("loss", loss[busy], ref.loss[busy], rho * ref.loss[busy].abs().clamp(min=1.0))
    assert torch.equal(after["t"][busy], ref.t[busy].float()), f"{what}: step counts"
    theta = ref.flat[busy]
    # the float32 result itself: theta rounded once more, and the few roundings of a step of
    # size at most lr * r_max
    r_max = adam_ratio_bound(ref.t[busy])[:, None] if pop.optimizer.kind == "adam" else 1.0
    rounding = 2 * U32 * theta.abs() + 8 * U32 * lr * r_max
    if pop.optimizer.kind == "sgd":  # theta - lr g: linear in g
        check("weights", after["flat"][busy], theta, lr * delta + rounding)
        return
    b1, b2 = ADAM_BETAS
    m, v = ref.m[busy], ref.v[busy]
    # m = b1 m + (1-b1) g is linear in g (the previous m is the same on both sides),
    # v = b2 v + (1-b2) g^2 moves by (1-b2) (2 |g| delta + delta^2); in float32 each also
    # rounds 4 times (the constant 1-b, the product, the sum, the stored result)
    check("m (gradient)", after["m"][busy], m, (1 - b1) * delta + 4 * U32 * m.abs())
    v_bound = (1 - b2) * (2 * g.abs() * delta + delta.square()) + 4 * U32 * v
    check("v", after["v"][busy], v, v_bound)
    step = adam_step_bound(g, delta, lr, ref.t[busy])
    check("weights", after["flat"][busy], theta, step + rounding)
