"""The one base class for every typed, strict config section.

Every section of a scenario file is a subclass: unknown keys are errors (``extra="forbid"``),
types are not coerced (``strict=True``: ``"3"`` is not an int), and a section is immutable once
loaded so the resolved scenario saved with a run is the one that ran.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True
    )
