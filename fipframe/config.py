"""RunConfig: one validated description of a traversal, assembled from the registry.

Each slot (``model``, ``data``, ``manifold``, ``stages[*].integrator``, ``.metric``,
``.objectives[*]``, ``loggers[*]``) is a union of the registered config models discriminated on
``kind``, so the schema and the validation follow whichever plugins are installed. A slot also
accepts a bare kind name (``metric: kl``) for a config with no required fields.
"""

from __future__ import annotations

import json
import reprlib
import types
from collections.abc import Iterator, Mapping, Sequence
from pathlib import PurePosixPath
from typing import Annotated, Any, ClassVar, Literal, Optional, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from fipframe.configfile import apply_overrides, read_file  # noqa: F401  (re-exported)
from fipframe.core.configs import ConfigModel
from fipframe.core.sparsity import SparsityConfig
from fipframe.errors import ConfigError
from fipframe.registry import Registry, did_you_mean

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
SLOTS = {  # field name -> family
    "model": "adapter",
    "data": "dataset",
    "manifold": "manifold",
    "integrator": "integrator",
    "metric": "metric",
    "objectives": "objective",
    "loggers": "logger",
}


MAX_SEED = 2**32 - 1  # what every seeded library here accepts (numpy's legacy limit)
MAX_STEPS = 10**9
MAX_BATCH = 10**7


class _Frozen(ConfigModel):
    pass


class LoaderConfig(_Frozen):
    """How streamed data is read (``run.stream: true`` or Datasets passed from Python)."""

    workers: int = Field(
        2, ge=0, le=256, description="DataLoader worker processes (0: in the main one)"
    )
    prefetch: int = Field(2, ge=1, le=1024, description="batches each worker loads ahead")
    pin_memory: bool | None = Field(
        None, description="page-locked host batches for fast copies (None: when on a GPU)"
    )


class GuardConfig(_Frozen):
    """The divergence guard: a finite chunk that has still gone wrong is treated like a
    non-finite one (rolled back with the step halved) or stops the run."""

    loss_growth: float | None = Field(
        1000.0,
        gt=1.0,
        description="a chunk whose mean loss exceeds this many times the stage's first-step loss "
        "(at least `loss_floor`) diverged; None: no loss check",
    )
    loss_floor: float = Field(
        1.0, gt=0.0, description="the smallest reference loss (a stage starting near 0 loss)"
    )
    collapse: bool = Field(
        False,
        description="off by default: early in a new class-incremental task a healthy network "
        "can look the same. On: a chunk collapsed when the network gives one class to >= 98% "
        "of the val inputs and its mean val accuracy over the path's learned tasks is at chance "
        "(<= 1.1 x), down from >= 1.5 x chance at the chunk before (or the previous stage's end)",
    )
    action: Literal["rollback", "stop"] = Field(
        "rollback",
        description="rollback: back to the last good chunk with the step halved (up to "
        "max_rollbacks); stop: end the run with the checkpoint at the last good chunk",
    )


class RunSettings(_Frozen):
    """How the traversal runs (not what it computes)."""

    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="seed of weights, sampling and memory selection"
    )
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$",
        description="auto picks cuda when available",
    )
    dtype: Literal["float32", "float64"] = "float32"
    autocast: Literal["off", "bf16"] = Field(
        "off",
        description="bf16: each step's training forward (objectives and the penalty's "
        "divergence) under torch.autocast in bfloat16; metric products, solves, evaluation and "
        "anchor outputs stay in run.dtype (float32 only)",
    )
    compile: bool = Field(
        False,
        description="torch.compile each step's training forward (the first step of a stage "
        "pays the compilation, tens of seconds on a CPU); metric products and evaluation stay "
        "eager",
    )
    chunk: int = Field(
        50, ge=1, le=MAX_STEPS, description="steps between evaluations, events and checkpoints"
    )
    save_every: int = Field(
        0, ge=0, le=MAX_STEPS, description="steps between saved points (0: stage ends only)"
    )
    init: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="start from this point instead of the model's own weights: a point file "
        "(.safetensors, a run's point or a state dict), a run directory (its last branch's "
        "end) or RUN_DIR#BRANCH[/STAGE]",
    )
    eval_batch_size: int = Field(
        4096, ge=1, le=MAX_BATCH, description="batch size of evaluation passes"
    )
    measure_inputs: int = Field(
        512,
        ge=0,
        le=MAX_BATCH,
        description="stored inputs on which each chunk's path measures (drift, geodesic "
        "length) are computed; 0: none",
    )
    progress: Literal["auto", "bar", "lines", "off"] = Field(
        "auto", description="auto: a bar on a terminal, periodic lines otherwise"
    )
    max_rollbacks: int = Field(
        4, ge=0, le=64, description="halvings of the step after non-finite values or divergence"
    )
    bn_batches: int = Field(
        16,
        ge=0,
        le=MAX_STEPS,
        description="training batches that recompute BatchNorm statistics when the weights jump "
        "(hard pruning, rewinding, a branch start, resume); 0: never",
    )
    stream: bool = Field(
        False,
        description="read training batches through a DataLoader instead of keeping every split "
        "on the device (for data that does not fit; same batches, same results)",
    )
    loader: LoaderConfig = Field(LoaderConfig(), description="DataLoader settings when streaming")
    guard: GuardConfig = Field(GuardConfig(), description="what counts as divergence, and then")

    @field_validator("device")
    @classmethod
    def _available(cls, value: str) -> str:
        """A device that this machine has (checked now, not at the first tensor)."""
        import torch

        if value.startswith("cuda"):
            if not torch.cuda.is_available():
                raise ValueError(
                    f"{value!r} is not available on this machine (torch.cuda.is_available() is "
                    "False); use auto or cpu"
                )
            index = int(value.split(":")[1]) if ":" in value else 0
            if index >= torch.cuda.device_count():
                raise ValueError(
                    f"{value!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
                )
        if value == "mps" and not (
            getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
        ):
            raise ValueError("'mps' is not available on this machine; use auto or cpu")
        return value

    @model_validator(mode="after")
    def _points_at_chunk_ends(self) -> RunSettings:
        if self.save_every and self.save_every % self.chunk:
            raise ValueError(
                f"save_every: {self.save_every} is not a multiple of chunk ({self.chunk}); points "
                "are saved at the ends of chunks, so every point would come at a common multiple "
                f"of both; set chunk to {self.save_every} or a divisor of it"
            )
        return self

    @model_validator(mode="after")
    def _autocast_from_float32(self) -> RunSettings:
        if self.autocast != "off" and self.dtype != "float32":
            raise ValueError(
                f"autocast: {self.autocast} casts float32 operations; run.dtype is {self.dtype}. "
                "Use dtype float32, or autocast off"
            )
        return self

    @field_validator("progress", "autocast", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        """YAML reads a bare `off` as false and `on` as true."""
        return {False: "off", True: "auto"}.get(value, value) if isinstance(value, bool) else value


class MemoryConfig(_Frozen):
    """Stored training inputs of earlier tasks, one budget for every method."""

    size: int = Field(
        0, ge=0, le=MAX_BATCH, description="total stored examples across earlier tasks"
    )
    selection: Literal["class_balanced", "random", "reservoir"] = Field(
        "class_balanced",
        description="class_balanced: equal share per task, round-robin over its classes; "
        "random: equal share per task; reservoir: uniform over every example seen",
    )
    learned: tuple[int, ...] = Field(
        (),
        description="tasks the starting network already knows (a run.init or pretrained "
        "model): their examples are stored before the first stage, with the start point's "
        "outputs, so the first stage's metric has inputs to preserve",
    )

    @field_validator("learned")
    @classmethod
    def _distinct(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(t < 0 for t in value) or len(set(value)) != len(value):
            raise ValueError(f"expected distinct task indices >= 0, got {list(value)}")
        return value


class StageBase(_Frozen):
    """One stage of a path: a step rule, objectives and a metric for some number of steps."""

    name: str = Field(pattern=NAME, max_length=100, description="unique within its branch")
    task: int | None = Field(
        None, ge=0, le=10**6, description="index of the task learned in this stage"
    )
    steps: int = Field(
        ge=0, le=MAX_STEPS, description="number of steps (0 only for a stage that prunes)"
    )
    batch_size: int = Field(128, ge=1, le=MAX_BATCH, description="task examples per step")
    memory_batch: int = Field(
        128, ge=1, le=MAX_BATCH, description="stored examples per step (replay, metric)"
    )
    anchor: Literal["stage_start", "stored"] = Field(
        "stage_start",
        description="outputs the metric preserves: the stage's first point's (FIP), or those "
        "recorded when each input was stored (stored logits, as in DER)",
    )
    prune: SparsityConfig | None = Field(
        None,
        description="hard magnitude pruning: masks set every `prune.every` steps along the "
        "schedule and at the stage end at `prune.sparsity`; pruned weights stay zero on the "
        "rest of the path",
    )
    moves: tuple[str, ...] | None = Field(
        None,
        description="globs of the traversable parameters this stage moves (None: all); the "
        "rest are held where they are (a head-only stage, LoRA factors alone)",
    )
    holds: tuple[str, ...] = Field(
        (), description="globs of traversable parameters held fixed in this stage"
    )
    start_from: str | None = Field(
        None,
        pattern=NAME,
        description="start from the end point of this earlier stage of the path instead of the "
        "last point (lottery-ticket rewinding); masks stay",
    )

    @model_validator(mode="after")
    def _steps_or_prune(self) -> StageBase:
        if self.steps == 0 and self.prune is None:
            raise ValueError("steps: 0 is allowed only for a stage that prunes (set prune:)")
        return self


class RunBase(_Frozen):
    registry: ClassVar[Registry]
    plugin_manager: ClassVar[Any]

    name: str = Field("run", pattern=NAME, max_length=100)
    memory: MemoryConfig = MemoryConfig()
    run: RunSettings = RunSettings()

    @model_validator(mode="after")
    def _one_writer_per_file(self) -> RunBase:
        seen: dict[str, int] = {}
        for i, logger in enumerate(getattr(self, "loggers", [])):
            name = getattr(logger, "filename", None)
            if not isinstance(name, str):
                continue
            key = PurePosixPath(name.replace("\\", "/")).as_posix()
            if key in seen:
                raise ValueError(
                    f"loggers[{i}] writes {name!r}, which loggers[{seen[key]}] writes too"
                )
            seen[key] = i
        return self

    def all_stages(self) -> Iterator[tuple[str, list[Any]]]:
        """``("stages", trunk)`` then ``("branches.<name>", stages)`` for each branch."""
        yield "stages", list(self.stages)  # type: ignore[attr-defined]
        for name, stages in self.branches.items():  # type: ignore[attr-defined]
            yield f"branches.{name}", list(stages)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _kind_shorthand(value: Any) -> Any:
    return {"kind": value} if isinstance(value, str) else value


def _slot(registry: Registry, family: str) -> Any:
    models = [e.spec.config for e in registry.entries(family)]
    if not models:
        raise ConfigError(f"no {family} kinds are registered (is a plugin missing?)")
    union: Any = (
        models[0]
        if len(models) == 1
        else Annotated[
            Union[tuple(models)], Field(discriminator="kind")  # noqa: UP007
        ]
    )
    return Annotated[union, BeforeValidator(_kind_shorthand)]


def config_model(registry: Registry, pm: Any = None) -> type[RunBase]:
    """The RunConfig class for the kinds in ``registry`` (cached on the registry)."""
    cached = getattr(registry, "_run_config", None)
    if cached is not None:
        return cached
    stage = create_model(
        "StageConfig",
        __base__=StageBase,
        integrator=(_slot(registry, "integrator"), Field(description="the step rule")),
        metric=(Optional[_slot(registry, "metric")], Field(None, description="output metric")),  # noqa: UP045
        objectives=(
            list[_slot(registry, "objective")],
            Field(default_factory=list, description="secondary objectives, summed"),
        ),
    )
    default_manifold = registry.kinds("manifold")[0] if registry.kinds("manifold") else None
    run = create_model(
        "RunConfig",
        __base__=RunBase,
        model=(
            Optional[_slot(registry, "adapter")],  # noqa: UP045
            Field(None, description="architecture (optional when model= is passed from Python)"),
        ),
        data=(
            Optional[_slot(registry, "dataset")],  # noqa: UP045
            Field(None, description="task sequence (optional when data= is passed from Python)"),
        ),
        manifold=(
            _slot(registry, "manifold"),
            Field(
                {
                    "kind": "euclidean"
                    if "euclidean" in registry.kinds("manifold")
                    else default_manifold
                },
                validate_default=True,
            ),
        ),
        stages=(list[stage], Field(min_length=1, description="shared stages, in order")),
        branches=(
            dict[
                Annotated[str, Field(pattern=NAME, max_length=100)],
                Annotated[list[stage], Field(min_length=1)],
            ],
            Field(default_factory=dict, description="named continuations of the stages"),
        ),
        loggers=(list[_slot(registry, "logger")], Field(default_factory=list)),
    )
    run.registry = registry
    run.plugin_manager = pm
    registry._run_config = run  # type: ignore[attr-defined]
    return run


# -- loading ----------------------------------------------------------------------------------
def validate(
    data: Mapping[str, Any], registry: Registry, pm: Any = None, source: str | None = None
) -> RunBase:
    """Validate a mapping into a RunConfig; run every plugin's cross-component checks."""
    model = config_model(registry, pm)
    try:
        config = model.model_validate(dict(data))
    except ValidationError as exc:
        errors = exc.errors()
        problems = [_format(e, registry, model) for e in errors[:MAX_PROBLEMS]]
        if len(errors) > MAX_PROBLEMS:
            problems.append(f"... and {len(errors) - MAX_PROBLEMS} more problems")
        raise ConfigError(problems, source) from None
    if pm is not None:
        from fipframe.plugins import call_hook

        problems: list[str] = []
        batches = call_hook(
            pm, "fipframe_check_config", ConfigError, config=config, registry=registry
        )
        for batch in batches:
            problems += [batch] if isinstance(batch, str) else [str(p) for p in batch]
        if problems:
            raise ConfigError(problems, source)
    return config


def _format(err: Mapping[str, Any], registry: Registry, model: Any = None) -> str:
    path = _path(err["loc"], registry)
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "union_tag_invalid":
        family = _family_of(err["loc"])
        valid = sorted(str(t).strip("'") for t in str(ctx.get("expected_tags", "")).split(", "))
        if family:
            valid = registry.kinds(family)
        tag = ctx.get("tag")
        what = f"{family} kind" if family else "kind"
        return (
            f"{path}.kind: unknown {what} {tag!r}; valid kinds: {', '.join(valid)}"
            + did_you_mean(str(tag), valid)
        )
    if kind == "union_tag_not_found":
        family = _family_of(err["loc"])
        valid = registry.kinds(family) if family else []
        return f"{path}: missing 'kind' (one of: {', '.join(valid)})"
    if kind == "too_large":
        return f"{path}.{ctx['field']}: {ctx['value']} is beyond float32's range (at most 1e30)"
    if kind == "bool_number":
        return f"{path}.{ctx['field']}: expected a number, got a boolean ({ctx['value']})"
    if kind == "extra_forbidden":
        fields = _fields_at(model, err["loc"][:-1]) if model is not None else None
        hint = did_you_mean(str(err["loc"][-1]), sorted(fields), cutoff=0.6) if fields else ""
        return f"{path}: unknown field{hint}"
    shown = _SHORT.repr(err.get("input"))  # never the whole input (it may be huge)
    msg = err["msg"].removeprefix("Value error, ")
    return f"{path}: {msg} (got {shown})"


def _fields_at(model: Any, loc: Sequence[Any]) -> set[str] | None:
    """Field names of the config model at ``loc`` (a pydantic error location), or None."""
    tp: Any = model
    for item in loc:
        if isinstance(item, str) and item.startswith(("function-", "tagged-union", "nullable")):
            continue
        tp = _step(tp, item)
        if tp is None:
            return None
    tp = _bare(tp)
    return set(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _bare(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _step(tp: Any, item: Any) -> Any:
    """The type one location item below ``tp``: a field, a list element, a mapping value, or
    the member of a tagged union named by its kind."""
    tp = _bare(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        field = tp.model_fields.get(item) if isinstance(item, str) else None
        return field.annotation if field is not None else None
    origin, args = get_origin(tp), get_args(tp)
    if origin in (list, tuple) and isinstance(item, int) and args:
        return args[0]
    if origin is dict and isinstance(item, str) and len(args) == 2:
        return args[1]
    if origin in (Union, types.UnionType):
        members = [_bare(a) for a in args if a is not type(None)]
        for m in members:  # the tag: pydantic puts the member's kind in the location
            kind = m.model_fields.get("kind") if _is_model(m) else None
            if kind is not None and kind.default == item:
                return m
        for m in members:
            found = _step(m, item)
            if found is not None:
                return found
    return None


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxtuple = 2, 3, 4, 4
_SHORT.maxstring = _SHORT.maxother = 40
MAX_PROBLEMS = 25


def _family_of(loc: Sequence[Any]) -> str | None:
    for item in reversed(loc):
        if isinstance(item, str) and item in SLOTS:
            return SLOTS[item]
    return None


def _path(loc: Sequence[Any], registry: Registry) -> str:
    out = ""
    family: str | None = None
    for item in loc:
        if isinstance(item, int):
            out += f"[{item}]"
            continue
        item = str(item)
        if family and item in registry.kinds(family):
            out += f"({item})"
            family = None
            continue
        if item.startswith(("function-", "tagged-union", "nullable")) or item in {"str", "float"}:
            continue
        if "[" in item or item.startswith(("Ramp", "list")) or item in {"number", "ramp"}:
            continue
        family = SLOTS.get(item, family if item.isdigit() else None)
        out += ("." if out else "") + item
    return out or "(top level)"


# -- reference --------------------------------------------------------------------------------
def _type_name(annotation: Any) -> str:
    from typing import get_args

    from fipframe.core.configs import NonNegative, Positive, RunFile, Scheduled, Width

    for alias, name in (
        (Positive, "number > 0 or Ramp"),
        (NonNegative, "number >= 0 or Ramp"),
        (Scheduled, "number or Ramp"),
    ):
        if annotation == get_args(alias)[0]:
            return name
    if annotation == list[Width]:
        return "list of int (1 to 2^20)"
    if annotation == RunFile:
        return "file in the run directory"
    plain = isinstance(annotation, type) and get_origin(annotation) is None
    text = annotation.__name__ if plain else str(annotation)
    for long, short in (
        ("typing.", ""),
        ("fipframe.core.configs.", ""),
        ("Union[float, Ramp]", "number or Ramp"),
        ("Optional[int]", "int or None"),
    ):
        text = text.replace(long, short)
    return text.replace("|", "or")


def markdown_reference(registry: Registry) -> str:
    """Every kind of every family with its fields, as Markdown (`fipframe schema --markdown`)."""
    from fipframe.registry import FAMILIES

    lines = []
    for family in FAMILIES:
        lines += [f"### {family} kinds", ""]
        for entry in registry.entries(family):
            spec = entry.spec
            origin = f"{entry.dist}" if entry.dist else entry.plugin
            lines += [f"#### `{spec.kind}` ({origin})", "", spec.summary, ""]
            fields = [(n, f) for n, f in spec.config.model_fields.items() if n != "kind"]
            if not fields:
                lines += ["No fields.", ""]
                continue
            lines += ["| field | type | default | description |", "|---|---|---|---|"]
            for name, f in fields:
                default = (
                    "required"
                    if f.is_required()
                    else repr(f.get_default(call_default_factory=True))
                )
                if hasattr(f.get_default(), "model_dump"):
                    default = json.dumps(f.get_default().model_dump())
                cells = [f"`{name}`", _type_name(f.annotation), default, f.description or ""]
                # a literal | would end a markdown table cell
                lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
            lines.append("")
    return "\n".join(lines)
