"""Base classes for plugin configs and scheduled values.

Every implementation's config derives from :class:`PluginConfig` (frozen, unknown fields
rejected) and declares ``kind: Literal["its_kind"]``. Numbers that may change along a stage
are typed :data:`Scheduled`: a plain number or a :class:`Ramp`; :data:`Positive` and
:data:`NonNegative` are the same with the sign their meaning demands (a learning rate, a step
length, a weight).

Every config model here is strict where YAML is loose: numbers must be finite (``nan`` and
``inf`` are refused), a boolean is never read as a number (``steps: true`` is not 1), and a
file a plugin writes is named by a :data:`RunFile`, a relative path that stays inside the run
directory.
"""

from __future__ import annotations

import math
from pathlib import PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)
from pydantic_core import PydanticCustomError

MAX_MAGNITUDE = 1e30  # every number becomes a float32 tensor somewhere (its max: 3.4e38)

#: the files fipframe writes in a run directory; no plugin file may be one of them
RESERVED = frozenset(
    {
        "config.yaml",
        "metrics.jsonl",
        "checkpoint.safetensors",
        "summary.json",
        "results.txt",
        "accuracy.png",
        "accuracy.svg",
        "run.json",
        "origin.json",
        "plugins.json",
        "changes.jsonl",
        "delivered.json",
    }
)
RESERVED_DIRS = ("points", "export")


def _numeric(annotation: Any) -> bool:
    """Does this annotation accept numbers but not booleans?"""
    if annotation is bool:
        return False
    if annotation in (int, float):
        return True
    origin = get_origin(annotation)
    if origin is Annotated:
        return _numeric(get_args(annotation)[0])
    args = get_args(annotation)
    if origin is Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        return not any(a is bool for a in args) and any(_numeric(a) for a in args)
    return False


def _numeric_items(annotation: Any) -> bool:
    """Is this a list/tuple of numbers (``hidden: [400, 400]``)?"""
    if get_origin(annotation) in (list, tuple):
        args = [a for a in get_args(annotation) if a is not Ellipsis]
        return bool(args) and all(_numeric(a) for a in args)
    return False


class ConfigModel(BaseModel):
    """Frozen, unknown fields forbidden, finite numbers, no booleans read as numbers."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name, value in data.items():
            field = cls.model_fields.get(name)
            if field is None:
                continue
            if (isinstance(value, bool) and _numeric(field.annotation)) or (
                isinstance(value, (list, tuple))
                and _numeric_items(field.annotation)
                and any(isinstance(v, bool) for v in value)
            ):
                raise PydanticCustomError(
                    "bool_number",
                    "{field}: expected a number, got a boolean ({value})",
                    {"field": name, "value": str(value).lower()},
                )
        return data

    @model_validator(mode="after")
    def _float32_range(self) -> Any:
        for name, value in self.__dict__.items():
            values = value if isinstance(value, (list, tuple)) else [value]
            for v in values:
                if isinstance(v, float) and abs(v) > MAX_MAGNITUDE:
                    raise PydanticCustomError(
                        "too_large",
                        "{field}: {value} is beyond float32's range (at most 1e30 in size)",
                        {"field": name, "value": f"{v:g}"},
                    )
        return self


class PluginConfig(ConfigModel):
    """Base of every plugin config: frozen, extra fields forbidden, finite numbers."""


class Ramp(ConfigModel):
    """A value that moves from ``start`` to ``end`` over a stage.

    ``shape``: linear, cosine (half cosine) or exponential (geometric; both ends > 0).
    ``warmup``: fraction of the stage spent rising linearly from 0 to ``start`` first.
    """

    start: float = Field(description="value at the start of the stage (after warm-up)")
    end: float = Field(description="value at the end of the stage")
    shape: Literal["linear", "cosine", "exponential"] = "linear"
    warmup: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of the stage warming up")

    @model_validator(mode="after")
    def _exponential_ends(self) -> Ramp:
        if self.shape == "exponential" and (self.start <= 0 or self.end <= 0):
            raise ValueError(
                f"an exponential ramp needs start > 0 and end > 0 (got {self.start}, {self.end})"
            )
        return self

    def at(self, progress: float) -> float:
        progress = min(max(progress, 0.0), 1.0)
        if progress < self.warmup:
            return self.start * progress / self.warmup
        u = (progress - self.warmup) / (1.0 - self.warmup)
        if self.shape == "linear":
            return self.start + (self.end - self.start) * u
        if self.shape == "cosine":
            return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * u))
        return self.start * (self.end / self.start) ** u


def _non_negative_ramp(ramp: Ramp) -> Ramp:
    if ramp.start < 0 or ramp.end < 0:
        raise ValueError(f"must stay >= 0 along the stage (ramp from {ramp.start} to {ramp.end})")
    return ramp


def _positive_ramp(ramp: Ramp) -> Ramp:
    _non_negative_ramp(ramp)
    if ramp.start == 0 and ramp.end == 0:
        raise ValueError("must be > 0 somewhere along the stage (ramp from 0 to 0)")
    return ramp


def _number_or_ramp(value: Any) -> str:
    return "ramp" if isinstance(value, (dict, Ramp)) else "number"


def _scheduled(number: Any, ramp: Any) -> Any:
    # one branch per input shape, so an error names what is wrong with that shape only
    return Annotated[
        Union[Annotated[number, Tag("number")], Annotated[ramp, Tag("ramp")]],  # noqa: UP007
        Discriminator(_number_or_ramp),
    ]


#: a number or a Ramp, any sign
Scheduled = _scheduled(float, Ramp)
#: > 0, or a ramp that stays >= 0 and is not 0 throughout (a learning rate decaying to 0)
Positive = _scheduled(
    Annotated[float, Field(gt=0.0)], Annotated[Ramp, AfterValidator(_positive_ramp)]
)
#: >= 0, or a ramp that stays >= 0 (a weight that may be switched off)
NonNegative = _scheduled(
    Annotated[float, Field(ge=0.0)], Annotated[Ramp, AfterValidator(_non_negative_ramp)]
)


def value_at(value: Scheduled, progress: float) -> float:
    """The value of a Scheduled number at ``progress`` (0 = stage start, 1 = stage end)."""
    return value.at(progress) if isinstance(value, Ramp) else float(value)


def _inside_run_dir(name: str) -> str:
    for flavour in (PurePosixPath, PureWindowsPath):
        p = flavour(name)
        if p.is_absolute() or p.anchor or ".." in p.parts:
            raise ValueError(
                f"{name!r} leaves the run directory; give a relative name inside it "
                "(no absolute path, no '..')"
            )
    if not name.strip() or name.strip() in {".", "/"}:
        raise ValueError("must name a file inside the run directory")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if parts[0] in RESERVED or parts[0] in RESERVED_DIRS or any(p.startswith(".") for p in parts):
        raise ValueError(
            f"{name!r} is one of fipframe's own files or folders in the run directory "
            f"({', '.join(sorted(RESERVED))}, {'/, '.join(RESERVED_DIRS)}/, hidden files); "
            "choose another name"
        )
    return name


#: a layer width or a count of units: at least 1, at most about a million
Width = Annotated[int, Field(ge=1, le=2**20)]

#: a file name relative to the run directory that cannot leave it
RunFile = Annotated[str, AfterValidator(_inside_run_dir)]
