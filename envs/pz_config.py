"""Typed config of a world made from any PettingZoo ParallelEnv (no pettingzoo import here)."""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

from pydantic import Field, field_validator

from swarm._config import Section


class PettingZooConfig(Section):
    """Any PettingZoo ParallelEnv, named by import path, as the swarm's world."""

    kind: Literal["pettingzoo"] = "pettingzoo"
    """World type."""
    env: str = Field(min_length=3)
    """Import path of a callable that returns a ParallelEnv, 'package.module:callable'
    (e.g. 'mpe2.simple_spread_v3:parallel_env')."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for that callable (e.g. {N: 3, max_cycles: 25})."""
    copies: int = Field(1, ge=1, le=10_000)
    """Independent copies of the env stepped together; agents of every copy form one swarm
    (agent ids '<copy>/<agent>' when copies > 1), so knowledge crosses teams."""
    tick_s: float = Field(0.1, gt=0, le=86_400)
    """Simulated seconds per env step, for time axes and the real-time factor; at most a day,
    slower than any swarm decides."""

    @field_validator("env")
    @classmethod
    def _importable(cls, path: str) -> str:
        module, sep, attr = path.partition(":")
        if not sep or not module or not attr:
            raise ValueError(f"expected 'package.module:callable', got {path!r}")
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            found = None
        if found is None:
            raise ValueError(f"module {module!r} is not installed (pip install it)")
        return path
