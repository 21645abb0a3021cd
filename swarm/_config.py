"""The one base class for every typed, strict config section.

Every section of a scenario file is a subclass: unknown keys are errors (``extra="forbid"``),
types are not coerced (``strict=True``: ``"3"`` is not an int), every float is finite
(``allow_inf_nan=False``: YAML's ``.inf`` and ``.nan`` are refused wherever a float is asked
for, since no timeout, rate or weight of ours means anything at infinity), and a section is
immutable once loaded so the resolved scenario saved with a run is the one that ran.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        allow_inf_nan=False,
        use_attribute_docstrings=True,
    )
