"""Yan model (MCSD blocks, no attention) written in stacked-population form.

Every parameter carries a leading agent dimension K, so one call serves K agents, each with its
own weights. All parameters of one agent live in one row of a flat tensor (K, P); `views`
returns typed, differentiable views into it (`ModelParams`, agents/yan/params.py). Gossip and
averaging work on the flat rows; the model reads the views.

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
    sublayer, dense or with selective activation (agents/yan/selective.py, all reconstruction).

The equations, per layer, channel c, token t (x_t the normed input of the sublayer):
    [v | q | u | p]_t = W_c x_t                                  (block-diagonal projections)
    s_t = sum_{m=0}^{W_c-1} P_c(m) v_{t-m},  P_c(m) = max(0, 1 - m / W_c)          (slope)
    h_t = lambda_c h_{t-1} + q_t = sum_{m<=t} lambda_c^{t-m} q_m                    (decay)
    y_t = W_out [rms(u_t * s_t) ; rms(p_t * h_t)]_c                      (fuse, per channel)
    z <- z + y;  z <- z + FFN(rms(z))
One `block` (norm -> MCSD mixing -> residual, norm -> FFN -> residual) serves three forms that
compute the same function (tests/test_agents_model.py checks outputs and gradients); only the
sequence-mixing kernel, turning the branches [v | q | u | p] into [u * s, p * h], differs:
  - parallel (`forward_parallel`, `forward_last`): both sections as one masked Toeplitz matmul
    over the whole window, M (C, 2, T, T). Fastest for training windows; O(T^2) memory.
    Kernel: `ParallelMixing`.
  - chunkwise (`forward_chunkwise`): chunks of L tokens. Inside a chunk both sections are
    Toeplitz matmuls; across chunks two states are carried, as RetNet's chunkwise form (arXiv
    2307.08621, eq. 7) with a per-channel scalar decay:
        h_{[i]} (at chunk position j) = sum_{m in chunk, m<=j} lambda^{j-m} q_m
                                        + lambda^{j+1} h_{end of chunk i-1},
        h_{end of chunk i} = lambda^L h_{end of chunk i-1} + (intra-chunk h at j = L-1),
    and the slope reads the previous chunk's last W v-vectors (the ring) as extra columns. It
    starts from any state and returns the final one (prefill, then decode with forward_step).
    O(T (L + W)) time and memory; no T x T matrix. Kernel: `ChunkwiseMixing`.
  - recurrent (`forward_step`): one token, a ring of the last W v-vectors and h; O(1) state.
    Kernel: `StepMixing`; the selective FFN then reads only the selected groups' weights.

Shapes: K agents, B sequences per agent, T tokens, D = d_model, C channels, Dc = D / C,
W = slope window, L = chunk length, F = ffn_mult * D, G = FFN groups, P = parameters per agent.
Weights are stored (out, in), as torch.nn.Linear.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Generic, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from agents.config import ModelConfig
from agents.yan import io, selective
from agents.yan.io import HeadConfig, ImageConfig, InputConfig
from agents.yan.params import (
    EmbedParams,
    FFNParams,
    HeadParams,
    LayerParams,
    MCSDParams,
    ModelParams,
    Spec,
    as_model,
    need,
)
from agents.yan.params import unflatten as unflatten  # the named views, re-exported
from agents.yan.params import views as views  # the typed views, re-exported
from agents.yan.selective import Routing

Obs = Tensor | Mapping[str, Tensor]
"""An observation batch: a tensor (..., vector_dim) is the "vector" modality; a mapping holds
any of "image", "vector", "tokens" (agents/yan/io.py)."""

Params = ModelParams | Mapping[str, Tensor]
"""A model's parameters: the typed views of `views`, or the named views of `unflatten`."""

LayerState = tuple[Tensor, Tensor]
"""Recurrent state of one layer: (v_hist (K, C, Dc, W, B), the last W v-vectors oldest first;
h (K, C, Dc, B), the decay state)."""
State = list[LayerState]
"""Recurrent state, per layer."""

RMS_EPS = 1e-6  # keeps rsqrt finite on an all-zero vector (zero-padded stream start)


# ----------------------------------------------------------------------------------------------
# Parameters: names, shapes, one flat row per agent


def model_io(obs: int | InputConfig, heads: int | HeadConfig) -> tuple[InputConfig, HeadConfig]:
    """The model's inputs and heads. An int `obs` is a feature vector of that width; an int
    `heads` is a classification head over that many classes plus the self-supervised
    next-step head."""
    inp = obs if isinstance(obs, InputConfig) else InputConfig(vector_dim=obs)
    hd = heads if isinstance(heads, HeadConfig) else HeadConfig(n_classes=heads, next_step=True)
    return inp, hd


def param_specs(cfg: ModelConfig, obs: int | InputConfig, heads: int | HeadConfig) -> list[Spec]:
    """Name and per-agent shape of every parameter, in flat-row order: encoders, blocks,
    final norm, heads (encoders and heads from agents/yan/io.py)."""
    D, C = cfg.d_model, cfg.channels
    Dc, Fw = D // C, cfg.ffn_mult * D
    io_part = io.io_specs(*model_io(obs, heads), D)
    specs: list[Spec] = [spec for spec in io_part if spec[0].startswith("enc.")]
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
        if cfg.ffn_groups > 1:  # selective activation's router (Shazeer 2017: W_g, W_noise)
            G = cfg.ffn_groups
            specs += [(f"{b}.ffn.w_gate", (G, D)), (f"{b}.ffn.w_noise", (G, D))]
    specs.append(("norm_f", (D,)))
    specs += [spec for spec in io_part if spec[0].startswith("head.")]
    return specs


def num_params(specs: list[Spec]) -> int:
    return sum(math.prod(shape) for _, shape in specs)


def init_flat(
    cfg: ModelConfig, obs: int | InputConfig, heads: int | HeadConfig, seed: int
) -> Tensor:
    """One agent's initial parameters (P,), float32, a pure function of the seed."""
    g = torch.Generator().manual_seed(seed)
    # residual-branch outputs scaled by 1/sqrt(2 * layers) so the residual stream's variance
    # does not grow with depth (GPT-2, Radford et al. 2019, section 2.3)
    residual_scale = 1.0 / math.sqrt(2 * cfg.layers)
    parts = []
    for name, shape in param_specs(cfg, obs, heads):
        if io.is_io_param(name):  # encoders and heads: io's own rules
            t = io.init_io_param(name, shape, g)
        elif name.endswith(("norm_mix", "norm_ffn", "norm_f")):
            t = torch.ones(shape)
        elif name.endswith((".b", ".b1", ".b2")):
            t = torch.zeros(shape)
        elif name.endswith(("w_gate", "w_noise")):
            # zero router: every group scores alike, so the first picks are uniformly random
            # under the noise (Shazeer 2017, appendix A)
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


@lru_cache(maxsize=64)
def chunk_matrices(
    channels: int, slope_window: int, L: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Chunkwise-form fixed weights for chunks of L tokens.

    S (C, L, W+L): slope over the chunk preceded by the W carried v-vectors; column j is the
        token at chunk position j - W, so S[c, i, j] = P_c(i + W - j).
    Lam (C, L, L): intra-chunk decay, Lam[c, i, j] = lambda_c^(i - j) for j <= i.
    lam_in (C, L): lambda_c^(i + 1), the weight of the carried h at chunk position i.
    lam_L (C,): lambda_c^L, the carried h's decay over a whole chunk.
    """
    W = slope_window
    i = torch.arange(L, dtype=torch.float64)
    lag = i[:, None] + W - torch.arange(W + L, dtype=torch.float64)[None, :]  # (L, W+L)
    W_c = torch.tensor(slope_windows(channels, W), dtype=torch.float64)
    S = (1.0 - lag / W_c[:, None, None]).clamp(min=0.0) * (lag >= 0)  # (C, L, W+L)
    lam = torch.tensor(decay_lambdas(channels), dtype=torch.float64)
    ilag = i[:, None] - i[None, :]  # (L, L)
    Lam = torch.where(ilag >= 0, lam[:, None, None] ** ilag.clamp(min=0.0), 0.0)  # (C, L, L)
    lam_in = lam[:, None] ** (i + 1.0)  # (C, L)
    lam_L = lam**L  # (C,)
    return S.to(dtype), Lam.to(dtype), lam_in.to(dtype), lam_L.to(dtype)


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


def feed_forward(
    cfg: ModelConfig,
    p: FFNParams,
    x: Tensor,
    routing: Routing | None = None,
    step: bool = False,
) -> Tensor:
    """GELU FFN, x (K, D, N) -> (K, D, N): dense if ffn_groups == 1, else selective.

    step: x holds one token per sequence (recurrent form): the selective FFN then reads only
    the selected groups' weights; otherwise it computes all groups and masks (selective.py).
    """
    if cfg.ffn_groups > 1:
        if step:
            return selective.ffn_step(p, x, cfg.ffn_top_k)
        return selective.ffn_parallel(p, x, cfg.ffn_top_k, routing)
    h = F.gelu(linear(x, p.w1, p.b1))  # (K, F, N)
    return linear(h, p.w2, p.b2)  # (K, D, N)


def mcsd_branches(p: MCSDParams, x: Tensor) -> Tensor:
    """Block-diagonal per-channel projections of all four branches at once.

    x (K, D, N) -> (K, C, 4Dc, N), rows [v | q | u | p]: the two branches whose history is
    aggregated (v: slope, q: decay) first, then the two element-wise gates (u: slope, p: decay).
    """
    K, C, _, Dc = p.w_in.shape  # (K, C, 4Dc, Dc)
    return torch.matmul(p.w_in, x.view(K, C, Dc, -1))  # (K, C, 4Dc, N)


def mcsd_fuse(p: MCSDParams, gated: Tensor) -> Tensor:
    """gated (K, C, 2, Dc, N) = [u * s, p * h] -> (K, D, N).

    Each channel's slope and decay sections are RMS-normed separately (the decay channels'
    scales differ by up to 1 / (1 - lambda_c)), concatenated and projected back to D. The
    concatenation is ordered (channel, section, Dc): a fixed permutation of "all slope, then
    all decay" that needs no copy; w_out learns either order alike.
    """
    K, C, _, Dc, N = gated.shape
    y = rms_norm(gated).view(K, C * 2 * Dc, N)  # (K, 2D, N)
    return linear(y, p.w_out)  # (K, D, N)


# ----------------------------------------------------------------------------------------------
# Sequence mixing, one kernel per form: the branches y (K, C, 4Dc, N), rows [v | q | u | p],
# -> gated (K, C, 2, Dc, N') = [u * s, p * h], s the slope and h the decay section, and the
# layer's state after the last token. Everything else in a block is the same in every form.

StateT = TypeVar("StateT")


class Mixing(Generic[StateT]):
    """The sequence-mixing kernel of one form of the model; StateT is its per-layer state."""

    one_token = False
    """The kernel sees one token per sequence (the recurrent step): the selective FFN then
    gathers the selected groups' weights instead of masking all of them."""

    def keep(self, z: Tensor) -> Tensor:
        """The residual stream z (K, D, N) at the N' positions the kernel returns."""
        return z

    def __call__(self, y: Tensor, state: StateT) -> tuple[Tensor, StateT]:
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class ParallelMixing(Mixing[None]):
    """Parallel form (training): slope and decay as masked Toeplitz matmuls over the window.

    Every sequence starts from the zero state; no state comes out. last_only: only each
    sequence's last token is read after this layer, so only it is computed (N' = B)."""

    M: Tensor
    """(C, 2, T, T) mixing_matrices."""
    T: int
    last_only: bool = False

    def keep(self, z: Tensor) -> Tensor:
        if not self.last_only:
            return z
        K, D, _ = z.shape
        return z.view(K, D, -1, self.T)[..., -1]  # (K, D, B)

    def __call__(self, y: Tensor, state: None) -> tuple[Tensor, None]:
        K, C, Dc4, N = y.shape  # (K, C, 4Dc, BT)
        Dc, B, T = Dc4 // 4, N // self.T, self.T
        # split, not slicing: the backward of two slices zero-fills two y-sized gradients and
        # adds them (at K = 500 agents, 16 windows of 8 tokens: ~15% of a training step);
        # split's is a cat
        vq_, up_ = y.split(2 * Dc, dim=2)
        vq = vq_.view(K, C, 2, Dc * B, T)  # v, q with time innermost
        up = up_.view(K, C, 2, Dc, B, T)  # u, p
        if self.last_only:
            # [s | h]_{T-1} = sum_m M[c, j, T-1, m] [v | q]_m
            sh = torch.matmul(vq, self.M[:, :, -1, :, None]).view(K, C, 2, Dc, B)
            return up[..., -1] * sh, None  # (K, C, 2, Dc, B)
        # s_t = sum_m P_c(t-m) v_m  and  h_t = sum_m lambda_c^(t-m) q_m, all t at once
        sh = torch.matmul(vq, self.M.transpose(-1, -2)).view(K, C, 2, Dc, B, T)
        return (up * sh).view(K, C, 2, Dc, N), None  # (K, C, 2, Dc, BT)


@dataclass(frozen=True, eq=False)
class ChunkwiseMixing(Mixing[LayerState]):
    """Chunkwise form (long sequences, prefill): Toeplitz matmuls inside chunks of L tokens,
    the carried state across them (module docstring). B sequences of T tokens each; the state
    is forward_step's, before token 0 in, after token T-1 out."""

    B: int
    T: int
    L: int

    def __call__(self, y: Tensor, state: LayerState) -> tuple[Tensor, LayerState]:
        K, C, Dc4, _ = y.shape  # (K, C, 4Dc, BT)
        Dc, B, T, L = Dc4 // 4, self.B, self.T, self.L
        v_hist, h0 = state  # (K, C, Dc, W, B), (K, C, Dc, B)
        W = v_hist.shape[3]
        S, Lam, lam_in, lam_L = chunk_matrices(C, W, L, y.dtype)
        n = -(-T // L)  # chunks; the last one is zero-padded to L tokens
        pad = n * L - T
        v_, q_, up_ = y.split([Dc, Dc, 2 * Dc], dim=2)  # split: see ParallelMixing
        v = F.pad(v_.view(K, C, Dc, B, T), (0, pad))  # (K, C, Dc, B, nL)
        q = F.pad(q_.view(K, C, Dc, B, T), (0, pad))  # (K, C, Dc, B, nL)
        up = up_.view(K, C, 2, Dc, B, T)  # u, p

        # slope: each chunk reads its L tokens and the W before them (carried ring, or the
        # previous chunk's tail): overlapping windows of W+L, one Toeplitz matmul for all chunks
        v_ext = torch.cat([v_hist.transpose(3, 4), v], dim=-1)  # (K, C, Dc, B, W+nL)
        windows = v_ext.unfold(-1, W + L, L)  # (K, C, Dc, B, n, W+L)
        s = torch.matmul(windows.reshape(K, C, -1, W + L), S.transpose(1, 2))  # (K, C, DcBn, L)
        s = s.view(K, C, Dc, B, n * L)[..., :T]  # (K, C, Dc, B, T)

        # decay: intra-chunk Toeplitz matmul, then the carried state (RetNet eq. 7)
        intra = torch.matmul(q.view(K, C, -1, L), Lam.transpose(1, 2))  # (K, C, DcBn, L)
        intra = intra.view(K, C, Dc, B, n, L)
        lam_L = lam_L.view(C, 1, 1)
        carried = [h0]  # h at the end of chunk i-1, for i = 0..n-1; (K, C, Dc, B) each
        for i in range(n - 1):
            carried.append(lam_L * carried[-1] + intra[..., i, -1])
        h_in = torch.stack(carried, dim=-1).unsqueeze(-1)  # (K, C, Dc, B, n, 1)
        h = intra + lam_in.view(C, 1, 1, 1, L) * h_in  # (K, C, Dc, B, n, L)
        h = h.view(K, C, Dc, B, n * L)[..., :T]  # (K, C, Dc, B, T)

        gated = up * torch.stack([s, h], dim=2)  # (K, C, 2, Dc, B, T) [u * s, p * h]
        # state after token T-1: its last W v-vectors, oldest first, and h_{T-1}
        v_hist = v_ext[..., T : T + W].transpose(3, 4).contiguous()  # (K, C, Dc, W, B)
        return gated.view(K, C, 2, Dc, B * T), (v_hist, h[..., -1].contiguous())


@dataclass(frozen=True, eq=False)
class StepMixing(Mixing[LayerState]):
    """Recurrent form (inference): one token per sequence, y (K, C, 4Dc, B); O(1) state."""

    kernel: Tensor
    """(C, 1, W, 1) slope kernel over the ring, oldest slot first (step_weights)."""
    lam: Tensor
    """(C, 1, 1) decay rates (step_weights)."""
    one_token = True

    def __call__(self, y: Tensor, state: LayerState) -> tuple[Tensor, LayerState]:
        K, C, Dc4, B = y.shape  # (K, C, 4Dc, B)
        Dc = Dc4 // 4
        v_hist, h = state  # (K, C, Dc, W, B), (K, C, Dc, B)
        v, q, up = y[:, :, :Dc], y[:, :, Dc : 2 * Dc], y[:, :, 2 * Dc :]
        # ring of the last W v-vectors, oldest first: shifting keeps slot j at lag W-1-j
        v_hist = torch.cat([v_hist[:, :, :, 1:], v.unsqueeze(3)], dim=3)  # (K, C, Dc, W, B)
        s = (self.kernel * v_hist).sum(3)  # (K, C, Dc, B)   s_t = sum_m P_c(m) v_{t-m}
        h = self.lam * h + q  # (K, C, Dc, B)                  h_t = lambda_c h_{t-1} + q_t
        gated = up.view(K, C, 2, Dc, B) * torch.stack([s, h], dim=2)  # [u * s, p * h]
        return gated, (v_hist, h)  # (K, C, 2, Dc, B)


# ----------------------------------------------------------------------------------------------
# The block, the same in every form


def block(
    cfg: ModelConfig,
    p: LayerParams,
    z: Tensor,
    mixing: Mixing[StateT],
    state: StateT,
    routing: Routing | None = None,
) -> tuple[Tensor, StateT]:
    """One pre-norm residual Yan block: z (K, D, N) -> (K, D, N'), and the layer's state after
    it. MCSD sublayer (branches -> the form's mixing kernel -> fuse), then the FFN sublayer
    (dense, or selective with `routing`). N' = N, except where the kernel keeps fewer tokens."""
    y = mcsd_branches(p.mcsd, rms_norm(z, p.norm_mix))  # (K, C, 4Dc, N) [v | q | u | p]
    gated, state = mixing(y, state)  # (K, C, 2, Dc, N') [u * s, p * h]
    z = mixing.keep(z) + mcsd_fuse(p.mcsd, gated)  # (K, D, N')
    z = z + feed_forward(cfg, p.ffn, rms_norm(z, p.norm_ffn), routing, mixing.one_token)
    return z, state


def _blocks(
    cfg: ModelConfig,
    p: ModelParams,
    z: Tensor,
    mixing: Mixing[LayerState],
    state: State,
    routing: Routing | None = None,
) -> tuple[Tensor, State]:
    """z (K, D, N) through every block with one stateful kernel: (K, D, N), the new state."""
    new_state: State = []
    for layer, layer_state in zip(p.blocks, state, strict=True):
        z, layer_state = block(cfg, layer, z, mixing, layer_state, routing)
        new_state.append(layer_state)
    return z, new_state


# ----------------------------------------------------------------------------------------------
# Observations in, logits out


def infer_inputs(e: EmbedParams, obs: Mapping[str, Tensor]) -> InputConfig:
    """The InputConfig of an observation batch, from its shapes and the encoder weights."""
    image = None
    if "image" in obs:
        H, W_, C = obs["image"].shape[-3:]
        patch = math.isqrt(need(e.image_w, "enc.image.w").shape[-1] // C)
        image = ImageConfig(height=H, width=W_, channels=C, patch=patch)
    vector_dim = obs["vector"].shape[-1] if "vector" in obs else 0
    vocab = need(e.tokens_emb, "enc.tokens.emb").shape[1] if "tokens" in obs else 0
    return InputConfig(vector_dim=vector_dim, image=image, vocab=vocab)


def as_obs(x: Obs) -> dict[str, Tensor]:
    """A tensor observation is the "vector" modality."""
    return dict(x) if isinstance(x, Mapping) else {"vector": x}


def _embed(e: EmbedParams, x: Obs) -> tuple[Tensor, int, int, int]:
    """Observations (K, B, T, ...) -> token stream z (K, D, B*L), with B, T and S tokens per
    step (L = T*S; the heads read the last token of every step)."""
    obs = as_obs(x)
    inp = infer_inputs(e, obs)
    D = e.modality.shape[-1]
    stream, _ = io.encode(e, obs, inp, D)  # (K, B, L, D), a view of (K, D, B, L)
    K, B, L, _ = stream.shape
    S = io.tokens_per_step(inp)
    return stream.flatten(1, 2).transpose(1, 2), B, L // S, S  # (K, D, BL) contiguous


def _read(z: Tensor, B: int, T: int, S: int) -> Tensor:
    """Stream states z (K, D, B*T*S) -> at every step's last token (K, D, B*T)."""
    if S == 1:
        return z
    K, D, _ = z.shape
    return z.view(K, D, B, T, S)[..., -1].reshape(K, D, B * T)


def head(p: HeadParams, z: Tensor) -> Tensor:
    """Classification logits from the final-normed state: z (K, D, N) -> (K, n_classes, N)."""
    cls = need(p.cls, "head.cls")
    return linear(z, cls.w, cls.b)


# ----------------------------------------------------------------------------------------------
# Parallel form (training)


def _features(
    cfg: ModelConfig, p: ModelParams, x: Obs, last_only: bool, routing: Routing | None
) -> Tensor:
    """Observations (K, B, T, ...) -> final-normed state at every step's read position
    (K, D, B*T), or at the last one (K, D, B) if last_only."""
    z, B, T, S = _embed(p.embed, x)  # z (K, D, B*L)
    L = T * S
    M = mixing_matrices(cfg.channels, cfg.slope_window, L, z.dtype)  # (C, 2, L, L)
    for i, layer in enumerate(p.blocks):  # z (K, D, BL)
        last = last_only and i == len(p.blocks) - 1  # only the last token is read after this
        z, _ = block(cfg, layer, z, ParallelMixing(M, L, last), None, routing)
    return rms_norm(z if last_only else _read(z, B, T, S), p.norm_f)


def hidden(cfg: ModelConfig, params: Params, x: Obs, routing: Routing | None = None) -> Tensor:
    """Final-normed state at every step (K, B, T, D): what the heads in agents/yan/io.py read
    (action/value, self-supervised next-step prediction)."""
    K, B, T = as_obs(x)[next(iter(as_obs(x)))].shape[:3]
    z = _features(cfg, as_model(params), x, False, routing)  # (K, D, B*T)
    return z.transpose(1, 2).reshape(K, B, T, -1)


def forward_parallel(
    cfg: ModelConfig, params: Params, x: Tensor, routing: Routing | None = None
) -> Tensor:
    """x (K, B, T, obs_dim) -> logits (K, B, T, n_classes), causal: token t sees tokens <= t.

    Every sequence starts from the zero state. Builds a (C, 2, T, T) mixing matrix: for long
    sequences use forward_chunkwise. routing: the selective FFN's noise and record (training);
    None = no noise, nothing recorded.
    """
    p = as_model(params)
    K, B, T = as_obs(x)[next(iter(as_obs(x)))].shape[:3]
    logits = head(p.head, _features(cfg, p, x, False, routing))  # (K, n, BT)
    return logits.transpose(1, 2).reshape(K, B, T, -1)


def forward_last(
    cfg: ModelConfig, params: Params, x: Tensor, routing: Routing | None = None
) -> Tensor:
    """x (K, B, T, obs_dim) -> logits of the last token (K, B, n_classes).

    Equals forward_parallel(...)[:, :, -1]; the last layer computes only what that token needs
    (training reads only the last token of each window).
    """
    p = as_model(params)
    return head(p.head, _features(cfg, p, x, True, routing)).transpose(1, 2)


# ----------------------------------------------------------------------------------------------
# Chunkwise form (long sequences, prefill)


def forward_chunkwise(
    cfg: ModelConfig,
    params: Params,
    x: Tensor,
    state: State | None = None,
    chunk: int = 64,
    routing: Routing | None = None,
) -> tuple[Tensor, State]:
    """x (K, B, T, obs_dim) -> (logits (K, B, T, n_classes), state after the last token).

    Starts from `state` (init_state's layout; None = the zero state), so a long context can be
    prefilled in pieces and then continued with forward_step. Same function as forward_step
    token by token and as forward_parallel from the zero state; memory O(T (chunk + W)).
    """
    p = as_model(params)
    z, B, T, S = _embed(p.embed, x)  # z (K, D, B*N), N = T*S tokens
    K, N = z.shape[0], T * S
    if state is None:
        state = init_state(cfg, K, B, z.dtype)
    mixing = ChunkwiseMixing(B, N, max(1, min(chunk, N)))
    z, state = _blocks(cfg, p, z, mixing, state, routing)  # (K, D, BN)
    logits = head(p.head, rms_norm(_read(z, B, T, S), p.norm_f))  # (K, n, BT)
    return logits.transpose(1, 2).reshape(K, B, T, -1), state


# ----------------------------------------------------------------------------------------------
# Recurrent form (inference): O(1) state per layer, whatever the stream length


def init_state(cfg: ModelConfig, K: int, B: int, dtype: torch.dtype = torch.float32) -> State:
    """Zero state == an empty history (the parallel form's zero padding before token 0)."""
    C, Dc, W = cfg.channels, cfg.d_model // cfg.channels, cfg.slope_window
    return [
        (torch.zeros(K, C, Dc, W, B, dtype=dtype), torch.zeros(K, C, Dc, B, dtype=dtype))
        for _ in range(cfg.layers)
    ]


def forward_step(cfg: ModelConfig, params: Params, x_t: Obs, state: State) -> tuple[Tensor, State]:
    """One step: x_t (K, B, ...) without the T dim -> logits (K, B, n_classes), new state (the
    input state is untouched). A step of S tokens (image patches, vector, token) runs them
    through the blocks one by one; the head reads after the last."""
    p = as_model(params)
    obs = {k: v.unsqueeze(2) for k, v in as_obs(x_t).items()}  # T = 1
    tokens, B, _, S = _embed(p.embed, obs)  # (K, D, B*S), token s of sequence b at b*S + s
    K, D, _ = tokens.shape
    tokens = tokens.view(K, D, B, S)
    mixing = StepMixing(*step_weights(cfg.channels, cfg.slope_window, tokens.dtype))
    for s_ in range(S):  # z (K, D, B): one token of every sequence
        z, state = _blocks(cfg, p, tokens[..., s_].contiguous(), mixing, state)
    return head(p.head, rms_norm(z, p.norm_f)).transpose(1, 2), state
