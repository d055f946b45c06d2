"""Base classes for plugin configs and scheduled values.

Every implementation's config derives from :class:`PluginConfig` (frozen, unknown fields
rejected) and declares ``kind: Literal["its_kind"]``. Numbers that may change along a stage
are typed :data:`Scheduled`: a plain number or a :class:`Ramp`.
"""

from __future__ import annotations

import math
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class PluginConfig(BaseModel):
    """Base of every plugin config: frozen, extra fields forbidden."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Ramp(BaseModel):
    """A value that moves from ``start`` to ``end`` over a stage.

    ``shape``: linear, cosine (half cosine) or exponential (geometric; both ends > 0).
    ``warmup``: fraction of the stage spent rising linearly from 0 to ``start`` first.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    start: float = Field(description="value at the start of the stage (after warm-up)")
    end: float = Field(description="value at the end of the stage")
    shape: Literal["linear", "cosine", "exponential"] = "linear"
    warmup: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of the stage warming up")

    def at(self, progress: float) -> float:
        progress = min(max(progress, 0.0), 1.0)
        if progress < self.warmup:
            return self.start * progress / self.warmup
        u = (progress - self.warmup) / (1.0 - self.warmup)
        if self.shape == "linear":
            return self.start + (self.end - self.start) * u
        if self.shape == "cosine":
            return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * u))
        if self.start <= 0 or self.end <= 0:
            raise ValueError("an exponential ramp needs start > 0 and end > 0")
        return self.start * (self.end / self.start) ** u


Scheduled = Union[float, Ramp]  # noqa: UP007  (pydantic needs the runtime Union)


def value_at(value: Scheduled, progress: float) -> float:
    """The value of a Scheduled number at ``progress`` (0 = stage start, 1 = stage end)."""
    return value.at(progress) if isinstance(value, Ramp) else float(value)
