"""Yan model (MCSD blocks, no attention) written in stacked-population form.

Every parameter carries a leading agent dimension K, so one call serves K agents, each with its
own weights. All parameters of one agent live in one row of a flat tensor (K, P); `unflatten`
returns named, differentiable views into it. Gossip and averaging work on the flat rows; the
model reads the views.

What is from the paper ("MCSD: An Efficient Language Model with Diverse Fusion", Yang, Li, Li,
RockAI, arXiv 2406.12230):
  - the input is split into C channels of width Dc = D / C with per-channel (block-diagonal)
    projections W in R^{C x Dc x Dc};
  - a *slope* section aggregates recent tokens with predefined short-range weights and a *decay*
    section aggregates all tokens with predefined decays; each section multiplies a linear branch
    element-wise with its aggregated history; the two are normalized, concatenated, projected;
  - inference runs as a recurrence with O(1) space per layer and O(N) time.
What is our reconstruction (the paper publishes neither the slope kernel nor any numbers):
  - slope kernel: a truncated ramp P_c(m) = max(0, 1 - m / W_c) over the last W_c tokens, with
    W_c = slope_window for every channel (the config has one W; a per-channel schedule only
    has to change `slope_windows`, the ring then holds max W_c slots);
  - decay rates: fixed lambda_c = 1 - 2^(-5-c), RetNet's schedule (arXiv 2307.08621, eq. 8);
  - section norm: RMS-normalize each channel of each section without parameters (as RetNet's
    per-head GroupNorm; the output projection carries the scale);
  - block layout: pre-norm residual MCSD sublayer, then a pre-norm residual GELU feed-forward
    sublayer (dense for now: selective activation will swap `feed_forward`).

Shapes: K agents, B sequences per agent, T tokens, D = d_model, C channels, Dc = D / C,
W = slope window, F = ffn_mult * D, P = parameters per agent. Weights are stored (out, in),
as torch.nn.Linear.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from agents.config import ModelConfig

Spec = tuple[str, tuple[int, ...]]
State = list[tuple[Tensor, Tensor]]
"""Recurrent state, per layer: (v_hist (K, C, Dc, W, B), the last W v-vectors oldest first;
h (K, C, Dc, B), the decay state)."""

RMS_EPS = 1e-6  # keeps rsqrt finite on an all-zero vector (zero-padded stream start)


# ----------------------------------------------------------------------------------------------
# Parameters: names, shapes, one flat row per agent


def param_specs(cfg: ModelConfig, obs_dim: int, n_classes: int) -> list[Spec]:
    """Name and per-agent shape of every parameter, in flat-row order."""
    D, C = cfg.d_model, cfg.channels
    Dc, Fw = D // C, cfg.ffn_mult * D
    specs: list[Spec] = [("enc.w", (D, obs_dim)), ("enc.b", (D,))]
    for i in range(cfg.layers):
        b = f"blocks.{i}"
        specs += [
            (f"{b}.norm_mix", (D,)),
            # per-channel projections of the four branches stacked, rows [v | q | u | p]
            (f"{b}.mcsd.w_in", (C, 4 * Dc, Dc)),
            (f"{b}.mcsd.w_out", (D, 2 * D)),
            (f"{b}.norm_ffn", (D,)),
            (f"{b}.ffn.w1", (Fw, D)),
            (f"{b}.ffn.b1", (Fw,)),
            (f"{b}.ffn.w2", (D, Fw)),
            (f"{b}.ffn.b2", (D,)),
        ]
    specs += [("norm_f", (D,)), ("head.w", (n_classes, D)), ("head.b", (n_classes,))]
    return specs


def num_params(specs: list[Spec]) -> int:
    return sum(math.prod(shape) for _, shape in specs)


def unflatten(flat: Tensor, specs: list[Spec]) -> dict[str, Tensor]:
    """flat (K, P) -> {name: view (K, *shape)}; views, so gradients reach `flat`."""
    sizes = [math.prod(shape) for _, shape in specs]
    if sum(sizes) != flat.shape[1]:
        raise ValueError(f"flat has {flat.shape[1]} parameters per agent, specs: {sum(sizes)}")
    # split, not slicing: its backward is one cat, where each slice's backward would
    # zero-fill a whole (K, P) gradient
    chunks = flat.split(sizes, dim=1)  # (K, n_i) views
    K = flat.shape[0]
    return {name: c.view(K, *shape) for (name, shape), c in zip(specs, chunks, strict=True)}


def init_flat(cfg: ModelConfig, obs_dim: int, n_classes: int, seed: int) -> Tensor:
    """One agent's initial parameters (P,), float32, a pure function of the seed."""
    g = torch.Generator().manual_seed(seed)
    # residual-branch outputs scaled by 1/sqrt(2 * layers) so the residual stream's variance
    # does not grow with depth (GPT-2, Radford et al. 2019, section 2.3)
    residual_scale = 1.0 / math.sqrt(2 * cfg.layers)
    parts = []
    for name, shape in param_specs(cfg, obs_dim, n_classes):
        if name.endswith(("norm_mix", "norm_ffn", "norm_f")):
            t = torch.ones(shape)
        elif name.endswith((".b", ".b1", ".b2")):
            t = torch.zeros(shape)
        else:  # matrices (..., out, in): unit-variance outputs for unit-variance inputs
            t = torch.randn(shape, generator=g) / math.sqrt(shape[-1])
            if name.endswith(("mcsd.w_out", "ffn.w2")):
                t = t * residual_scale
        parts.append(t.reshape(-1))
    return torch.cat(parts).to(torch.float32)


# ----------------------------------------------------------------------------------------------
# Fixed (non-learned) MCSD weights: slope kernel and decay rates


def decay_lambdas(channels: int) -> list[float]:
    """lambda_c = 1 - 2^(-5-c): RetNet's per-head decay schedule (arXiv 2307.08621, eq. 8)."""
    return [1.0 - 2.0 ** (-5 - c) for c in range(channels)]


def slope_windows(channels: int, slope_window: int) -> list[int]:
    """W_c per channel. Our choice: the same W for all channels (diversity comes from decay)."""
    return [slope_window] * channels


@lru_cache(maxsize=64)
def mixing_matrices(channels: int, slope_window: int, T: int, dtype: torch.dtype) -> Tensor:
    """Parallel-form mixing over time M (C, 2, T, T): [slope, decay], lower-triangular Toeplitz.

    M[c, 0, t, m] = P_c(t - m) = max(0, 1 - (t - m) / W_c)  for 0 <= t - m    (slope)
    M[c, 1, t, m] = lambda_c^(t - m)                        for 0 <= t - m    (decay)
    Built in float64 and cast once, so the powers are as exact as the dtype allows.
    """
    k = torch.arange(T, dtype=torch.float64)
    lag = k[:, None] - k[None, :]  # (T, T) t - m
    causal = lag >= 0
    W_c = torch.tensor(slope_windows(channels, slope_window), dtype=torch.float64)
    S = (1.0 - lag / W_c[:, None, None]).clamp(min=0.0) * causal  # (C, T, T)
    lam = torch.tensor(decay_lambdas(channels), dtype=torch.float64)
    L = torch.where(causal, lam[:, None, None] ** lag.clamp(min=0.0), 0.0)  # (C, T, T)
    return torch.stack([S, L], dim=1).to(dtype)  # (C, 2, T, T)


@lru_cache(maxsize=64)
def step_weights(channels: int, slope_window: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Recurrent-form fixed weights: slope kernel over the ring, oldest slot first, (C, 1, W, 1)
    and lambda (C, 1, 1), shaped to broadcast against the state."""
    lag = torch.arange(slope_window - 1, -1, -1, dtype=torch.float64)  # ring slot j: W-1-j
    W_c = torch.tensor(slope_windows(channels, slope_window), dtype=torch.float64)
    kernel = (1.0 - lag[None, :] / W_c[:, None]).clamp(min=0.0)  # (C, W)
    lam = torch.tensor(decay_lambdas(channels), dtype=torch.float64)
    return kernel.view(channels, 1, slope_window, 1).to(dtype), lam.view(-1, 1, 1).to(dtype)


# ----------------------------------------------------------------------------------------------
# Batched building blocks. Activations are feature-major, z (K, D, N) with N = B*T tokens (T
# fastest), so every per-agent map is one contiguous bmm w (K, out, in) @ z (K, in, N), a channel
# is a view z.view(K, C, Dc, N), and mixing over time is a matmul on the innermost dim. (Token-
# major activations needed permute copies around every block-diagonal and mixing matmul and ran
# ~1.4x slower per training step on this machine.)


def rms_norm(x: Tensor, weight: Tensor | None = None) -> Tensor:
    """RMSNorm over the feature dim -2 (Zhang & Sennrich 2019): x (K, ..., n, N), weight (K, n)."""
    x = x * torch.rsqrt(x.square().mean(-2, keepdim=True) + RMS_EPS)
    return x if weight is None else x * weight.unsqueeze(-1)


def linear(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """Per-agent linear map: x (K, i, N), w (K, o, i), b (K, o) -> (K, o, N)."""
    return torch.bmm(w, x) if b is None else torch.baddbmm(b.unsqueeze(-1), w, x)


def feed_forward(params: dict[str, Tensor], prefix: str, x: Tensor) -> Tensor:
    """Dense GELU FFN, x (K, D, N) -> (K, D, N). Selective activation will replace it."""
    h = F.gelu(linear(x, params[f"{prefix}.w1"], params[f"{prefix}.b1"]))  # (K, F, N)
    return linear(h, params[f"{prefix}.w2"], params[f"{prefix}.b2"])  # (K, D, N)


def mcsd_branches(params: dict[str, Tensor], prefix: str, x: Tensor) -> Tensor:
    """Block-diagonal per-channel projections of all four branches at once.

    x (K, D, N) -> (K, C, 4Dc, N), rows [v | q | u | p]: the two branches whose history is
    aggregated (v: slope, q: decay) first, then the two element-wise gates (u: slope, p: decay).
    """
    w = params[f"{prefix}.w_in"]  # (K, C, 4Dc, Dc)
    K, C, _, Dc = w.shape
    return torch.matmul(w, x.view(K, C, Dc, -1))  # (K, C, 4Dc, N)


def mcsd_fuse(params: dict[str, Tensor], prefix: str, gated: Tensor) -> Tensor:
    """gated (K, C, 2, Dc, N) = [u * s, p * h] -> (K, D, N).

    Each channel's slope and decay sections are RMS-normed separately (the decay channels'
    scales differ by up to 1 / (1 - lambda_c)), concatenated and projected back to D. The
    concatenation is ordered (channel, section, Dc): a fixed permutation of "all slope, then
    all decay" that needs no copy; w_out learns either order alike.
    """
    K, C, _, Dc, N = gated.shape
    y = rms_norm(gated).view(K, C * 2 * Dc, N)  # (K, 2D, N)
    return linear(y, params[f"{prefix}.w_out"])  # (K, D, N)


# ----------------------------------------------------------------------------------------------
# Parallel form (training): slope and decay as masked Toeplitz matmuls over the window


def _mcsd_parallel(
    params: dict[str, Tensor], prefix: str, x: Tensor, M: Tensor, T: int, last_only: bool
) -> Tensor:
    """MCSD sublayer on normed x (K, D, B*T) -> (K, D, B*T), or (K, D, B) at the last token."""
    y = mcsd_branches(params, prefix, x)  # (K, C, 4Dc, BT)
    K, C, Dc4, N = y.shape
    Dc, B = Dc4 // 4, N // T
    vq = y[:, :, : 2 * Dc].view(K, C, 2, Dc * B, T)  # v, q with time innermost
    up = y[:, :, 2 * Dc :].view(K, C, 2, Dc, B, T)  # u, p
    if last_only:
        # [s | h]_{T-1} = sum_m M[c, j, T-1, m] [v | q]_m
        sh = torch.matmul(vq, M[:, :, -1, :, None]).view(K, C, 2, Dc, B)
        return mcsd_fuse(params, prefix, up[..., -1] * sh)  # (K, D, B)
    # s_t = sum_m P_c(t-m) v_m  and  h_t = sum_m lambda_c^(t-m) q_m, all t at once
    sh = torch.matmul(vq, M.transpose(-1, -2)).view(K, C, 2, Dc, B, T)
    return mcsd_fuse(params, prefix, (up * sh).view(K, C, 2, Dc, N))  # (K, D, BT)


def _features(cfg: ModelConfig, params: dict[str, Tensor], x: Tensor, last_only: bool) -> Tensor:
    """x (K, B, T, obs_dim) -> final-normed state (K, D, B*T), or (K, D, B) if last_only."""
    K, B, T, _ = x.shape
    M = mixing_matrices(cfg.channels, cfg.slope_window, T, x.dtype)  # (C, 2, T, T)
    z = linear(x.reshape(K, B * T, -1).transpose(1, 2), params["enc.w"], params["enc.b"])
    for i in range(cfg.layers):  # z (K, D, BT)
        b = f"blocks.{i}"
        last = last_only and i == cfg.layers - 1  # only the last token is read after this
        zn = rms_norm(z, params[f"{b}.norm_mix"])
        mix = _mcsd_parallel(params, f"{b}.mcsd", zn, M, T, last)
        z = (z.view(K, -1, B, T)[..., -1] if last else z) + mix
        z = z + feed_forward(params, f"{b}.ffn", rms_norm(z, params[f"{b}.norm_ffn"]))
    return rms_norm(z, params["norm_f"])


def head(params: dict[str, Tensor], z: Tensor) -> Tensor:
    """Classification logits from the final-normed state: z (K, D, N) -> (K, n_classes, N)."""
    return linear(z, params["head.w"], params["head.b"])


def forward_parallel(cfg: ModelConfig, params: dict[str, Tensor], x: Tensor) -> Tensor:
    """x (K, B, T, obs_dim) -> logits (K, B, T, n_classes), causal: token t sees tokens <= t."""
    K, B, T, _ = x.shape
    logits = head(params, _features(cfg, params, x, last_only=False))  # (K, n, BT)
    return logits.transpose(1, 2).reshape(K, B, T, -1)


def forward_last(cfg: ModelConfig, params: dict[str, Tensor], x: Tensor) -> Tensor:
    """x (K, B, T, obs_dim) -> logits of the last token (K, B, n_classes).

    Equals forward_parallel(...)[:, :, -1]; the last layer computes only what that token needs
    (training reads only the last token of each window).
    """
    return head(params, _features(cfg, params, x, last_only=True)).transpose(1, 2)


# ----------------------------------------------------------------------------------------------
# Recurrent form (inference): O(1) state per layer, whatever the stream length


def init_state(cfg: ModelConfig, K: int, B: int, dtype: torch.dtype = torch.float32) -> State:
    """Zero state == an empty history (the parallel form's zero padding before token 0)."""
    C, Dc, W = cfg.channels, cfg.d_model // cfg.channels, cfg.slope_window
    return [
        (torch.zeros(K, C, Dc, W, B, dtype=dtype), torch.zeros(K, C, Dc, B, dtype=dtype))
        for _ in range(cfg.layers)
    ]


def forward_step(
    cfg: ModelConfig, params: dict[str, Tensor], x_t: Tensor, state: State
) -> tuple[Tensor, State]:
    """One token: x_t (K, B, obs_dim) -> logits (K, B, n_classes), new state (input untouched)."""
    kernel, lam = step_weights(cfg.channels, cfg.slope_window, x_t.dtype)  # (C,1,W,1), (C,1,1)
    K, B, _ = x_t.shape
    z = linear(x_t.transpose(1, 2), params["enc.w"], params["enc.b"])  # (K, D, B)
    new_state: State = []
    for i, (v_hist, h) in enumerate(state):
        b = f"blocks.{i}"
        y = mcsd_branches(params, f"{b}.mcsd", rms_norm(z, params[f"{b}.norm_mix"]))
        C, Dc = y.shape[1], y.shape[2] // 4  # y (K, C, 4Dc, B)
        v, q, up = y[:, :, :Dc], y[:, :, Dc : 2 * Dc], y[:, :, 2 * Dc :]
        # ring of the last W v-vectors, oldest first: shifting keeps slot j at lag W-1-j
        v_hist = torch.cat([v_hist[:, :, :, 1:], v.unsqueeze(3)], dim=3)  # (K, C, Dc, W, B)
        s = (kernel * v_hist).sum(3)  # (K, C, Dc, B)   s_t = sum_m P_c(m) v_{t-m}
        h = lam * h + q  # (K, C, Dc, B)                  h_t = lambda_c h_{t-1} + q_t
        gated = up.view(K, C, 2, Dc, B) * torch.stack([s, h], dim=2)  # [u * s, p * h]
        z = z + mcsd_fuse(params, f"{b}.mcsd", gated)
        z = z + feed_forward(params, f"{b}.ffn", rms_norm(z, params[f"{b}.norm_ffn"]))
        new_state.append((v_hist, h))
    return head(params, rms_norm(z, params["norm_f"])).transpose(1, 2), new_state
