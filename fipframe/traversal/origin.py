"""What actually ran: the model and data a run was built from, recorded in ``origin.json``.

A config names registered kinds, which resume and export can rebuild alone. A model or data
passed from Python cannot be rebuilt from the config, so the run directory records what they
were (the module's class and import path, every parameter's name and shape, the tasks' names,
classes and sizes, the input format). Reopening the run (resume, export) asks for the same
objects when they came from Python, and refuses, saying what differs, when what it is given
does not match the record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fipframe.errors import ConfigError
from fipframe.traversal.artifact import FIXED, load_point

ORIGIN = "origin.json"


def describe(comp: Any) -> dict[str, Any]:
    """The record of a run's components (see the module docstring)."""
    model = comp.adapter.model
    cls = type(model)
    tasks = comp.tasks
    return {
        "model": {
            "source": comp.model_source,
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "kind": getattr(comp.config.model, "kind", None),
            "params": {n: list(p.shape) for n, p in model.named_parameters()},
            "traversable": list(comp.adapter.names),
        },
        "data": {
            "source": comp.data_source,
            "kind": getattr(comp.config.data, "kind", None),
            "name": tasks.name,
            "num_classes": tasks.num_classes,
            "scenario": tasks.scenario,
            "input": _jsonable(tasks.input_shape),
            "streamed": any(t.train.streamed for t in tasks.tasks),
            "tasks": [
                {
                    "name": t.name,
                    "classes": list(t.classes),
                    "sizes": [len(t.train), len(t.val), len(t.test)],
                }
                for t in tasks.tasks
            ],
        },
    }


def _jsonable(shape: Any) -> Any:
    if isinstance(shape, dict):
        return {k: list(v) for k, v in shape.items()}
    return list(shape)


def write(root: Path, comp: Any) -> None:
    from fipframe.traversal.artifact import atomic_write_bytes

    atomic_write_bytes(root / ORIGIN, (json.dumps(describe(comp), indent=2) + "\n").encode())


def read(root: Path) -> dict[str, Any] | None:
    """The record, or None for a run made before origins were recorded."""
    path = Path(root) / ORIGIN
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc})") from None


def require(root: Path, origin: dict[str, Any] | None, model: Any, data: Any, verb: str) -> None:
    """Refuse to reopen a run without the Python objects it was built from (or with objects
    where its config built them)."""
    if origin is None:
        return
    m, d = origin["model"], origin["data"]
    fn = "fipframe.traversal.export.export" if verb == "export" else f"fipframe.{verb}"
    out = ", out" if verb == "export" else ""
    call = f"{fn}({str(root)!r}{out}, model=..., data=...)"
    if m["source"] == "python" and model is None:
        raise ConfigError(
            f"{root}: this run's model was passed from Python ({m['class']}, "
            f"{len(m['params'])} parameter tensors); {verb} needs the same architecture again: "
            f"{call} with model= a new instance of it"
            + ("" if d["source"] != "python" else " and data= the same tasks")
        )
    if d["source"] == "python" and data is None:
        raise ConfigError(
            f"{root}: this run's data was passed from Python ({len(d['tasks'])} tasks: "
            f"{', '.join(t['name'] for t in d['tasks'])}); {verb} needs it again: {call} with "
            "data= the same tasks"
        )
    if m["source"] == "config" and model is not None:
        raise ConfigError(
            f"{root}: this run's model came from its config (model.kind {m['kind']!r}); "
            f"{verb} it without model="
        )
    if d["source"] == "config" and data is not None:
        raise ConfigError(
            f"{root}: this run's data came from its config (data.kind {d['kind']!r}); "
            f"{verb} it without data="
        )


def check(root: Path, origin: dict[str, Any] | None, comp: Any) -> None:
    """The rebuilt components must match the record: same parameters, tasks and inputs."""
    if origin is None:
        return
    now = describe(comp)
    problems = []
    old_p, new_p = origin["model"]["params"], now["model"]["params"]
    if old_p != new_p:
        missing = [n for n in old_p if n not in new_p]
        extra = [n for n in new_p if n not in old_p]
        shapes = [
            f"{n} {old_p[n]} -> {new_p[n]}" for n in old_p if n in new_p and old_p[n] != new_p[n]
        ]
        what = "; ".join(
            part
            for part in (
                f"missing {', '.join(missing[:5])}" if missing else "",
                f"not in the run {', '.join(extra[:5])}" if extra else "",
                f"shapes {', '.join(shapes[:5])}" if shapes else "",
            )
            if part
        )
        problems.append(
            f"model: {now['model']['class']} does not match the run's {origin['model']['class']} "
            f"({what})"
        )
    elif origin["model"]["traversable"] != now["model"]["traversable"]:
        problems.append(
            "model: the traversable parameters differ from the run's "
            f"({len(origin['model']['traversable'])} then, {len(now['model']['traversable'])} now)"
        )
    for key in ("num_classes", "tasks", "input"):
        then, later = origin["data"][key], now["data"][key]
        if then == later:
            continue
        at = ""
        if key == "tasks" and isinstance(then, list) and isinstance(later, list):
            i = next(
                (i for i, (a, b) in enumerate(zip(then, later, strict=False)) if a != b),
                min(len(then), len(later)),
            )
            if i < min(len(then), len(later)):
                then, later = then[i], later[i]
                at = f" at task {i}"
            else:
                then, later = f"{len(then)} tasks", f"{len(later)} tasks"
        problems.append(
            f"data: {key} differ from the run's{at}: {_short(then)} then, {_short(later)} now"
        )
    if problems:
        raise ConfigError([f"{root}: {p}" for p in problems])


def restore_fixed(root: Path, comp: Any) -> None:
    """Give the module the run's non-traversable parameters (a fresh instance has its own)."""
    path = Path(root) / FIXED
    if not path.is_file():
        return
    own = dict(comp.adapter.model.named_parameters())
    with torch.no_grad():
        for n, v in load_point(path, comp.device).items():
            own[n].copy_(v)


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 120 else text[:117] + "..."


def reopen(
    root: str | Path, *, pm: Any = None, model: Any = None, data: Any = None, verb: str
) -> tuple[Any, Any]:
    """The config and rebuilt components of a finished or interrupted run (for export)."""
    from fipframe.api import load_config
    from fipframe.traversal.build import build_components

    root = Path(root)
    origin = read(root)
    require(root, origin, model, data, verb)
    config = load_config(root / "config.yaml", pm=pm)
    cls = type(config)
    comp = build_components(
        config, pm=cls.plugin_manager, registry=cls.registry, model=model, data=data, reopen=True
    )
    check(root, origin, comp)
    restore_fixed(root, comp)
    return config, comp
