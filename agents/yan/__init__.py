"""Yan: a non-Transformer sequence model of MCSD blocks (arXiv 2406.12230), in stacked form."""

from agents.yan.model import (
    State,
    forward_last,
    forward_parallel,
    forward_step,
    init_flat,
    init_state,
    num_params,
    param_specs,
    unflatten,
    views,
)
from agents.yan.params import ModelParams

__all__ = [
    "ModelParams",
    "State",
    "forward_parallel",
    "forward_step",
    "forward_last",
    "init_flat",
    "init_state",
    "num_params",
    "param_specs",
    "unflatten",
    "views",
]
