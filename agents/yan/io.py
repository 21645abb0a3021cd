"""Multimodal inputs and heads of the Yan model, in stacked-population form.

Every parameter carries a leading agent dimension K (one row of the flat (K, P) tensor per agent,
see `agents.yan.params`); one call serves K agents, each with its own weights. No Python
loop runs over agents: per-agent maps are bmm / gather over the K dim.

The token stream. An observation at time step t is turned into `tokens_per_step(inp)` tokens,
always in this order (modalities absent from the config are skipped):

    [image patch (0, 0), (0, 1), ..., (gh-1, gw-1)  (row-major over the patch grid),
     vector token,
     discrete token]

so step t's tokens sit at stream positions t*S .. t*S + S - 1 (S = tokens per step) and the
stream has L = T*S tokens. Heads read the hidden state at the LAST token of each step,
position t*S + S - 1 (`read_positions`): with a causal backbone that token has seen the whole
observation of step t and nothing later.

Encoders (per agent, no biases: the modality embedding added to every token of a modality is
that modality's bias, a separate bias would be the same parameter twice):
  - image (K, B, T, H, W, C) in [0, 1] -> gh*gw non-overlapping p x p patches, each flattened
    (row, col, channel) and mapped by a per-agent linear to D, plus a learned per-agent
    patch-position embedding (ViT, Dosovitskiy et al. 2021, eq. 1);
  - vector (K, B, T, vector_dim) -> one token by a per-agent linear;
  - tokens (K, B, T) int64 in [0, vocab) -> one token from a per-agent embedding table;
  - plus a learned per-agent modality embedding, one row per present modality.

Heads (read hidden states h (K, B, T, D) taken at the read positions; linear, per agent):
  - classification: logits (K, B, T, n_classes);
  - action: policy logits (K, B, T, n_actions) and a value estimate (K, B, T);
  - next step: from step t predict step t+1's observation: the vector by regression (MSE),
    the discrete token by classification over the vocab (cross-entropy), and the image by its
    mean colour per patch (MSE on gh*gw*C numbers). Mean patch colours are our cheap choice:
    a fixed, non-learned target (a learned target such as the next patch embedding can
    collapse to a constant, BYOL/JEPA need extra machinery against that), gh*gw*C outputs
    instead of H*W*C, and still a spatial signal (where the bright / red things are).

Shapes: K agents, B sequences per agent, T time steps, S tokens per step, L = T*S stream
tokens, D = d_model, H x W x C image, p patch side, gh = H/p, gw = W/p, Np = gh*gw patches.
Weights are stored (out, in), as torch.nn.Linear; embedding tables (rows, D), as nn.Embedding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor

from agents.yan.params import EmbedParams, HeadParams, Spec, as_embed, as_head, need
from swarm._config import Section

Embed = EmbedParams | Mapping[str, Tensor]
"""The encoders' parameters: their typed views, or the named views of `params.unflatten`."""
Heads = HeadParams | Mapping[str, Tensor]
"""The heads' parameters: their typed views, or the named views of `params.unflatten`."""

MODALITIES = ("image", "vector", "tokens")
"""Observation keys, in stream order within a time step."""

IO_PREFIXES = ("enc.", "head.")
"""Every parameter this module defines starts with one of these (see `is_io_param`)."""

# Initialisation scales (see `init_io_param`).
EMBED_STD = 0.02  # position / modality embeddings: GPT-2's wpe init (Radford et al. 2019)
POLICY_SCALE = 0.01  # last policy layer 100x smaller, near-uniform initial policy
# (Andrychowicz et al. 2021, "What Matters in On-Policy RL", decision C57)


# ----------------------------------------------------------------------------------------------
# Config (to move to agents/config.py)


class ImageConfig(Section):
    """A small camera image per step, split into non-overlapping square patches."""

    height: int = Field(ge=1, le=1024)
    """H, pixels."""
    width: int = Field(ge=1, le=1024)
    """W, pixels."""
    channels: int = Field(3, ge=1, le=16)
    """C, colour channels (3 = RGB)."""
    patch: int = Field(ge=1, le=1024)
    """p: side of a square patch; each patch becomes one token. Must divide H and W."""

    @model_validator(mode="after")
    def _patch_tiles_image(self) -> ImageConfig:
        if self.height % self.patch or self.width % self.patch:
            raise ValueError(
                f"patch ({self.patch}) must divide height ({self.height}) and width ({self.width})"
            )
        return self


class InputConfig(Section):
    """Which modalities one agent's observation has (at least one)."""

    vector_dim: int = Field(0, ge=0, le=65536)
    """Width of the telemetry / feature vector per step; 0 = no vector."""
    image: ImageConfig | None = None
    """Camera image per step; None = no image."""
    vocab: int = Field(0, ge=0, le=1_000_000)
    """Size of the discrete-token vocabulary (event codes, messages); 0 = no token. An env with
    steps that carry no event reserves a code (e.g. 0) for "none"."""

    @model_validator(mode="after")
    def _has_a_modality(self) -> InputConfig:
        if not (self.vector_dim or self.image or self.vocab):
            raise ValueError("an observation needs at least one of vector_dim, image, vocab")
        return self


class HeadConfig(Section):
    """Which heads read the model's state."""

    n_classes: int = Field(0, ge=0, le=65536)
    """Classes of the classification (event) head; 0 = no classification head."""
    n_actions: int = Field(0, ge=0, le=65536)
    """Discrete actions of the action head (policy logits + a value estimate); 0 = none."""
    next_step: bool = True
    """Self-supervised head predicting the next step's observation (learns from unlabelled
    experience)."""


# ----------------------------------------------------------------------------------------------
# Layout of the stream and of the parameters


def modalities(inp: InputConfig) -> tuple[str, ...]:
    """The present modalities, in stream order."""
    present = {
        "image": inp.image is not None,
        "vector": inp.vector_dim > 0,
        "tokens": inp.vocab > 0,
    }
    return tuple(m for m in MODALITIES if present[m])


def n_patches(inp: InputConfig) -> int:
    """Np = gh * gw image patches per step (0 without an image)."""
    im = inp.image
    return 0 if im is None else (im.height // im.patch) * (im.width // im.patch)


def tokens_per_step(inp: InputConfig) -> int:
    """S: stream tokens per time step."""
    return n_patches(inp) + (inp.vector_dim > 0) + (inp.vocab > 0)


def read_positions(inp: InputConfig, T: int) -> Tensor:
    """(T,) int64: stream position of the last token of each step, where the heads read."""
    S = tokens_per_step(inp)
    return torch.arange(T) * S + (S - 1)


def io_specs(inp: InputConfig, heads: HeadConfig, d_model: int) -> list[Spec]:
    """Name and per-agent shape of every input/head parameter, in flat-row order; to be
    appended to the backbone's `param_specs`."""
    D = d_model
    specs: list[Spec] = []
    im = inp.image
    if im is not None:
        specs += [
            ("enc.image.w", (D, im.patch * im.patch * im.channels)),
            ("enc.image.pos", (n_patches(inp), D)),
        ]
    if inp.vector_dim:
        specs += [("enc.vector.w", (D, inp.vector_dim))]
    if inp.vocab:
        specs += [("enc.tokens.emb", (inp.vocab, D))]
    specs += [("enc.modality", (len(modalities(inp)), D))]  # rows in stream order
    if heads.n_classes:
        specs += [("head.cls.w", (heads.n_classes, D)), ("head.cls.b", (heads.n_classes,))]
    if heads.n_actions:
        specs += [
            ("head.policy.w", (heads.n_actions, D)),
            ("head.policy.b", (heads.n_actions,)),
            ("head.value.w", (1, D)),
            ("head.value.b", (1,)),
        ]
    if heads.next_step:
        if im is not None:
            n_out = n_patches(inp) * im.channels  # mean colour per patch, (patch, channel)
            specs += [("head.next.image.w", (n_out, D)), ("head.next.image.b", (n_out,))]
        if inp.vector_dim:
            specs += [
                ("head.next.vector.w", (inp.vector_dim, D)),
                ("head.next.vector.b", (inp.vector_dim,)),
            ]
        if inp.vocab:
            specs += [("head.next.tokens.w", (inp.vocab, D)), ("head.next.tokens.b", (inp.vocab,))]
    return specs


def is_io_param(name: str) -> bool:
    """True for the parameters `io_specs` defines (initialise them with `init_io_param`)."""
    return name.startswith(IO_PREFIXES)


def init_io_param(name: str, shape: tuple[int, ...], g: torch.Generator) -> Tensor:
    """Initial value of one io parameter, drawing from `g` (so a caller's loop over all specs
    with one generator stays a pure function of its seed, as `model.init_flat`)."""
    if name.endswith(".b"):
        return torch.zeros(shape)
    t = torch.randn(shape, generator=g)
    if name.endswith((".pos", "enc.modality")):
        return t * EMBED_STD  # small: content, not position, dominates a token at init
    if name == "enc.tokens.emb":
        return t  # unit variance per element, as nn.Embedding and as the linear encoders' output
    # matrices (out, in): unit-variance outputs for unit-variance inputs, as model.init_flat
    t = t / math.sqrt(shape[-1])
    return t * POLICY_SCALE if name == "head.policy.w" else t


def init_io(inp: InputConfig, heads: HeadConfig, d_model: int, seed: int) -> Tensor:
    """One agent's initial io parameters (P_io,), float32, a pure function of the seed."""
    g = torch.Generator().manual_seed(seed)
    parts = [init_io_param(n, s, g).reshape(-1) for n, s in io_specs(inp, heads, d_model)]
    return torch.cat(parts).to(torch.float32)


# ----------------------------------------------------------------------------------------------
# Encoders


def _check_obs(obs: Mapping[str, Tensor], inp: InputConfig) -> None:
    want = set(modalities(inp))
    if missing := want - obs.keys():
        raise KeyError(f"observation lacks {sorted(missing)}; the InputConfig has {sorted(want)}")
    if extra := obs.keys() - want:
        raise ValueError(f"observation has {sorted(extra)}, not in the InputConfig {sorted(want)}")


def patchify(image: Tensor, patch: int) -> Tensor:
    """(K, B, T, H, W, C) -> (K, B, T, Np, p*p*C): patches row-major over the grid, each
    flattened (row, col, channel)."""
    K, B, T, H, W, C = image.shape
    gh, gw, p = H // patch, W // patch, patch
    x = image.reshape(K, B, T, gh, p, gw, p, C).transpose(4, 5)  # (K, B, T, gh, gw, p, p, C)
    return x.reshape(K, B, T, gh * gw, p * p * C)


def mean_patch_colours(image: Tensor, patch: int) -> Tensor:
    """(K, B, T, H, W, C) -> (K, B, T, Np*C): each patch's mean colour, (patch, channel)."""
    K, B, T, H, W, C = image.shape
    gh, gw, p = H // patch, W // patch, patch
    return image.reshape(K, B, T, gh, p, gw, p, C).mean((4, 6)).reshape(K, B, T, gh * gw * C)


def encode(
    params: Embed, obs: Mapping[str, Tensor], inp: InputConfig, d_model: int
) -> tuple[Tensor, Tensor]:
    """Observations -> one token stream (K, B, L, D) and the read positions (T,) int64.

    obs: "image" (K, B, T, H, W, C) float in [0, 1], "vector" (K, B, T, vector_dim) float,
    "tokens" (K, B, T) int64 -- exactly the modalities of `inp`. Stream order per step:
    [patches row-major..., vector, token] (module docstring).

    The result is a permuted view of a feature-major (K, D, B, L) buffer, the backbone's
    layout: `stream.flatten(1, 2).transpose(1, 2)` is (K, D, B*L) and contiguous, no copy.
    """
    _check_obs(obs, inp)
    e = as_embed(params)
    mod = e.modality  # (K, n_mod, D)
    if mod.shape[-1] != d_model:
        raise ValueError(f"params have d_model {mod.shape[-1]}, expected {d_model}")
    K, _, D = mod.shape
    dtype = mod.dtype
    B, T = next(iter(obs.values())).shape[1:3]
    # Each modality is encoded feature-major (K, D, B, T, n) with its slot embedding (position
    # + modality, the encoders' only bias) added in place, then one cat builds the stream.
    parts: list[Tensor] = []
    row = 0
    if inp.image is not None:
        x = patchify(obs["image"].to(dtype), inp.image.patch)  # (K, B, T, Np, ppC)
        Np = x.shape[3]
        # per-agent linear, feature-major out: (K, D, ppC) @ (K, ppC, B*T*Np)
        w = need(e.image_w, "enc.image.w")  # (K, D, ppC)
        z = torch.bmm(w, x.view(K, B * T * Np, -1).transpose(1, 2))
        pos = need(e.image_pos, "enc.image.pos")  # (K, Np, D)
        slot = (pos + mod[:, row, None]).transpose(1, 2)  # (K, D, Np)
        parts.append(z.view(K, D, B * T, Np).add_(slot[:, :, None]).view(K, D, B, T, Np))
        row += 1
    if inp.vector_dim:
        x = obs["vector"].to(dtype).reshape(K, B * T, -1)  # (K, BT, vd)
        w = need(e.vector_w, "enc.vector.w")  # (K, D, vd)
        z = torch.baddbmm(mod[:, row, :, None], w, x.transpose(1, 2))
        parts.append(z.view(K, D, B, T, 1))  # (K, D, BT) + modality
        row += 1
    if inp.vocab:
        idx = obs["tokens"].reshape(K, B * T, 1).expand(K, B * T, D)  # (K, BT, D)
        # gather reads the strided (K, V, D) view of flat in place (an F.embedding on a
        # (K*V, D) table would first copy every agent's whole table)
        emb = need(e.tokens_emb, "enc.tokens.emb")  # (K, V, D)
        z = torch.gather(emb, 1, idx).add_(mod[:, row, None])  # (K, BT, D)
        parts.append(z.transpose(1, 2).view(K, D, B, T, 1))
    stream = torch.cat(parts, dim=4)  # (K, D, B, T, S) contiguous
    S = stream.shape[-1]
    stream = stream.view(K, D, B, T * S).permute(0, 2, 3, 1)  # (K, B, L, D) view
    return stream, read_positions(inp, T)


def encode_step(
    params: Embed, obs_t: Mapping[str, Tensor], inp: InputConfig, d_model: int
) -> Tensor:
    """One time step (recurrent form): obs without the T dim -> its S tokens (K, B, S, D), in
    stream order; the heads read after the last one."""
    stream, _ = encode(params, {k: v.unsqueeze(2) for k, v in obs_t.items()}, inp, d_model)
    return stream  # T = 1, so L = S


# ----------------------------------------------------------------------------------------------
# Heads


def read_steps(h: Tensor, inp: InputConfig) -> Tensor:
    """Hidden states of the stream (K, B, L, D) -> at the read positions (K, B, T, D).

    A strided view, no copy: the read positions are every S-th token (`read_positions`), and an
    index_select on the feature-major stream cost more than all the heads together."""
    S = tokens_per_step(inp)
    return h[:, :, S - 1 :: S]


def _linear(h: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """Per-agent linear over the last dim: h (K, B, T, i), w (K, o, i), b (K, o) -> (K, B, T, o)."""
    K, B, T, i = h.shape
    y = torch.baddbmm(b.unsqueeze(1), h.reshape(K, B * T, i), w.transpose(1, 2))  # (K, BT, o)
    return y.view(K, B, T, w.shape[1])


def classify(params: Heads, h: Tensor) -> Tensor:
    """h (K, B, T, D) -> classification logits (K, B, T, n_classes)."""
    cls = need(as_head(params).cls, "head.cls")
    return _linear(h, cls.w, cls.b)


def act(params: Heads, h: Tensor) -> tuple[Tensor, Tensor]:
    """h (K, B, T, D) -> policy logits (K, B, T, n_actions), value (K, B, T)."""
    hp = as_head(params)
    policy, value = need(hp.policy, "head.policy"), need(hp.value, "head.value")
    return _linear(h, policy.w, policy.b), _linear(h, value.w, value.b)[..., 0]


def predict_next(params: Heads, h: Tensor, inp: InputConfig) -> dict[str, Tensor]:
    """h (K, B, T, D) at step t -> predictions of step t+1: "image" mean patch colours
    (K, B, T, Np*C), "vector" (K, B, T, vector_dim), "tokens" logits (K, B, T, vocab)."""
    nxt = as_head(params).next
    heads = {m: need(nxt.get(m), f"head.next.{m}") for m in modalities(inp)}
    return {m: _linear(h, lin.w, lin.b) for m, lin in heads.items()}


def next_step_losses(
    params: Heads,
    h: Tensor,
    obs: Mapping[str, Tensor],
    inp: InputConfig,
    mask: Tensor | None = None,
) -> dict[str, Tensor]:
    """Per-agent next-step loss of each modality, {modality: (K,)}.

    h (K, B, T, D) at the read positions, obs as for `encode`, mask (K, B, T) bool: valid steps
    (None = all). The pair (t, t+1) counts when both steps are valid, so the last step, which
    has no successor, never does. Each agent's loss is the mean over its valid pairs (0 if it
    has none): "image" MSE of the mean patch colours, "vector" MSE, "tokens" cross-entropy.
    """
    _check_obs(obs, inp)
    K, B, T, _ = h.shape
    valid = torch.ones(K, B, T, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    w = (valid[:, :, :-1] & valid[:, :, 1:]).to(h.dtype)  # (K, B, T-1) pair t -> t+1
    n = w.sum((1, 2)).clamp(min=1.0)  # (K,)
    pred = predict_next(params, h[:, :, :-1], inp)  # step t predicts t+1, t < T-1
    per_pos: dict[str, Tensor] = {}  # (K, B, T-1) loss at each pair
    if inp.image is not None:
        target = mean_patch_colours(obs["image"][:, :, 1:].to(h.dtype), inp.image.patch)
        per_pos["image"] = (pred["image"] - target).square().mean(-1)
    if inp.vector_dim:
        target = obs["vector"][:, :, 1:].to(h.dtype)
        per_pos["vector"] = (pred["vector"] - target).square().mean(-1)
    if inp.vocab:
        logits = pred["tokens"]  # (K, B, T-1, V)
        ce = F.cross_entropy(
            logits.reshape(-1, inp.vocab), obs["tokens"][:, :, 1:].reshape(-1), reduction="none"
        )
        per_pos["tokens"] = ce.view(K, B, T - 1)
    return {m: (loss * w).sum((1, 2)) / n for m, loss in per_pos.items()}


def self_supervised_loss(
    params: Heads,
    h: Tensor,
    obs: Mapping[str, Tensor],
    inp: InputConfig,
    mask: Tensor | None = None,
) -> Tensor:
    """Per-agent next-step loss (K,): the sum of `next_step_losses` over modalities, unweighted
    (the MSE terms are per number, the CE per token; a weighting is left to the learner)."""
    losses = next_step_losses(params, h, obs, inp, mask)
    return torch.stack(list(losses.values())).sum(0)
