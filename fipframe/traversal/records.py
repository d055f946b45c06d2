"""What a run writes as it goes: typed records, checkpoints, saved points, and reading them back.

One :class:`Records` per run. It numbers the records (``seq``), appends each to
``metrics.jsonl``, commits checkpoints that say which record they cover, and answers the one
question resume and branching ask of the past: the end point (and carry) of a finished stage.
Without a run directory everything stays in memory and nothing is saved.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from fipframe.core.params import Params
from fipframe.errors import TraversalError
from fipframe.eval.results import TRUNK  # the shared stages' name in records and points
from fipframe.traversal.artifact import RunDir, load_point


@dataclass
class Position:
    """Where the traversal is: branch, stage index and name, next step within the stage."""

    branch: str = TRUNK
    stage: int = 0
    stage_name: str = ""
    step: int = 0

    def move(self, branch: str, stage: int, stage_name: str, step: int) -> None:
        self.branch, self.stage, self.stage_name, self.step = branch, stage, stage_name, step


@dataclass
class Restart:
    """A checkpoint read back for resume: the point, the nested state and its metadata."""

    params: Params
    state: dict[str, Any]
    meta: dict[str, Any]

    @property
    def branch(self) -> str:
        return self.meta["branch"]

    @property
    def stage(self) -> int:
        return int(self.meta["stage"])


@dataclass
class Commit:
    """What one checkpoint holds besides the point: enough to continue the stage exactly."""

    branch: str
    stage: int
    step: int
    state: dict[str, Any]
    scale: float = 1.0
    rollbacks: int = 0
    anchor: str | None = None  # the stage's saved first point
    done: bool = False
    lengths: list[float] = field(default_factory=lambda: [0.0, 0.0])
    anchor_buffers: str | None = None  # the module's buffers at the stage's first point
    guard_ref: float | None = None  # the stage's first-step loss (the divergence guard's)


class Records:
    """The run's records, checkpoints and points (in ``dir``, or in memory when it is None).

    ``write=False`` (a data-parallel process other than rank 0): ``dir`` is read (a resume's
    checkpoint and points, which rank 0 writes) but never written; records are kept in memory
    and saved points get the names rank 0 gives them.
    """

    def __init__(self, config: Any, dir: RunDir | None, device: torch.device, write: bool = True):
        self.config = config
        self.dir = dir
        self.write = write
        self.device = device
        self.items: list[dict[str, Any]] = []
        #: (branch, stage) -> (end point, module buffers) of the stages finished in this process
        self.ends: dict[tuple[str, str], tuple[Params, dict[str, Tensor]]] = {}
        self.seq = 0
        self.t0 = time.monotonic()
        #: what every checkpoint carries besides the point: run id, config digest and config
        self.stamp: dict[str, Any] = {}

    # -- resume ------------------------------------------------------------------------------
    def read_restart(
        self, check: Callable[[dict[str, Any]], None] = lambda meta: None
    ) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Read the checkpoint, ``check`` its metadata (does it belong here?), then read the
        records it covers; change nothing yet."""
        assert self.dir is not None
        tensors, meta = self.dir.read_checkpoint()
        check(meta)
        self.items = self.dir.records(upto=meta["seq"])
        return tensors, meta

    def restart(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Restart:
        """Continue from a checkpoint read by :meth:`read_restart` (checked by then): drop the
        records it does not cover, restore its RNG, continue the numbering."""
        assert self.dir is not None
        if self.write:
            self.dir.truncate_records(meta["seq"])
        params, state, meta = self.dir.restore_checkpoint(tensors, meta, self.device)
        self.seq = meta["seq"] + 1
        return Restart(params, state, meta)

    def stage_end(self, branch: str, stage: str) -> dict[str, Any]:
        """The record of the end of ``branch``/``stage``."""
        for r in self.items:
            if r["kind"] == "stage_end" and r["branch"] == branch and r["stage"] == stage:
                return r
        raise TraversalError(f"cannot resume: no saved end point of {branch}/{stage}")

    def end_params(self, branch: str, stage: str) -> Params:
        assert self.dir is not None
        return load_point(self.dir.root / self.stage_end(branch, stage)["point"], self.device)

    def end_carry(self, branch: str, stage: str) -> dict[str, Tensor]:
        """The path state after ``branch``/``stage``, read back from its saved file."""
        record = self.stage_end(branch, stage)
        if not record.get("carry"):
            return {}
        assert self.dir is not None
        return dict(load_point(self.dir.root / record["carry"], self.device))

    def load(self, rel: str) -> Params:
        assert self.dir is not None
        return load_point(self.dir.root / rel, self.device)

    # -- writing -----------------------------------------------------------------------------
    def emit(
        self,
        kind: str,
        branch: str,
        si: int,
        cfg: Any,
        step: int,
        metrics: dict[str, float],
        point: str | None,
        **files: str | None,
    ) -> dict[str, Any]:
        """Append one record (``chunk`` or ``stage_end``); ``files`` names saved side files."""
        record = {
            "seq": self.seq,
            "kind": kind,
            "branch": branch,
            "stage": cfg.name,
            "stage_index": si,
            "task": cfg.task,
            "step": step,
            "global_step": self.global_step(branch, si, step),
            "point": point,
            "time": round(time.monotonic() - self.t0, 3),
            "metrics": metrics,
        }
        record.update({k: v for k, v in files.items() if v is not None})
        self.seq += 1
        self.items.append(record)
        if self.dir is not None and self.write:
            self.dir.append_record(record)
        return record

    def keep_end(self, branch: str, stage: str, params: Params, buffers: dict[str, Tensor]) -> None:
        """Hold a stage's end point for the result, in a run without a directory (with one, the
        result reads its points from disk and the device memory is not held)."""
        if self.dir is None:
            self.ends[(branch, stage)] = (params, buffers)

    def commit(self, params: Params, c: Commit) -> None:
        """Atomically replace the checkpoint; it covers every record emitted so far."""
        if self.dir is None or not self.write:
            return
        meta = {
            **self.stamp,
            "seq": self.seq - 1,  # the last record this checkpoint covers
            "branch": c.branch,
            "stage": c.stage,
            "step": c.step,
            "scale": c.scale,
            "rollbacks": c.rollbacks,
            "anchor": c.anchor,
            "done": c.done,
            "lengths": list(c.lengths),
            "anchor_buffers": c.anchor_buffers,
            "guard_ref": c.guard_ref,
        }
        self.dir.commit(params, c.state, meta)

    def save(
        self, branch: str, si: int, cfg: Any, step: int, tensors: Params, tag: str = ""
    ) -> str | None:
        """Save a point (or another tensor dict: carry, buffers); its path in the run, or None."""
        if self.dir is None:
            return None
        name = f"{branch}-{si:02d}-{cfg.name}-{tag or f'{step:07d}'}"
        if not self.write:
            return self.dir.point_name(name)
        meta = {"branch": branch, "stage": cfg.name, "stage_index": si, "step": step}
        return self.dir.save_point(name, tensors, meta)

    def global_step(self, branch: str, si: int, step: int) -> int:
        trunk = list(self.config.stages)
        if branch == TRUNK:
            return sum(s.steps for s in trunk[:si]) + step
        stages = self.config.branches[branch]
        return sum(s.steps for s in trunk) + sum(s.steps for s in stages[:si]) + step
