"""Typed configs of the agent's mind (no torch import: scenario validation stays fast)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from swarm._config import Section


class ModelConfig(Section):
    """Shape of one agent's Yan model (MCSD blocks, arXiv 2406.12230)."""

    d_model: int = Field(32, ge=4, le=4096)
    """Width of the token stream."""
    channels: int = Field(4, ge=1, le=256)
    """C: the MCSD block splits d_model into this many channels, each with its own slope
    window and decay rate."""
    layers: int = Field(2, ge=1, le=64)
    """Number of pre-norm residual MCSD blocks."""
    ffn_mult: int = Field(2, ge=1, le=16)
    """Feed-forward width = ffn_mult * d_model."""
    slope_window: int = Field(4, ge=1, le=256)
    """W: how many recent tokens the slope section aggregates (short-range)."""

    @model_validator(mode="after")
    def _channels_divide_width(self) -> ModelConfig:
        if self.d_model % self.channels:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by channels ({self.channels})"
            )
        return self


class LearnConfig(Section):
    """How an agent keeps learning while it acts."""

    lr: float = Field(3e-3, gt=0, le=1.0)
    """Adam learning rate of the online updates."""
    learn_every: int = Field(2, ge=1)
    """Ticks between two online learning steps."""
    batch: int = Field(16, ge=1, le=4096)
    """Labelled windows per agent per learning step, drawn from its replay memory."""
    window: int = Field(8, ge=1, le=1024)
    """Tokens of history the model reads per training example (the labelled tick is last)."""
    replay: int = Field(512, ge=1)
    """Reservoir replay capacity per agent, in labelled windows."""
    history: int = Field(64, ge=1)
    """Ticks of raw observations each agent keeps so late labels can still find their window."""
    optimizer: Literal["adam", "sgd"] = "adam"
    """Per-agent optimizer (its state is stacked with the parameters)."""

    @model_validator(mode="after")
    def _history_holds_window(self) -> LearnConfig:
        if self.history < self.window:
            raise ValueError(f"history ({self.history}) must be >= window ({self.window})")
        return self
