"""Typed views of the flat parameter rows: what the Yan model reads, by field instead of by name.

All parameters of K agents live in one flat tensor (K, P), one row per agent: gossip, averaging
and checkpoints work on the rows, and the order and names of `specs` (model.param_specs,
io.io_specs) are their wire format. `unflatten` cuts the rows into named views (K, *shape);
`views` groups them as the model is built, so the model reads `p.blocks[i].ffn.w1` where it
read `params[f"blocks.{i}.ffn.w1"]`. Every field is a view into `flat`: gradients reach it and
in-place edits of `flat` show through.

A field path spells its spec name: `blocks.{i}.mcsd.w_in` is `p.blocks[i].mcsd.w_in`,
`enc.image.pos` is `p.embed.image_pos`, `head.next.{m}.w` is `p.head.next[m].w`. A part the
config leaves out (a modality, a head, the router of a dense FFN) is None.

Shapes: K agents, D = d_model, C channels, Dc = D / C, F = ffn neurons, G FFN groups,
p patch side, C_img image channels, Np patches, V vocabulary. Weights are (out, in).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from torch import Tensor

Spec = tuple[str, tuple[int, ...]]
T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class Linear:
    """A per-agent affine map: w (K, out, in), b (K, out)."""

    w: Tensor
    b: Tensor


@dataclass(frozen=True, eq=False)
class EmbedParams:
    """The encoders, "enc.*" (agents/yan/io.py); None for a modality the input lacks."""

    modality: Tensor
    """(K, n_mod, D): one row per present modality, in stream order."""
    image_w: Tensor | None = None
    """(K, D, p*p*C_img): patch -> token."""
    image_pos: Tensor | None = None
    """(K, Np, D): patch-position embedding."""
    vector_w: Tensor | None = None
    """(K, D, vector_dim): feature vector -> token."""
    tokens_emb: Tensor | None = None
    """(K, V, D): discrete-token embedding table."""


@dataclass(frozen=True, eq=False)
class MCSDParams:
    """The MCSD sublayer's learned maps, "blocks.{i}.mcsd.*"."""

    w_in: Tensor
    """(K, C, 4Dc, Dc): per-channel projections of the four branches, rows [v | q | u | p]."""
    w_out: Tensor
    """(K, D, 2D): the fused sections back to D."""


@dataclass(frozen=True, eq=False)
class FFNParams:
    """The GELU feed-forward sublayer, "blocks.{i}.ffn.*"; a router only if selective."""

    w1: Tensor
    """(K, F, D)"""
    b1: Tensor
    """(K, F)"""
    w2: Tensor
    """(K, D, F)"""
    b2: Tensor
    """(K, D)"""
    w_gate: Tensor | None = None
    """(K, G, D): the router's clean logits (selective activation only)."""
    w_noise: Tensor | None = None
    """(K, G, D): the router's noise scale (selective activation only)."""


@dataclass(frozen=True, eq=False)
class LayerParams:
    """One MCSD block, "blocks.{i}.*"."""

    norm_mix: Tensor
    """(K, D): RMSNorm gain before the MCSD sublayer."""
    mcsd: MCSDParams
    norm_ffn: Tensor
    """(K, D): RMSNorm gain before the FFN sublayer."""
    ffn: FFNParams


@dataclass(frozen=True, eq=False)
class HeadParams:
    """The heads, "head.*" (agents/yan/io.py); None for a head the config leaves out."""

    cls: Linear | None = None
    """(K, n_classes, D), (K, n_classes): classification logits."""
    policy: Linear | None = None
    """(K, n_actions, D), (K, n_actions): policy logits."""
    value: Linear | None = None
    """(K, 1, D), (K, 1): value estimate."""
    next: Mapping[str, Linear] = field(default_factory=dict)
    """Per present modality, the next-step prediction of it."""


@dataclass(frozen=True, eq=False)
class ModelParams:
    """A whole Yan model of K agents, in flat-row order: encoders, blocks, final norm, heads."""

    embed: EmbedParams
    blocks: tuple[LayerParams, ...]
    norm_f: Tensor
    """(K, D): RMSNorm gain before the heads."""
    head: HeadParams


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


def views(flat: Tensor, specs: list[Spec]) -> ModelParams:
    """flat (K, P) -> the typed views of a whole model laid out by `specs`."""
    return as_model(unflatten(flat, specs))


# ----------------------------------------------------------------------------------------------
# From named views (the one place that maps spec names to fields). The model's and io's
# functions also take the named views of `unflatten`, through these.


def as_model(params: ModelParams | Mapping[str, Tensor]) -> ModelParams:
    """Typed views of a whole model, from themselves or from `unflatten`'s named views."""
    if isinstance(params, ModelParams):
        return params
    blocks: list[LayerParams] = []
    while f"blocks.{len(blocks)}.norm_mix" in params:
        blocks.append(_layer(params, f"blocks.{len(blocks)}"))
    return ModelParams(as_embed(params), tuple(blocks), params["norm_f"], as_head(params))


def as_embed(params: EmbedParams | Mapping[str, Tensor]) -> EmbedParams:
    """The encoders' typed views, from themselves or from named views."""
    if isinstance(params, EmbedParams):
        return params
    return EmbedParams(
        modality=params["enc.modality"],
        image_w=params.get("enc.image.w"),
        image_pos=params.get("enc.image.pos"),
        vector_w=params.get("enc.vector.w"),
        tokens_emb=params.get("enc.tokens.emb"),
    )


def as_head(params: HeadParams | Mapping[str, Tensor]) -> HeadParams:
    """The heads' typed views, from themselves or from named views."""
    if isinstance(params, HeadParams):
        return params
    nexts = [
        n[len("head.next.") : -len(".w")]
        for n in params
        if n.startswith("head.next.") and n.endswith(".w")
    ]
    return HeadParams(
        cls=_linear(params, "head.cls"),
        policy=_linear(params, "head.policy"),
        value=_linear(params, "head.value"),
        next={m: Linear(params[f"head.next.{m}.w"], params[f"head.next.{m}.b"]) for m in nexts},
    )


def need(part: T | None, name: str) -> T:
    """A part the caller requires: `part` itself, or KeyError(name) if the specs lack it."""
    if part is None:
        raise KeyError(name)
    return part


def _layer(params: Mapping[str, Tensor], b: str) -> LayerParams:
    return LayerParams(
        norm_mix=params[f"{b}.norm_mix"],
        mcsd=MCSDParams(w_in=params[f"{b}.mcsd.w_in"], w_out=params[f"{b}.mcsd.w_out"]),
        norm_ffn=params[f"{b}.norm_ffn"],
        ffn=FFNParams(
            w1=params[f"{b}.ffn.w1"],
            b1=params[f"{b}.ffn.b1"],
            w2=params[f"{b}.ffn.w2"],
            b2=params[f"{b}.ffn.b2"],
            w_gate=params.get(f"{b}.ffn.w_gate"),
            w_noise=params.get(f"{b}.ffn.w_noise"),
        ),
    )


def _linear(params: Mapping[str, Tensor], name: str) -> Linear | None:
    w = params.get(f"{name}.w")
    return None if w is None else Linear(w, params[f"{name}.b"])
