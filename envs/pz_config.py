"""Typed config of a world made from any PettingZoo ParallelEnv (no pettingzoo import here)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import pkgutil
import re
from typing import Any, Literal

from pydantic import Field, field_validator

from swarm._config import Section

#: What a group's name may hold: it labels metrics (`rl/return/<group>`) and log lines.
GROUP_NAME = re.compile(r"[A-Za-z0-9_.-]{1,40}")
#: Most groups a scenario may name: a bound on what a file may ask for (each group is a model
#: layout, a graph and a line of every metrics row); simple_tag has 2, speaker_listener 2.
MAX_GROUPS = 64


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
    pipeline: bool = True
    """Step each shard's copies as soon as that shard has acted, while the other shards act
    (when every shard hosts whole copies and there are two or more): the world and the shards
    work at the same time instead of taking turns. The results are the same either way; false
    takes turns (one world step per tick, after every shard has acted)."""
    groups: dict[str, str] | None = None
    """Agent groups by name, each a regular expression over the agents' names (e.g.
    {predator: 'adversary_\\d+', prey: 'agent_\\d+'}): an agent belongs to the first group, in
    this order, whose expression matches its whole name; every agent must match one, and the
    agents of one group must share one observation and one action space. Each group has a
    model layout of its own and gossips only within itself; its name labels its figures
    (`rl/return/<group>`). None (the default): agents with the same spaces form a group,
    named after its agents without their `_<n>` ending (simple_tag: adversary, agent)."""

    @field_validator("groups")
    @classmethod
    def _patterns(cls, groups: dict[str, str] | None) -> dict[str, str] | None:
        if groups is None:
            return None
        if not groups or len(groups) > MAX_GROUPS:
            raise ValueError(f"name 1 to {MAX_GROUPS} groups, or leave groups out")
        for name, pattern in groups.items():
            if not GROUP_NAME.fullmatch(name):
                raise ValueError(
                    f"group name {name!r}: use letters, digits, '_', '-' and '.' (up to 40); "
                    "it becomes part of metric names (rl/return/<group>)"
                )
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"group {name!r}: {pattern!r} is not a regular expression: {exc}"
                ) from None
        return groups

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
            raise ValueError(missing_module(module))
        return path


def missing_module(module: str) -> str:
    """Why `module` cannot be found, in words a user can act on: its package is not installed,
    or the installed release does not have it (PettingZoo renames an env when it changes,
    pursuit_v4 -> pursuit_v5), naming the release and the versions of the env it has."""
    top = module.partition(".")[0]
    try:
        release = importlib.metadata.version(top)
    except importlib.metadata.PackageNotFoundError:
        return f"module {module!r} is not installed: no package {top!r} (pip install {top})"
    parent, _, leaf = module.rpartition(".")
    try:
        spec = importlib.util.find_spec(parent) if parent else None
    except (ImportError, ValueError):
        spec = None
    places = spec.submodule_search_locations if spec is not None else None
    stem = re.sub(r"_v\d+$", "", leaf)
    found = sorted(
        f"{parent}.{m.name}"
        for m in pkgutil.iter_modules(list(places or []))
        if re.sub(r"_v\d+$", "", m.name) == stem
    )
    has = f"; it has {', '.join(found)}" if found else ""
    return f"module {module!r} is not in the installed {top} {release}{has}"
