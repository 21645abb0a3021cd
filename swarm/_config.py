"""The one base class for every typed, strict config section.

Every section of a scenario file is a subclass: unknown keys are errors (``extra="forbid"``),
types are not coerced (``strict=True``: ``"3"`` is not an int), every float is finite
(``allow_inf_nan=False``: YAML's ``.inf`` and ``.nan`` are refused wherever a float is asked
for, since no timeout, rate or weight of ours means anything at infinity), and a section is
immutable once loaded so the resolved scenario saved with a run is the one that ran.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

#: Largest tick (or step, or round) any run may name: no run ticks 2^40 times (35,000 years at
#: a second a tick), int64 sums of ticks stay far from overflow, and a sensor line with `t`
#: 2^70 cannot push every later line out (ticks must increase). Every package may import this
#: module (.importlinter), so the bound is stated once.
MAX_TICK = 2**40
#: Largest agent index: agents.count's cap (100,000) plus as many devices, more than a
#: scenario file of MAX_SCENARIO_BYTES can list as external_peers (~40 bytes each).
MAX_AGENT_INDEX = 200_000


class Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        allow_inf_nan=False,
        use_attribute_docstrings=True,
    )
