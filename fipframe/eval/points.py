"""Points of weight space read back from runs and files, for paths, ensembles and start points.

A point reference is a string:

- ``FILE.safetensors``: a point file (a run's ``points/*.safetensors``, or one written by
  :func:`save_point`), the weights it holds;
- ``RUN_DIR``: the end of the last branch of a run directory;
- ``RUN_DIR#BRANCH`` / ``RUN_DIR#BRANCH/STAGE``: the end of that branch, or of that stage on the
  branch's path (``trunk`` names the shared stages).

:func:`read_point` returns a :class:`Point`: the moved weights, the module's buffers at that point
(BatchNorm statistics, when the run saved them) and the parameters no path moved (frozen ones).
:func:`path_points` gives every saved point along a branch, in order: the stage ends and, with
``run.save_every``, the points in between.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fipframe.core.params import Params
from fipframe.errors import ConfigError

#: the buffers of a plain state dict (read as the point's buffers, not as weights)
BN_STATS = frozenset({"running_mean", "running_var", "num_batches_tracked"})


@dataclass
class Point:
    params: Params
    buffers: dict[str, Tensor] = field(default_factory=dict)
    fixed: Params = field(default_factory=dict)
    #: where it came from (the reference or file), for messages
    source: str = ""
    #: ``branch``, ``stage``, ``step``, ``global_step`` when read from a run
    meta: dict[str, Any] = field(default_factory=dict)

    def weights(self) -> Params:
        """The moved and the fixed weights together."""
        return {**self.fixed, **self.params}

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Point:
        def move(d: Mapping[str, Tensor]) -> dict[str, Tensor]:
            return {
                n: v.to(device=device, dtype=dtype if v.is_floating_point() else None)
                for n, v in d.items()
            }

        return Point(
            move(self.params), move(self.buffers), move(self.fixed), self.source, self.meta
        )


def split_ref(ref: str | Path) -> tuple[Path, str | None, str | None]:
    """``RUN_DIR#BRANCH/STAGE`` -> (path, branch, stage); a file or bare directory -> (path, None,
    None)."""
    text = str(ref)
    branch = stage = None
    if "#" in text:
        text, _, where = text.partition("#")
        branch, _, stage_text = where.partition("/")
        stage = stage_text or None
        if not branch:
            raise ConfigError(f"{ref}: expected RUN_DIR#BRANCH or RUN_DIR#BRANCH/STAGE after '#'")
    return Path(text), branch, stage


def read_point(ref: str | Path, device: str | torch.device = "cpu") -> Point:
    """The point named by ``ref`` (see the module docstring); a clear error if there is none."""
    from fipframe.traversal.artifact import read_tensors

    path, branch, stage = split_ref(ref)
    if path.is_file():
        if branch is not None:
            raise ConfigError(f"{ref}: '#BRANCH' selects a point of a run directory, not of a file")
        tensors, meta = read_tensors(path)
        if any(k.startswith("param/") for k in tensors):  # written by fipframe
            order = meta.get("params") or sorted(k[6:] for k in tensors if k.startswith("param/"))
            params = {n: tensors[f"param/{n}"].to(device) for n in order}
            buffers = _side_buffers(path, device)
        else:  # a plain state dict (safetensors.torch.save_file(model.state_dict(), ...))
            params, buffers = {}, {}
            for n, v in tensors.items():
                stat = n.rsplit(".", 1)[-1] in BN_STATS or not v.is_floating_point()
                (buffers if stat else params)[n] = v.to(device)
        if not params:
            raise ConfigError(f"{path}: holds no floating-point weights; not a point file")
        return Point(params, buffers, source=str(path), meta=dict(meta))
    if not path.exists():
        raise ConfigError(f"{ref}: no such point file or run directory")
    from fipframe.eval.results import RunResult

    return RunResult.load(path).point(branch, stage, device=device, source=str(ref))


def _side_buffers(path: Path, device: Any) -> dict[str, Tensor]:
    """The module's buffers saved beside a run's point file (``...-0000200-buffers`` next to
    ``...-0000200``, ``...-buffers`` next to a stage's ``...-end``), if any."""
    from fipframe.traversal.artifact import load_point

    stem = path.name[: -len(".safetensors")] if path.name.endswith(".safetensors") else path.stem
    for side in (f"{stem}-buffers", f"{stem[:-4]}-buffers" if stem.endswith("-end") else None):
        if side and (path.parent / f"{side}.safetensors").is_file():
            return dict(load_point(path.parent / f"{side}.safetensors", device))
    return {}


def path_points(
    run_dir: str | Path, branch: str | None = None, device: str | torch.device = "cpu"
) -> list[Point]:
    """Every saved point along ``branch``'s path (its own stages; ``trunk`` for the trunk), in
    order of steps: points saved every ``run.save_every`` steps and each stage's end, each with
    the module's buffers (BatchNorm statistics) there. The point the branch starts from (the
    trunk's end, or ``run.init``) is not among them."""
    from fipframe.eval.results import TRUNK, RunResult
    from fipframe.traversal.artifact import FIXED, load_point

    root = Path(run_dir)
    result = RunResult.load(root)
    branch = branch or result.branches[-1]
    if branch not in result.branches and branch != TRUNK:
        raise ConfigError(f"{root}: no branch {branch!r}; branches: {', '.join(result.branches)}")
    fixed = load_point(root / FIXED, device) if (root / FIXED).is_file() else {}
    out: list[Point] = []
    seen: set[str] = set()
    for r in result.records:
        if r["branch"] != branch or not r.get("point") or r["point"] in seen:
            continue
        seen.add(r["point"])
        buffers = load_point(root / r["buffers"], device) if r.get("buffers") else {}
        meta = {k: r.get(k) for k in ("branch", "stage", "step", "global_step", "kind")}
        out.append(Point(load_point(root / r["point"], device), buffers, fixed, str(root), meta))
    if not out:
        raise ConfigError(f"{root}: branch {branch!r} has no saved points (did it run?)")
    return out


def check_like(point: Point, reference: Mapping[str, Tensor], what: str, known: Any = ()) -> None:
    """``point`` must hold every name of ``reference`` (in its moved or its fixed weights) with
    the same shape, and nothing but those and the ``known`` names (the model's other parameters
    and buffers)."""
    held = point.weights()
    wrong = [
        f"{n} {list(v.shape)} vs {list(held[n].shape)}"
        for n, v in reference.items()
        if n in held and held[n].shape != v.shape
    ]
    missing = [n for n in reference if n not in held]
    known = set(known)
    extra = [n for n in {**held, **point.buffers} if n not in reference and n not in known]
    if wrong or missing or extra:
        parts = []
        for label, names in (("shapes differ", wrong), ("missing", missing), ("unknown", extra)):
            if names:
                parts.append(
                    f"{label}: " + ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")
                )
        raise ConfigError(
            f"{what}: {point.source or 'the point'} is not a point of this model "
            f"({'; '.join(parts)}); both ends must be the same architecture"
        )


def load_module(module: nn.Module, point: Point) -> nn.Module:
    """Copy a point (its moved and fixed weights and its buffers) into ``module``; the names of
    a plain state dict go to the parameters or buffers they belong to."""
    slots = {**dict(module.named_buffers()), **dict(module.named_parameters())}
    tensors = {**point.fixed, **point.params, **point.buffers}
    wrong = [
        f"{n} {list(v.shape)}" + (f" vs {list(slots[n].shape)}" if n in slots else " unknown")
        for n, v in tensors.items()
        if n not in slots or slots[n].shape != v.shape
    ]
    if wrong:
        raise ConfigError(
            f"{point.source or 'point'}: {type(module).__name__} does not have the run's tensors "
            f"({', '.join(wrong[:5])}); pass a new instance of the run's model class"
        )
    with torch.no_grad():
        for n, v in tensors.items():
            slots[n].copy_(v)
    return module


def save_point(
    path: str | Path, params: Mapping[str, Tensor], meta: Mapping[str, Any] = ()
) -> Path:
    """Write weights as a point file (readable by :func:`read_point`), atomically."""
    from fipframe.traversal.artifact import atomic_save_tensors

    out = Path(path)
    tensors = {f"param/{n}": v.detach().cpu().contiguous() for n, v in params.items()}
    atomic_save_tensors(out, tensors, {"params": list(params), **dict(meta)})
    return out
