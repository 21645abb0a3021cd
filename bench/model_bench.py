"""Model benchmark: the Yan (MCSD) model against a same-size Transformer, and the stacked
population against a Python loop over per-agent modules.

Usage:
    .venv/bin/python bench/model_bench.py            # full run, ~10 min on 2 cores
    .venv/bin/python bench/model_bench.py --quick    # every code path, small sizes, ~1 min
    .venv/bin/python bench/model_bench.py --write    # also rewrite its BENCHMARKS.md section

Figures, each measured in ONE run against baselines built here at equal size:
  1. recurrent decoding tokens/s and state bytes: MCSD recurrent state vs a pre-norm decoder-only
     Transformer with a KV cache, 1 and 64 streams, after contexts of 256 .. 16k tokens;
  2. training tokens/s (forward + backward + Adam step) at a 2k context;
  3. population: agent-steps/s and agent-updates/s of the stacked (K, P) population vs a loop
     over K separate nn.Module agents, and the fraction of the sgemm peak the stacked step reaches.
Wall-clock numbers are noisy (other work shares the cores); the claims are the ratios within
one run (house rule 6). Progress goes to stderr, the tables to stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: bench/ is on sys.path, the repo root is not

from agents import yan  # noqa: E402
from agents.config import LearnConfig, ModelConfig  # noqa: E402
from agents.population import Population  # noqa: E402
from agents.yan.model import (  # noqa: E402
    State,
    forward_last,
    forward_parallel,
    forward_step,
    init_flat,
    init_state,
    mixing_matrices,
    num_params,
    param_specs,
    step_weights,
    unflatten,
)
from swarm.scenario import Scenario  # noqa: E402

PEAK_TOOL = REPO.parent / "shared" / "tools" / "peak_flops.py"
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
SECTION = "## Models: MCSD vs Transformer, stacked population vs loop (`bench/model_bench.py`)"

OBS_DIM, N_CLASSES = 16, 5  # the drone-patrol agent's I/O (agents/config.py defaults)
STREAMS = 64  # "many streams" case of figure 1
# Figure 1-2 size: d_model 256, 4 layers, C = 4 channels. Per layer MCSD holds w_in
# C * 4Dc * Dc = D^2, w_out 2D^2 and a 2x FFN 4D^2 = 7D^2; the Transformer holds qkv 3D^2,
# proj D^2 and an MLP of hidden 1.5D = 3D^2 = 7D^2, so the two match to within the norms/biases.
BIG = ModelConfig(d_model=256, channels=4, layers=4, ffn_mult=2, slope_window=4)
TF_HEADS = 4  # head size 64, as GPT-2
TF_MLP_HIDDEN = 3 * BIG.d_model // 2
FP32 = 4  # bytes
STEP_PREFILL_S = 2.0  # cap of the stepped MCSD prefill when forward_chunkwise is missing
FILL_BLOCK = 256  # positions of random keys/values tiled into a KV cache


@dataclass(frozen=True)
class Settings:
    """Sizes and budgets of one benchmark run."""

    contexts: tuple[int, ...]
    """Context lengths (tokens already seen) before the timed decode."""
    new_tokens: int
    """N: tokens decoded per timed repeat, at most."""
    min_new_tokens: int
    """Floor of N when the per-repeat time budget would allow fewer."""
    decode_budget_s: float
    """Per-repeat wall-time budget of a decode measurement (N shrinks to fit, down to the floor)."""
    repeats: int
    """Best of this many repeats for every timing."""
    train_context: int
    train_batch: int
    pop_ks: tuple[int, ...]
    """Population sizes K of figure 3."""
    pop_threads: tuple[int, ...]
    """Thread counts figure 3 measures (each row shows the faster)."""
    loop_budget_s: float
    """A loop over K modules is run only if one pass is predicted to take less; otherwise its
    per-agent cost is extrapolated linearly from the largest K that was run."""
    kv_cap_gb: float
    """KV caches larger than this are not allocated (reported as not run)."""


FULL = Settings(
    contexts=(256, 1024, 4096, 16384),
    new_tokens=64,
    min_new_tokens=8,
    decode_budget_s=3.0,
    repeats=5,  # the cores are shared: best of 5 (slow cases stop after 2 budgets)
    train_context=2048,
    train_batch=2,
    pop_ks=(1, 4, 16, 64, 256, 1024),
    pop_threads=(1, 2),
    loop_budget_s=3.0,
    kv_cap_gb=10.0,
)
QUICK = Settings(
    contexts=(256, 1024),
    new_tokens=16,
    min_new_tokens=4,
    decode_budget_s=0.5,
    repeats=2,
    train_context=512,
    train_batch=1,
    pop_ks=(1, 16, 256),
    pop_threads=(1,),
    loop_budget_s=0.5,
    kv_cap_gb=2.0,
)

_T0 = time.perf_counter()


def zones_kept(sc: Scenario) -> Scenario:
    """The drone patrol as the benches that load scenarios/drone_patrol.yaml measured it before
    the scenario re-tasked its drones (issue 17): every drone keeps its zone, nobody joins
    mid-run, drone_11 leaves at 200 s, and only weights are shared (no sightings). What they
    measure (compression, faults, aggregation) is not re-tasking, and their published figures
    stay reproducible."""
    from envs.drone_patrol.config import Departure
    from protocols.config import SightingsConfig

    world = sc.world.model_copy(
        update={"rotation_s": None, "arrivals": [], "departures": [Departure(agent=11, at_s=200)]}
    )
    gossip = sc.gossip.model_copy(update={"sightings": SightingsConfig()})
    return sc.model_copy(update={"world": world, "gossip": gossip})


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Timing


def best_time(fn: Callable[[], object], repeats: int, min_time: float = 0.05) -> float:
    """Seconds per call of fn: best of `repeats`, each averaging enough calls to last min_time.

    One untimed call first (thread pool, allocator, lru caches); the first repeat is a single
    call, which also sizes the others."""
    fn()
    best, n = math.inf, 1
    for i in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
        if i == 0:  # the first repeat sizes the others
            n = max(1, math.ceil(min_time / max(best, 1e-7)))
    return best


def decode_rate(run: Callable[[int], None], streams: int, s: Settings) -> tuple[float, int]:
    """tokens/s = streams * N / (time to decode N tokens); returns (rate, N).

    N = s.new_tokens, reduced to fit s.decode_budget_s per repeat (not below s.min_new_tokens);
    best of s.repeats, fewer once the repeats have used 2 budgets (slow cases: one repeat)."""
    run(1)  # warm-up
    t0 = time.perf_counter()
    run(1)
    per_token = time.perf_counter() - t0
    n = int(min(s.new_tokens, max(s.min_new_tokens, s.decode_budget_s // per_token)))
    best, spent = math.inf, 0.0
    for _ in range(s.repeats):
        t0 = time.perf_counter()
        run(n)
        best = min(best, time.perf_counter() - t0)
        spent += time.perf_counter() - t0
        if spent > 2 * s.decode_budget_s:
            break
    return streams * n / best, n


# ----------------------------------------------------------------------------------------------
# Baseline 1: a small pre-norm decoder-only Transformer (nanoGPT layout), vector in, logits out


@dataclass(frozen=True)
class TransformerConfig:
    """Same I/O as the Yan model: obs_dim vectors in, n_classes logits out (no vocabulary)."""

    d_model: int
    layers: int
    heads: int
    mlp_hidden: int
    obs_dim: int
    n_classes: int


def sinusoid(pos: Tensor, d: int) -> Tensor:
    """Sinusoidal position code (Vaswani et al. 2017, sec. 3.5): pos (T,) -> (T, d). No
    parameters, so the parameter count stays equal to the MCSD's (a learned table for 16k
    positions would be 4M parameters, twice the model)."""
    inv = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    ang = pos.to(torch.float32)[:, None] * inv[None, :]  # (T, d/2)
    return torch.stack([ang.sin(), ang.cos()], dim=-1).view(-1, d)  # (T, d) interleaved


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.nh, self.hs = cfg.heads, cfg.d_model // cfg.heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.nh, self.hs).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))

    def decode(self, x: Tensor, k_cache: Tensor, v_cache: Tensor, pos: int) -> Tensor:
        """One token per stream: x (B, D); caches (B, nh, T_max, hs) written at pos in place."""
        B, D = x.shape
        q, k, v = self.qkv(x).view(B, 3, self.nh, self.hs).unbind(1)  # each (B, nh, hs)
        k_cache[:, :, pos] = k
        v_cache[:, :, pos] = v
        y = F.scaled_dot_product_attention(  # no mask: the one query sees every cached token
            q.unsqueeze(2), k_cache[:, :, : pos + 1], v_cache[:, :, : pos + 1]
        )  # (B, nh, 1, hs)
        return self.proj(y.reshape(B, D))


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.mlp_hidden),
            nn.GELU(),
            nn.Linear(cfg.mlp_hidden, cfg.d_model),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))

    def decode(self, x: Tensor, k_cache: Tensor, v_cache: Tensor, pos: int) -> Tensor:
        x = x + self.attn.decode(self.ln1(x), k_cache, v_cache, pos)
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.enc = nn.Linear(cfg.obs_dim, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.n_classes)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, obs_dim) -> logits (B, T, n_classes), causal."""
        B, T, _ = x.shape
        z = self.enc(x) + sinusoid(torch.arange(T), self.cfg.d_model)  # (B, T, D)
        for blk in self.blocks:
            z = blk(z)
        return self.head(self.ln_f(z))

    def init_cache(self, B: int, t_max: int) -> list[tuple[Tensor, Tensor]]:
        """Per layer (k, v), each (B, nh, t_max, hs), uninitialized: decode_step writes position
        pos before it reads [0, pos]."""
        nh, hs = self.cfg.heads, self.cfg.d_model // self.cfg.heads
        return [
            (torch.empty(B, nh, t_max, hs), torch.empty(B, nh, t_max, hs))
            for _ in range(self.cfg.layers)
        ]

    def decode_step(self, x_t: Tensor, cache: list[tuple[Tensor, Tensor]], pos: int) -> Tensor:
        """x_t (B, obs_dim) at position pos -> logits (B, n_classes); writes the cache at pos."""
        z = self.enc(x_t) + sinusoid(torch.tensor([pos]), self.cfg.d_model)  # (B, D)
        for blk, (k_cache, v_cache) in zip(self.blocks, cache, strict=True):
            z = blk.decode(z, k_cache, v_cache, pos)
        return self.head(self.ln_f(z))


TF = TransformerConfig(BIG.d_model, BIG.layers, TF_HEADS, TF_MLP_HIDDEN, OBS_DIM, N_CLASSES)
"""The Transformer of figures 1-2, the same size as BIG."""


def kv_bytes(cfg: TransformerConfig, streams: int, context: int) -> int:
    """Keys and values of every layer: 2 x layers x streams x context x d_model, fp32."""
    return 2 * cfg.layers * streams * context * cfg.d_model * FP32


def state_bytes(state: State) -> int:
    return sum(t.numel() * t.element_size() for layer in state for t in layer)


# ----------------------------------------------------------------------------------------------
# Baseline 2: one agent's Yan model as a plain nn.Module, for the loop over K agents


class YanBlock(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        D, C = cfg.d_model, cfg.channels
        self.norm_mix = nn.Parameter(torch.ones(D))
        self.w_in = nn.Parameter(torch.zeros(C, 4 * D // C, D // C))  # (C, 4Dc, Dc)
        self.w_out = nn.Linear(2 * D, D, bias=False)
        self.norm_ffn = nn.Parameter(torch.ones(D))
        self.ffn1 = nn.Linear(D, cfg.ffn_mult * D)
        self.ffn2 = nn.Linear(cfg.ffn_mult * D, D)


def _rms(x: Tensor, w: Tensor | None = None) -> Tensor:
    x = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + yan.model.RMS_EPS)
    return x if w is None else x * w


class YanAgent(nn.Module):
    """One agent's Yan model, token-major with nn.Linear layers: the same math as
    agents/yan/model.py for K = 1 (checked against it before timing), written the way a
    per-agent module would be, so a Python loop over these is an honest baseline."""

    def __init__(self, cfg: ModelConfig, obs_dim: int, n_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.enc = nn.Linear(obs_dim, cfg.d_model)
        self.blocks = nn.ModuleList(YanBlock(cfg) for _ in range(cfg.layers))
        self.norm_f = nn.Parameter(torch.ones(cfg.d_model))
        self.head = nn.Linear(cfg.d_model, n_classes)
        kernel, lam = step_weights(cfg.channels, cfg.slope_window, torch.float32)
        self.kernel = kernel[:, 0, :, 0].T.unsqueeze(-1)  # (W, C, 1), ring slot oldest first
        self.lam = lam.view(-1, 1)  # (C, 1)

    @torch.no_grad()
    def load_row(self, row: Tensor, obs_dim: int, n_classes: int) -> None:
        specs = param_specs(self.cfg, obs_dim, n_classes)
        p = {k: v[0] for k, v in unflatten(row[None], specs).items()}
        # two layouts of the model's I/O: a biased encoder enc.w/b and head.w/b, or
        # agents/yan/io.py's enc.vector.w plus a modality embedding (the bias of the one
        # modality) and head.cls.w/b; the check before timing says whether this still holds
        self.enc.weight.copy_(p["enc.w"] if "enc.w" in p else p["enc.vector.w"])
        self.enc.bias.copy_(p["enc.b"] if "enc.b" in p else p["enc.modality"][0])
        for i, blk in enumerate(self.blocks):
            b = f"blocks.{i}"
            blk.norm_mix.copy_(p[f"{b}.norm_mix"])
            blk.w_in.copy_(p[f"{b}.mcsd.w_in"])
            blk.w_out.weight.copy_(p[f"{b}.mcsd.w_out"])
            blk.norm_ffn.copy_(p[f"{b}.norm_ffn"])
            blk.ffn1.weight.copy_(p[f"{b}.ffn.w1"])
            blk.ffn1.bias.copy_(p[f"{b}.ffn.b1"])
            blk.ffn2.weight.copy_(p[f"{b}.ffn.w2"])
            blk.ffn2.bias.copy_(p[f"{b}.ffn.b2"])
        self.norm_f.copy_(p["norm_f"])
        self.head.weight.copy_(p["head.w"] if "head.w" in p else p["head.cls.w"])
        self.head.bias.copy_(p["head.b"] if "head.b" in p else p["head.cls.b"])

    def _branches(self, blk: YanBlock, x: Tensor) -> Tensor:
        """x (..., D) -> (..., C, 4Dc), rows [v | q | u | p] per channel."""
        C, Dc4, Dc = blk.w_in.shape
        y = torch.matmul(x.view(*x.shape[:-1], C, 1, Dc), blk.w_in.transpose(1, 2))
        return y.squeeze(-2)  # (..., C, 4Dc)

    def _fuse(self, blk: YanBlock, gated: Tensor) -> Tensor:
        """gated (..., C, 2, Dc) = [u * s, p * h] -> (..., D)."""
        return blk.w_out(_rms(gated).flatten(-3))

    def _ffn(self, blk: YanBlock, z: Tensor) -> Tensor:
        return blk.ffn2(F.gelu(blk.ffn1(_rms(z, blk.norm_ffn))))

    def init_state(self, B: int) -> list[tuple[Tensor, Tensor]]:
        """Per layer (v_hist (B, W, C, Dc), h (B, C, Dc))."""
        C, W = self.cfg.channels, self.cfg.slope_window
        Dc = self.cfg.d_model // C
        return [(torch.zeros(B, W, C, Dc), torch.zeros(B, C, Dc)) for _ in self.blocks]

    def step(self, x_t: Tensor, state: list[tuple[Tensor, Tensor]]):
        """x_t (B, obs_dim) -> logits (B, n_classes), new state."""
        z = self.enc(x_t)  # (B, D)
        B, Dc = z.shape[0], self.cfg.d_model // self.cfg.channels
        new_state = []
        for blk, (v_hist, h) in zip(self.blocks, state, strict=True):
            y = self._branches(blk, _rms(z, blk.norm_mix))  # (B, C, 4Dc)
            v, q, up = y[..., :Dc], y[..., Dc : 2 * Dc], y[..., 2 * Dc :]
            v_hist = torch.cat([v_hist[:, 1:], v[:, None]], dim=1)  # (B, W, C, Dc)
            s = (self.kernel * v_hist).sum(1)  # (B, C, Dc)
            h = self.lam * h + q  # (B, C, Dc)
            gated = up.view(B, -1, 2, Dc) * torch.stack([s, h], dim=2)  # (B, C, 2, Dc)
            z = z + self._fuse(blk, gated)
            z = z + self._ffn(blk, z)
            new_state.append((v_hist, h))
        return self.head(_rms(z, self.norm_f)), new_state

    def forward_last(self, x: Tensor) -> Tensor:
        """x (B, T, obs_dim) -> logits of the last token (B, n_classes); like forward_last, the
        last layer computes only what the last token needs."""
        B, T, _ = x.shape
        C, W, Dc = self.cfg.channels, self.cfg.slope_window, self.cfg.d_model // self.cfg.channels
        M = mixing_matrices(C, W, T, x.dtype)  # (C, 2, T, T) [slope, decay]
        z = self.enc(x)  # (B, T, D)
        for i, blk in enumerate(self.blocks):
            y = self._branches(blk, _rms(z, blk.norm_mix))  # (B, T, C, 4Dc)
            vq, up = y[..., : 2 * Dc].view(B, T, C, 2, Dc), y[..., 2 * Dc :].view(B, T, C, 2, Dc)
            if i == len(self.blocks) - 1:
                sh = torch.einsum("cjm,bmcjd->bcjd", M[:, :, -1], vq)  # (B, C, 2, Dc)
                z = z[:, -1] + self._fuse(blk, up[:, -1] * sh)  # (B, D)
            else:
                sh = torch.einsum("cjtm,bmcjd->btcjd", M, vq)  # (B, T, C, 2, Dc)
                z = z + self._fuse(blk, up * sh)  # (B, T, D)
            z = z + self._ffn(blk, z)
        return self.head(_rms(z, self.norm_f))


class FunctionalAgent(nn.Module):
    """Fallback loop baseline, used if YanAgent no longer matches the model: one agent is the
    model's own functions at K = 1 on its own (1, P) parameter row (same math by construction,
    but it carries the stacked form's per-call bookkeeping)."""

    def __init__(self, cfg: ModelConfig, obs_dim: int, n_classes: int) -> None:
        super().__init__()
        self.cfg, self.specs = cfg, param_specs(cfg, obs_dim, n_classes)
        self.flat = nn.Parameter(torch.zeros(1, num_params(self.specs)))

    @torch.no_grad()
    def load_row(self, row: Tensor, obs_dim: int, n_classes: int) -> None:
        self.flat.copy_(row[None])

    def init_state(self, B: int) -> State:
        return init_state(self.cfg, 1, B)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        logits, state = forward_step(self.cfg, unflatten(self.flat, self.specs), x_t[None], state)
        return logits[0], state

    def forward_last(self, x: Tensor) -> Tensor:
        return forward_last(self.cfg, unflatten(self.flat, self.specs), x[None])[0]


# ----------------------------------------------------------------------------------------------
# Analytic matmul FLOPs of the Yan model (elementwise work, norms and the optimizer excluded)


def yan_step_flops(cfg: ModelConfig, obs_dim: int, n_classes: int) -> int:
    """Matmul FLOPs of one recurrent step of one agent (one token)."""
    D, Dc, Fw = cfg.d_model, cfg.d_model // cfg.channels, cfg.ffn_mult * cfg.d_model
    per_layer = 2 * 4 * D * Dc + 2 * 2 * D * D + 2 * 2 * D * Fw  # w_in, w_out, ffn w1 + w2
    return 2 * obs_dim * D + cfg.layers * per_layer + 2 * D * n_classes


def yan_train_flops(cfg: ModelConfig, obs_dim: int, n_classes: int, B: int, T: int) -> int:
    """Matmul FLOPs of one training step of one agent: forward_last on (B, T) windows, times 3
    (backward ~ 2x forward: gradients w.r.t. inputs and weights; Kaplan et al. 2020, sec. 2.1)."""
    D, Dc, Fw = cfg.d_model, cfg.d_model // cfg.channels, cfg.ffn_mult * cfg.d_model
    N = B * T
    fwd = 2 * obs_dim * D * N
    for i in range(cfg.layers):
        last = i == cfg.layers - 1
        n_out = B if last else N  # tokens after the mixing (forward_last prunes the last layer)
        fwd += 2 * 4 * D * Dc * N  # branches on every token
        fwd += 4 * D * B * T * (1 if last else T)  # Toeplitz mixing (C,2,Dc*B,T) @ (T,T|1)
        fwd += 2 * 2 * D * D * n_out + 2 * 2 * D * Fw * n_out  # w_out, ffn
    fwd += 2 * D * n_classes * B
    return 3 * fwd


# ----------------------------------------------------------------------------------------------
# Machine


def machine() -> dict[str, str]:
    cpu = platform.processor() or "?"
    try:
        names = re.findall(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = names[0].strip() if names else cpu
    except OSError:
        pass
    mem = ""
    try:
        kb = int(re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f", {kb / 2**20:.0f} GB RAM"
    except (OSError, AttributeError):
        pass
    return {
        "cores": str(os.cpu_count()),
        "cpu": cpu + mem,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def peak_gflops(threads: int) -> float:
    """The sgemm peak by ../shared/tools/peak_flops.py (the house denominator), in this run."""
    if not PEAK_TOOL.exists():
        raise SystemExit(f"{PEAK_TOOL} not found: the fraction-of-peak figure needs it")
    out = subprocess.run(
        [sys.executable, str(PEAK_TOOL), "--threads", str(threads)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(r"([\d.]+) GFLOP/s", out)
    if m is None:
        raise SystemExit(f"could not parse {PEAK_TOOL} output: {out!r}")
    return float(m.group(1))


# ----------------------------------------------------------------------------------------------
# Correctness checks: a benchmark of a wrong function is worthless


@torch.no_grad()
def check_baselines() -> tuple[str | None, str | None]:
    """Transformer: KV decode == parallel causal forward (must hold). YanAgent == stacked model
    at K = 1, and forward_chunkwise (if present): final state == recurrent state; each returns
    its problem (then it is not used) or None, as (agent_problem, chunkwise_problem)."""
    g = torch.Generator().manual_seed(0)
    tcfg = TransformerConfig(32, 2, 4, 48, OBS_DIM, N_CLASSES)
    tf = Transformer(tcfg).eval()
    x = torch.randn(3, 12, OBS_DIM, generator=g)
    cache = tf.init_cache(3, 12)
    dec = torch.stack([tf.decode_step(x[:, t], cache, t) for t in range(12)], dim=1)
    torch.testing.assert_close(dec, tf(x), atol=1e-5, rtol=1e-4)

    cfg = ModelConfig(d_model=16, channels=4, layers=2, slope_window=3)
    row = init_flat(cfg, OBS_DIM, N_CLASSES, seed=1)
    row = row + 0.2 * torch.randn(row.shape, generator=g)  # break the norm/bias symmetries
    params = unflatten(row[None], param_specs(cfg, OBS_DIM, N_CLASSES))
    x = torch.randn(1, 2, 9, OBS_DIM, generator=g)  # (K, B, T, obs)
    st = init_state(cfg, 1, 2)
    for t in range(8):
        _, st = forward_step(cfg, params, x[:, :, t], st)
    agent_problem = None
    try:
        agent = YanAgent(cfg, OBS_DIM, N_CLASSES)
        agent.load_row(row, OBS_DIM, N_CLASSES)
        torch.testing.assert_close(
            agent.forward_last(x[0]), forward_last(cfg, params, x)[0], atol=1e-5, rtol=1e-4
        )
        st_, ast = init_state(cfg, 1, 2), agent.init_state(2)
        for t in range(8):
            logits, st_ = forward_step(cfg, params, x[:, :, t], st_)
            alog, ast = agent.step(x[0, :, t], ast)
            torch.testing.assert_close(alog, logits[0], atol=1e-5, rtol=1e-4)
    except Exception as e:  # the model moved on: fall back to FunctionalAgent, and say so
        agent_problem = f"YanAgent no longer matches the model ({type(e).__name__}: {e})"[:200]
    x = x[:, :, :8]  # chunkwise below: 2 whole chunks of 4, compared with the state after 8 steps

    if not hasattr(yan.model, "forward_chunkwise"):
        return agent_problem, "agents.yan.model has no forward_chunkwise"
    try:
        logits, cst = yan.model.forward_chunkwise(cfg, params, x, state=None, chunk=4)
        torch.testing.assert_close(logits, forward_parallel(cfg, params, x), atol=1e-4, rtol=1e-4)
        for (cv, ch), (sv, sh) in zip(cst, st, strict=True):
            torch.testing.assert_close(cv, sv, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(ch, sh, atol=1e-4, rtol=1e-4)
    except Exception as e:  # the other half of the model may be mid-edit: say so, fall back
        return agent_problem, f"forward_chunkwise failed its check ({type(e).__name__}: {e})"[:200]
    return agent_problem, None


# ----------------------------------------------------------------------------------------------
# Figure 1: recurrent decoding


@dataclass
class DecodeRow:
    streams: int
    context: int
    tf: float | None  # tokens/s; None = not run
    tf_n: int
    mcsd_b: float
    mcsd_b_n: int
    mcsd_k: float | None  # K agents, one stream each (swarm case)
    prefill: str


@torch.no_grad()
def mcsd_prefill(
    cfg: ModelConfig, params: dict[str, Tensor], contexts: tuple[int, ...], chunkwise: bool
) -> dict[int, tuple[State, str]]:
    """One stream's recurrent state (K = B = 1) after each context length, from one pass over
    the longest context with a snapshot at every length. Chunkwise if available; otherwise by
    stepping the recurrence, stopped after STEP_PREFILL_S (an MCSD state has the same size,
    and a step the same cost, after any number of tokens; the note says what the state saw)."""
    g = torch.Generator().manual_seed(1)
    state, seen, out = init_state(cfg, 1, 1), 0, {}
    t_start = time.perf_counter()
    for c in sorted(contexts):
        x = torch.randn(1, 1, c - seen, OBS_DIM, generator=g)  # (K, B, T_seg, obs)
        if chunkwise:
            _, state = yan.model.forward_chunkwise(cfg, params, x, state=state, chunk=64)
            seen = c
        else:
            for t in range(x.shape[2]):
                if time.perf_counter() - t_start > STEP_PREFILL_S:
                    break
                _, state = forward_step(cfg, params, x[:, :, t], state)
                seen += 1
        note = f"{'chunkwise' if chunkwise else 'stepped'} {seen:,}"
        out[c] = (state, note + ("" if seen == c else f" of {c:,}") + " tokens")
    log(f"  MCSD prefill, 1 stream to {max(contexts):,}: {time.perf_counter() - t_start:.1f} s")
    return out


def copy_state(state: State, K: int, B: int) -> State:
    """A (K=1, B=1) state copied to K agents x B streams (every stream saw the same context)."""
    return [
        (v.expand(K, -1, -1, -1, B).contiguous(), h.expand(K, -1, -1, B).contiguous())
        for v, h in state
    ]


def fill_cache(cache: list[tuple[Tensor, Tensor]], c: int, g: torch.Generator) -> None:
    """Random keys/values at positions [0, c): one random block of FILL_BLOCK positions, tiled
    (writing 8 GB of fresh normals would take longer than the benchmark; a decode step's cost
    depends on the cache length only, not on the values)."""
    B, nh, _, hs = cache[0][0].shape
    k_block, v_block = torch.randn(2, B, nh, FILL_BLOCK, hs, generator=g)
    for k_c, v_c in cache:
        for t0 in range(0, c, FILL_BLOCK):
            n = min(FILL_BLOCK, c - t0)
            k_c[:, :, t0 : t0 + n] = k_block[:, :, :n]
            v_c[:, :, t0 : t0 + n] = v_block[:, :, :n]


@torch.no_grad()
def bench_decode(s: Settings, chunkwise: bool) -> tuple[list[DecodeRow], dict, dict]:
    tf = Transformer(TF).eval()
    specs = param_specs(BIG, OBS_DIM, N_CLASSES)
    row = init_flat(BIG, OBS_DIM, N_CLASSES, seed=0)
    params_1 = unflatten(row[None], specs)  # one agent
    params_k = unflatten(row.expand(STREAMS, -1).clone(), specs)  # swarm: K agents, own rows
    sizes = {"mcsd_params": num_params(specs), "tf_params": sum(p.numel() for p in tf.parameters())}
    g = torch.Generator().manual_seed(2)
    log("decode: MCSD prefill")
    prefilled = mcsd_prefill(BIG, params_1, s.contexts, chunkwise)
    rows: list[DecodeRow] = []
    memory = {}
    for streams in (1, STREAMS):
        for c in s.contexts:
            x = torch.randn(s.new_tokens, streams, OBS_DIM, generator=g)  # (N, streams, obs)
            state_b = copy_state(prefilled[c][0], 1, streams)  # one model, B = streams

            def run_b(n: int, st0: State = state_b, x: Tensor = x) -> None:
                st = st0
                for t in range(n):
                    _, st = forward_step(BIG, params_1, x[t][None], st)

            mb, mb_n = decode_rate(run_b, streams, s)
            mk = None
            if streams > 1:  # the swarm case: K agents with their own weights, 1 stream each
                state_k = copy_state(prefilled[c][0], streams, 1)

                def run_k(n: int, st0: State = state_k, x: Tensor = x) -> None:
                    st = st0
                    for t in range(n):
                        _, st = forward_step(BIG, params_k, x[t][:, None], st)

                mk, _ = decode_rate(run_k, streams, s)
            memory[c] = (state_bytes(state_b) // streams, kv_bytes(TF, 1, c))
            tfr, tf_n = None, 0
            if kv_bytes(TF, streams, c + s.new_tokens) <= s.kv_cap_gb * 2**30:
                cache = tf.init_cache(streams, c + s.new_tokens)
                fill_cache(cache, c, g)

                def run_tf(n: int, cache: list = cache, c: int = c, x: Tensor = x) -> None:
                    for t in range(n):
                        tf.decode_step(x[t], cache, c + t)

                tfr, tf_n = decode_rate(run_tf, streams, s)
                del cache
            rows.append(DecodeRow(streams, c, tfr, tf_n, mb, mb_n, mk, prefilled[c][1]))
            log(
                f"  streams={streams} c={c}: Transformer {fmt_rate(tfr)} tok/s (N={tf_n}), "
                f"MCSD one model {fmt_rate(mb)} (N={mb_n})"
                + (f", MCSD swarm {fmt_rate(mk)}" if mk else "")
            )
    return rows, memory, sizes


# ----------------------------------------------------------------------------------------------
# Figure 2: training tokens/s at a long context


def bench_train(s: Settings, chunkwise: bool) -> list[tuple[str, float]]:
    B, T = s.train_batch, s.train_context
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B, T, OBS_DIM, generator=g)
    y = torch.randint(0, N_CLASSES, (B, T), generator=g)
    out = []

    tf = Transformer(TF)
    opt = torch.optim.Adam(tf.parameters(), lr=3e-4, fused=True)

    def tf_step() -> None:
        loss = F.cross_entropy(tf(x).reshape(-1, N_CLASSES), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    log(f"train: Transformer, {B} x {T} tokens per step")
    out.append(("Transformer (SDPA causal attention)", B * T / best_time(tf_step, s.repeats)))

    specs = param_specs(BIG, OBS_DIM, N_CLASSES)
    flat = nn.Parameter(init_flat(BIG, OBS_DIM, N_CLASSES, seed=0)[None].clone())  # (1, P)
    mopt = torch.optim.Adam([flat], lr=3e-4, fused=True)

    def mcsd_step(form: str) -> Callable[[], None]:
        def step() -> None:
            params = unflatten(flat, specs)
            if form == "chunkwise":
                logits, _ = yan.model.forward_chunkwise(BIG, params, x[None], chunk=64)
            else:
                logits = forward_parallel(BIG, params, x[None])
            loss = F.cross_entropy(logits.reshape(-1, N_CLASSES), y.reshape(-1))
            mopt.zero_grad(set_to_none=True)
            loss.backward()
            mopt.step()

        return step

    forms = (["chunkwise"] if chunkwise else []) + ["parallel"]
    for form in forms:
        label = {
            "chunkwise": "MCSD forward_chunkwise (chunk 64)",
            "parallel": "MCSD forward_parallel (T x T Toeplitz mixing)",
        }[form]
        log(f"train: {label}")
        try:
            out.append((label, B * T / best_time(mcsd_step(form), s.repeats)))
        except Exception as e:  # e.g. a chunkwise form without autograd support
            log(f"  {label} failed: {type(e).__name__}: {e}")
            out.append((f"{label}: failed ({type(e).__name__})", float("nan")))
    return out


# ----------------------------------------------------------------------------------------------
# Figure 3: population, stacked vs a loop over modules


@dataclass
class PopRow:
    K: int
    act: tuple[float, int]  # best agent-steps/s, at threads
    act_loop: tuple[float, int, int]  # agent-steps/s, threads, K actually run (< K: extrapolated)
    upd: tuple[float, int]
    upd_loop: tuple[float, int, int]
    act_gflops: float
    upd_gflops: float
    act_peak: float  # fraction of the peak at the threads used
    upd_peak: float


class AgentLoop:
    """The baseline: K separate YanAgent modules, each with its own fused Adam and recurrent
    state, called one after the other."""

    def __init__(self, cfg: ModelConfig, learn: LearnConfig, agent_cls: type[nn.Module]) -> None:
        self.cfg, self.lr, self.agent_cls = cfg, learn.lr, agent_cls
        self.row = init_flat(cfg, OBS_DIM, N_CLASSES, seed=0)
        self.agents: list = []
        self.opts: list[torch.optim.Optimizer] = []
        self.states: list[list[tuple[Tensor, Tensor]]] = []

    def grow(self, K: int) -> None:
        while len(self.agents) < K:
            a = self.agent_cls(self.cfg, OBS_DIM, N_CLASSES)
            a.load_row(self.row, OBS_DIM, N_CLASSES)
            self.agents.append(a)
            self.opts.append(torch.optim.Adam(a.parameters(), lr=self.lr, fused=True))
            self.states.append(a.init_state(1))

    @torch.no_grad()
    def act(self, x_t: Tensor) -> None:
        """x_t (K, obs_dim): one recurrent step of each of the first K agents."""
        for k in range(x_t.shape[0]):
            _, self.states[k] = self.agents[k].step(x_t[k : k + 1], self.states[k])

    def update(self, x: Tensor, y: Tensor) -> None:
        """x (K, B, T, obs_dim), y (K, B): one training step of each of the first K agents."""
        for k in range(x.shape[0]):
            loss = F.cross_entropy(self.agents[k].forward_last(x[k]), y[k])
            self.opts[k].zero_grad(set_to_none=True)
            loss.backward()
            self.opts[k].step()


def time_loop(
    what: str, s: Settings, agent_cls: type[nn.Module], xs_act: Tensor, xs: Tensor, ys: Tensor
) -> dict[int, tuple[float, int]]:
    """Seconds of one pass of the loop baseline per K, and the K it was really run at: K is
    run only while the pass is predicted under s.loop_budget_s; beyond that the per-agent cost
    of the largest K run is extrapolated linearly."""
    loop = AgentLoop(ModelConfig(), LearnConfig(), agent_cls)
    out: dict[int, tuple[float, int]] = {}
    per_agent, ran = math.inf, 0
    for K in s.pop_ks:
        if ran and per_agent * K > s.loop_budget_s:
            out[K] = (per_agent * K, ran)  # linear extrapolation
            continue
        loop.grow(K)
        if what == "act":
            t = best_time(lambda K=K: loop.act(xs_act[:K]), s.repeats)
        else:
            t = best_time(lambda K=K: loop.update(xs[:K], ys[:K]), s.repeats)
        out[K], per_agent, ran = (t, K), t / K, K
        log(f"population loop {what} K={K}: {K / t:,.0f} agent-{what}s/s")
    return out


def bench_population(
    s: Settings, peaks: dict[int, float], agent_cls: type[nn.Module]
) -> list[PopRow]:
    cfg, learn = ModelConfig(), LearnConfig()
    B, T = learn.batch, learn.window
    g = torch.Generator().manual_seed(4)
    K_max = max(s.pop_ks)
    xs_act = torch.randn(K_max, OBS_DIM, generator=g)
    xs = torch.randn(K_max, B, T, OBS_DIM, generator=g)
    ys = torch.randint(0, N_CLASSES, (K_max, B), generator=g)
    res: dict[tuple[str, int, int], float] = {}  # (what, threads, K) -> per-call seconds
    loop_ran: dict[tuple[str, int, int], int] = {}  # (what, threads, K) -> K the loop ran

    for threads in s.pop_threads:
        torch.set_num_threads(threads)
        for K in s.pop_ks:
            pop = Population(cfg, learn, K, OBS_DIM, N_CLASSES, seed=0)
            x_t, x, y, m = xs_act[:K], xs[:K], ys[:K], torch.ones(K, B, dtype=torch.bool)
            res["act", threads, K] = best_time(lambda pop=pop, x_t=x_t: pop.step(x_t), s.repeats)
            res["upd", threads, K] = best_time(
                lambda pop=pop, x=x, y=y, m=m: pop.train_step(x, y, m), s.repeats
            )
            log(
                f"population stacked K={K} threads={threads}: "
                f"{K / res['act', threads, K]:,.0f} agent-steps/s, "
                f"{K / res['upd', threads, K]:,.0f} agent-updates/s"
            )
        for what in ("act", "upd"):
            for K, (t, ran) in time_loop(what, s, agent_cls, xs_act, xs, ys).items():
                res["loop_" + what, threads, K] = t
                loop_ran[what, threads, K] = ran

    rows = []
    step_f = yan_step_flops(cfg, OBS_DIM, N_CLASSES)
    upd_f = yan_train_flops(cfg, OBS_DIM, N_CLASSES, B, T)
    for K in s.pop_ks:

        def best(what: str, K: int = K) -> tuple[float, int]:
            th = min(s.pop_threads, key=lambda th: res[what, th, K])
            return K / res[what, th, K], th

        def best_loop(what: str, K: int = K) -> tuple[float, int, int]:
            rate, th = best("loop_" + what)
            return rate, th, loop_ran[what, th, K]

        act, upd = best("act"), best("upd")
        act_gf = act[0] * step_f / 1e9
        upd_gf = upd[0] * upd_f / 1e9
        rows.append(
            PopRow(
                K,
                act,
                best_loop("act"),
                upd,
                best_loop("upd"),
                act_gf,
                upd_gf,
                act_gf / peaks[act[1]],
                upd_gf / peaks[upd[1]],
            )  # fmt: skip
        )
    return rows


def bench_threads(s: Settings) -> list[tuple[str, float, float]]:
    """Decode at 1 vs 2 threads, 64 streams, 1k context (cheap; the population figure measures
    both thread counts itself)."""
    tf = Transformer(TF).eval()
    params = unflatten(
        init_flat(BIG, OBS_DIM, N_CLASSES, seed=0)[None], param_specs(BIG, OBS_DIM, N_CLASSES)
    )
    c = 1024
    cache = tf.init_cache(STREAMS, c + s.new_tokens)
    fill_cache(cache, c, torch.Generator().manual_seed(5))
    x = torch.randn(s.new_tokens, STREAMS, OBS_DIM)
    st0 = init_state(BIG, 1, STREAMS)

    @torch.no_grad()
    def run_tf(n: int) -> None:
        for t in range(n):
            tf.decode_step(x[t], cache, c + t)

    @torch.no_grad()
    def run_m(n: int) -> None:
        st = st0
        for t in range(n):
            _, st = forward_step(BIG, params, x[t][None], st)

    out = []
    for label, run in (
        ("Transformer + KV cache", run_tf),
        (f"MCSD recurrent (B={STREAMS})", run_m),
    ):
        rates = []
        for th in (1, 2):
            torch.set_num_threads(th)
            rates.append(decode_rate(run, STREAMS, s)[0])
        out.append((label, rates[0], rates[1]))
        log(f"threads: {label}: 1 thread {rates[0]:,.0f}, 2 threads {rates[1]:,.0f} tok/s")
    return out


@torch.no_grad()
def bench_gemv(s: Settings) -> tuple[float, float]:
    """Weight bytes/s of the swarm decode's batched matrix-vector products, at its largest
    weight shape (K = 64 agents' FFN w1, (K, 2D, D)): bmm(w, x) with w stored (out, in) as the
    model stores it, vs bmm(x^T, w^T) with the weight stored (in, out). Explains figure 1's
    swarm column."""
    g = torch.Generator().manual_seed(6)
    w = torch.randn(STREAMS, 2 * BIG.d_model, BIG.d_model, generator=g)  # (K, out, in)
    w_t = w.transpose(1, 2).contiguous()  # (K, in, out)
    x = torch.randn(STREAMS, BIG.d_model, 1, generator=g)  # (K, in, 1)
    nbytes = w.numel() * FP32
    a = nbytes / best_time(lambda: torch.bmm(w, x), s.repeats + 2)
    b = nbytes / best_time(lambda: torch.bmm(x.transpose(1, 2), w_t), s.repeats + 2)
    log(f"gemv: bmm(w, x) {a / 1e9:.1f} GB/s, bmm(x^T, w^T) {b / 1e9:.1f} GB/s")
    return a, b


# ----------------------------------------------------------------------------------------------
# Report


def fmt_bytes(n: float) -> str:
    for unit, div in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n:.0f} B"


def fmt_rate(r: float | None) -> str:
    if r is None:
        return "not run"
    if r != r:  # nan
        return "failed"
    return f"{r:,.0f}" if r >= 100 else f"{r:.1f}"


def verdict(ratio: float, target: float) -> str:
    if ratio >= target:
        return f"**met** ({ratio / target:.1f}x the target)"
    return f"**missed** (reaches {ratio / target:.0%} of the target)"


def report(
    args, s: Settings, info: dict, peaks, notes_in, dec, mem, sizes, train, pop, threads, gemv
) -> str:
    agent_note, chunk_note = notes_in
    L: list[str] = []
    A = L.append
    cmd = ".venv/bin/python bench/model_bench.py" + (" --quick" if args.quick else "") + " --write"
    A(SECTION)
    A("")
    A(f"Command: `{cmd}` · {info['date']} · {info['wall']:.0f} s wall")
    A("")
    A(
        f"Machine: {info['cores']} cores ({info['cpu']}), torch {info['torch']}, Python "
        f"{info['python']}. Threads (`torch.set_num_threads`): {args.threads} for figures 1-2 "
        "(other work shares the 2 cores, and a 2-thread team then waits on its descheduled "
        "thread: see the threads table); figure 3 measures every row at "
        f"{' and '.join(map(str, s.pop_threads))} thread{'s' if len(s.pop_threads) > 1 else ''}"
        " and shows the faster. sgemm peak "
        "(`../shared/tools/peak_flops.py`, this run): "
        f"{peaks[1]:.0f} GFLOP/s at 1 thread, {peaks[2]:.0f} GFLOP/s at 2."
    )
    A("")
    A(
        f"Equal size for figures 1-2: d_model {BIG.d_model}, {BIG.layers} layers, obs_dim "
        f"{OBS_DIM} in, {N_CLASSES} logits out, fp32. MCSD: {BIG.channels} channels, slope "
        f"window {BIG.slope_window}, FFN {BIG.ffn_mult}x, {sizes['mcsd_params']:,} parameters. "
        f"Transformer (in the script): pre-norm, {TF_HEADS} heads, MLP hidden "
        f"{TF_MLP_HIDDEN} (1.5x, so both blocks hold 7 d^2 weights), sinusoidal positions, "
        f"{sizes['tf_params']:,} parameters. Figure 3 uses the agents' default `ModelConfig` "
        f"(d_model 32, 2 layers, {num_params(param_specs(ModelConfig(), OBS_DIM, N_CLASSES)):,} "
        "parameters per agent)."
    )
    A("")
    if chunk_note:
        A(f"MCSD prefill and training: {chunk_note}, so the MCSD state is prefilled by stepping "
          "(time-capped; a state has the same size and a step the same cost after any number "
          "of tokens) and training uses `forward_parallel`.")  # fmt: skip
        A("")

    # targets
    by = {(r.streams, r.context): r for r in dec}
    A("### Targets")
    A("")
    A("| target | measured | verdict |")
    A("| --- | --- | --- |")
    r4 = by.get((STREAMS, 4096))
    if r4 and r4.tf:
        ratio = r4.mcsd_b / r4.tf
        A(
            f"| MCSD recurrent decode >= 10x Transformer+KV tokens/s, {STREAMS} streams, 4k "
            f"context | {ratio:.0f}x (one model, B={STREAMS}) | {verdict(ratio, 10)} |"
        )
        if r4.mcsd_k:
            rk = r4.mcsd_k / r4.tf
            A(
                f"| (not the target case) same, swarm: {STREAMS} agents with their own weights, "
                f"1 stream each | {rk:.1f}x | {verdict(rk, 10)} |"
            )
    else:
        A("| MCSD decode >= 10x at 64 streams, 4k | not measured (--quick or KV cap) | - |")
    big = next((p for p in pop if p.K == 1024), None)
    if big:
        for name, st, lp in (
            ("agent-steps/s", big.act, big.act_loop),
            ("agent-updates/s", big.upd, big.upd_loop),
        ):
            ratio = st[0] / lp[0]
            A(
                f"| stacked population >= 5x a loop over modules, K = 1024, {name} | "
                f"{ratio:.1f}x | {verdict(ratio, 5)} |"
            )
    else:
        A("| stacked >= 5x loop at K = 1024 | not measured (--quick) | - |")
    A("")

    # figure 1
    A("### 1. Recurrent decoding: tokens/s after a context of c tokens")
    A("")
    A(
        f"tokens/s = streams x N / (time to decode N new tokens), best of up to {s.repeats}; "
        f"N = {s.new_tokens}, fewer (not below {s.min_new_tokens}) where one repeat would "
        f"exceed {s.decode_budget_s:g} s. Prefill not timed. A decode step's cost depends on "
        "the size of what it reads, not on the values, so: the MCSD state is one stream's real "
        "prefill of c tokens (last column), copied to every stream; the Transformer's KV cache "
        f"holds random keys/values (a random {FILL_BLOCK}-position block, tiled; its KV decode "
        "is checked against its parallel forward before timing). MCSD 'one model' = one agent "
        f"decoding the streams as a batch (B = streams); 'swarm' = K = {STREAMS} agents with "
        f"their own weights, one stream each, so a step reads {STREAMS}x the weights."
    )
    A("")
    A(
        "| streams | context | Transformer + KV | MCSD one model | MCSD / Transformer "
        "| MCSD swarm (K agents) | swarm / Transformer | MCSD state: prefill |"
    )
    A("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in dec:
        ratio = f"{r.mcsd_b / r.tf:.1f}x" if r.tf else "-"
        kr = f"{r.mcsd_k / r.tf:.1f}x" if (r.tf and r.mcsd_k) else "-"
        tfs = fmt_rate(r.tf) if r.tf is not None else (
            f"not run (KV {fmt_bytes(kv_bytes(TF, r.streams, r.context))} > "
            f"{s.kv_cap_gb:g} GB cap)"
        )  # fmt: skip
        A(
            f"| {r.streams} | {r.context:,} | {tfs} | {fmt_rate(r.mcsd_b)} | {ratio} | "
            f"{fmt_rate(r.mcsd_k) if r.mcsd_k else '-'} | {kr} | {r.prefill} |"
        )
    A("")
    A("Memory per stream (from tensor sizes, fp32): MCSD recurrent state vs KV cache.")
    A("")
    A(
        f"| context | MCSD state | KV cache | KV / MCSD | {STREAMS} streams: MCSD "
        f"| {STREAMS} streams: KV |"
    )
    A("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for c, (ms, kv) in mem.items():
        A(
            f"| {c:,} | {fmt_bytes(ms)} | {fmt_bytes(kv)} | {kv / ms:,.0f}x | "
            f"{fmt_bytes(ms * STREAMS)} | {fmt_bytes(kv * STREAMS)} |"
        )
    A("")

    # figure 2
    A(
        f"### 2. Training: tokens/s at a {s.train_context:,}-token context "
        f"(batch {s.train_batch}, forward + backward + Adam)"
    )
    A("")
    A(
        f"Best of {s.repeats} steps, loss on every token, {args.threads} "
        f"thread{'s' if args.threads > 1 else ''}, Adam (fused) "
        "for both."
    )
    A("")
    A("| model | tokens/s | vs Transformer |")
    A("| --- | ---: | ---: |")
    tf_rate = train[0][1]
    for label, rate in train:
        A(f"| {label} | {fmt_rate(rate)} | {rate / tf_rate:.2f}x |")
    A("")

    # figure 3
    A("### 3. Population: stacked (K, P) agents vs a Python loop over K modules")
    A("")
    cfg = ModelConfig()
    lc = LearnConfig()
    A(
        f"Act = one recurrent step per agent (`Population.step`, B = 1); update = one training "
        f"step per agent on batch {lc.batch} x window {lc.window} (`Population.train_step`: "
        "forward_last, cross-entropy, backward, per-agent fused Adam). The loop runs K "
        + (
            "separate `YanAgent` nn.Modules (the same math written as a plain per-agent module "
            "with nn.Linear layers, checked against the stacked model), each "
            if agent_note is None
            else f"separate `FunctionalAgent` modules (the model's own functions at K = 1; "
            f"{agent_note}), each "
        )
        + "with its own fused Adam; where one loop pass would take over "
        f"{s.loop_budget_s:g} s it is run only up to a smaller K (shown as 'ran K=') and its "
        "per-agent cost there is extrapolated linearly (generous to the loop, whose cost only "
        "grows with K). "
        "(tN) = thread count of the faster measurement. GFLOP/s count the model's matmuls "
        f"analytically ({yan_step_flops(cfg, OBS_DIM, N_CLASSES):,} FLOPs per act step, "
        f"{yan_train_flops(cfg, OBS_DIM, N_CLASSES, lc.batch, lc.window):,} per update: 3x the "
        "forward); % of peak is against the sgemm peak at the same thread count."
    )
    A("")
    A(
        "| K | act: stacked | act: loop | ratio | update: stacked | update: loop | ratio "
        "| act GFLOP/s (% peak) | update GFLOP/s (% peak) |"
    )
    A("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")

    def loop_cell(v: tuple[float, int, int], K: int) -> str:
        ext = "" if v[2] >= K else f", ran K={v[2]}"
        return f"{fmt_rate(v[0])} (t{v[1]}{ext})"

    for p in pop:
        A(
            f"| {p.K:,} | {fmt_rate(p.act[0])} (t{p.act[1]}) | {loop_cell(p.act_loop, p.K)} | "
            f"{p.act[0] / p.act_loop[0]:.1f}x | {fmt_rate(p.upd[0])} (t{p.upd[1]}) | "
            f"{loop_cell(p.upd_loop, p.K)} | {p.upd[0] / p.upd_loop[0]:.1f}x | "
            f"{p.act_gflops:.1f} ({p.act_peak:.1%}) | {p.upd_gflops:.1f} ({p.upd_peak:.1%}) |"
        )
    A("")

    A(f"### Threads: decode tokens/s at 1 vs 2 threads ({STREAMS} streams, 1k context)")
    A("")
    A("| model | 1 thread | 2 threads | 2 / 1 |")
    A("| --- | ---: | ---: | ---: |")
    for label, r1, r2 in threads:
        A(f"| {label} | {fmt_rate(r1)} | {fmt_rate(r2)} | {r2 / r1:.2f}x |")
    A("")

    A(f"### Why the swarm decode is slow: batched matrix-vector products ({args.threads} thread)")
    A("")
    A(
        f"Weight bytes read per second by one bmm over K = {STREAMS} agents' ({2 * BIG.d_model} "
        f"x {BIG.d_model}) weights and one input vector each, best of {s.repeats + 2}."
    )
    A("")
    A("| layout | GB/s | vs the model's layout |")
    A("| --- | ---: | ---: |")
    A(f"| `bmm(w, x)`, w (K, out, in) as the model stores it | {gemv[0] / 1e9:.1f} | 1.00x |")
    A(
        f"| `bmm(x^T, w^T)`, weight stored (K, in, out) | {gemv[1] / 1e9:.1f} | "
        f"{gemv[1] / gemv[0]:.2f}x |"
    )
    A("")

    notes = observations(dec, train, pop, gemv, sizes)
    if notes:
        A("### Observations")
        A("")
        L.extend(f"- {n}" for n in notes)
        A("")
    return "\n".join(L)


def observations(dec: list[DecodeRow], train, pop: list[PopRow], gemv, sizes) -> list[str]:
    """Facts a reader should not have to dig out of the tables (generated from the numbers)."""
    out = []
    r4 = next((r for r in dec if r.streams == STREAMS and r.context == 4096 and r.tf), None)
    if r4 and r4.mcsd_k:
        w_swarm = STREAMS * sizes["mcsd_params"] * FP32
        tf_read = kv_bytes(TF, STREAMS, 4096) + sizes["tf_params"] * FP32
        out.append(
            f"The swarm decode ({STREAMS} agents, one stream each) reads {fmt_bytes(w_swarm)} "
            f"of weights per step, the Transformer at 4k {fmt_bytes(tf_read)} of KV cache and "
            f"weights: at equal bandwidth the swarm could be at most {tf_read / w_swarm:.1f}x "
            f"faster at 4k, short of 10x by construction (the bytes ratio passes 10x beyond "
            f"~{10 * w_swarm / kv_bytes(TF, STREAMS, 1):,.0f} tokens of context). It measures "
            f"{r4.mcsd_k / r4.tf:.1f}x because its batched matrix-vector products run at "
            f"{gemv[0] / 1e9:.1f} GB/s in the model's (out, in) layout, {gemv[1] / gemv[0]:.1f}x "
            "below the (in, out) layout (last table): a lead for agents/yan/model.py."
        )
    slow = [r for r in dec if r.streams == 1 and r.tf and r.mcsd_b < 0.9 * r.tf]
    if slow:
        cs = ", ".join(f"{r.context:,}" for r in slow)
        out.append(
            f"At 1 stream the MCSD decodes slower than the Transformer at context {cs}: at "
            "batch 1 both steps are bound by per-op Python/dispatch overhead, not by FLOPs or "
            "bytes (the MCSD step runs more, smaller ops, and its I/O layer does per-call "
            "bookkeeping), so this compares op counts rather than architectures; not tuned here."
        )
    for streams in (1, STREAMS):
        m = [r.mcsd_b for r in dec if r.streams == streams]
        t = [r.tf for r in dec if r.streams == streams and r.tf]
        if len(t) > 1:
            out.append(
                f"{streams} stream{'s' if streams > 1 else ''}, context "
                f"{min(r.context for r in dec):,} to "
                f"{max(r.context for r in dec if r.tf):,}: the Transformer's tokens/s fall "
                f"{t[0] / t[-1]:.1f}x as its KV cache grows; the MCSD's vary "
                f"{max(m) / min(m):.1f}x (max / min) with no trend to expect: its step does not "
                "depend on the context, so that spread is this run's timing noise."
            )
    if len(train) > 2:
        out.append(
            f"Training: chunkwise {train[1][1] / train[0][1]:.2f}x and parallel "
            f"{train[2][1] / train[0][1]:.2f}x the Transformer's tokens/s at this context. The "
            "parallel form's T x T Toeplitz mixing matmul grows as T^2 like attention (and "
            "computes the masked half, which flash attention skips); the chunkwise form grows "
            "as T, so the gap between the two widens with the context."
        )
    if pop:
        p1 = pop[0]
        if p1.act[0] < 0.9 * p1.act_loop[0]:
            out.append(
                f"At K = {p1.K} the stacked act step is slower than the plain module "
                f"({p1.act[0] / p1.act_loop[0]:.2f}x): the stacked form pays for its "
                "bookkeeping (unflatten, bmm over K) without any batching to gain."
            )
    return out


def start_ray(scenario: Scenario, object_store_mb: int | None = None, num_cpus: int = 2) -> None:
    """The one embedded Ray a benchmark's scenario runs share (the Runner reuses it), started as
    `swarm run` starts it (swarm.runner.start_ray: a new local instance, the repository on the
    workers' path, the scenario's GCS task-event cap), with `num_cpus` CPUs, no dashboard and,
    if given, `object_store_mb` of object store."""
    from swarm.runner import start_ray as start_embedded

    ray_cfg = scenario.ray.model_copy(
        update={
            "num_cpus": num_cpus,
            "dashboard": False,
            "object_store_mb": object_store_mb or scenario.ray.object_store_mb,
        }
    )
    start_embedded(scenario.model_copy(update={"ray": ray_cfg}), None)


def write_section(body: str, section: str = SECTION) -> None:
    """Replace a script's `##` section of BENCHMARKS.md (from the `section` heading up to the
    next `## `), or append it. Each script owns its own section; they all write through here."""
    header = (
        "# Benchmarks\n\n"
        "Measured on this machine by the scripts in `bench/` (see `bench/README.md`). Each `##` "
        "section belongs to one script, which rewrites only that section when run with "
        "`--write`. Other work often shares the cores, so absolute numbers are noisy; the "
        "claims are the ratios, each measured within one run (house rule 6).\n"
    )
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else header
    lines = text.splitlines()
    if section in lines:
        start = lines.index(section)
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        lines[start:end] = body.rstrip("\n").splitlines() + ([""] if end < len(lines) else [])
    else:
        lines += [""] + body.rstrip("\n").splitlines()
    BENCHMARKS_MD.write_text("\n".join(lines).rstrip("\n") + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, every code path (~1 min)")
    ap.add_argument("--write", action="store_true", help="rewrite this section of BENCHMARKS.md")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for figures 1-2 (default 1: with other work on the 2 cores a "
        "2-thread team waits on its descheduled thread; the threads table compares)",
    )
    args = ap.parse_args()
    s = QUICK if args.quick else FULL
    info = machine() | {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}

    torch.set_num_threads(1)
    agent_note, chunk_note = check_baselines()
    chunkwise = chunk_note is None
    log(f"baselines checked; agent: {agent_note or 'YanAgent ok'}; chunkwise: {chunk_note or 'ok'}")
    log("peak: ../shared/tools/peak_flops.py at 1 and 2 threads")
    peaks = {th: peak_gflops(th) for th in (1, 2)}
    log(f"peak: {peaks[1]:.0f} GFLOP/s (1 thread), {peaks[2]:.0f} GFLOP/s (2 threads)")

    torch.set_num_threads(args.threads)
    dec, mem, sizes = bench_decode(s, chunkwise)
    torch.set_num_threads(args.threads)
    train = bench_train(s, chunkwise)
    agent_cls = YanAgent if agent_note is None else FunctionalAgent
    pop = bench_population(s, peaks, agent_cls)
    thr = bench_threads(s)
    torch.set_num_threads(args.threads)
    gemv = bench_gemv(s)
    info["wall"] = time.perf_counter() - _T0

    body = report(
        args, s, info, peaks, (agent_note, chunk_note), dec, mem, sizes, train, pop, thr, gemv
    )
    print(body)
    if args.write:
        write_section(body)
        log(f"wrote {BENCHMARKS_MD.relative_to(REPO)}")


if __name__ == "__main__":
    main()
