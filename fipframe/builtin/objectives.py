"""Built-in secondary objectives.

- ``task_ce``: cross-entropy on batches of the stage's task (the new task to learn).
- ``replay_ce``: cross-entropy on labelled batches from the memory (experience replay).
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from fipframe.core.configs import NonNegative, PluginConfig
from fipframe.core.objective import Batch, SecondaryObjective, StageContext
from fipframe.core.params import Params
from fipframe.data import inputs as I
from fipframe.errors import TraversalError
from fipframe.plugins import hookimpl
from fipframe.registry import Spec


class TaskCEConfig(PluginConfig):
    kind: Literal["task_ce"] = "task_ce"
    weight: NonNegative = Field(1.0, description="weight beta of this term")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="cross-entropy smoothing")


class TaskCE(SecondaryObjective):
    """Cross-entropy on the current task's training data."""

    def bind(self, ctx: StageContext) -> None:
        if ctx.task is None:
            raise TraversalError("objective task_ce needs a stage with `task:` set")
        assert ctx.batches is not None
        self.split = ctx.task.train
        self.batches = ctx.batches("task_ce", self.split, ctx.batch_size)
        self.sampler = self.batches.sampler
        self.tasks, self.index = ctx.tasks, ctx.task_index
        self.table = ctx.tasks.class_table()

    def sample(self, step: int) -> Batch:
        x, y, _ = self.batches.get(step)
        return Batch(x, y, key=("task", self.sampler.name))

    def loss(self, params: Params, logits: Tensor | None, batch: Batch | None) -> Tensor:
        assert logits is not None and batch is not None
        logits = self.tasks.restrict(logits, self.index, self.table)
        return F.cross_entropy(logits, batch.targets, label_smoothing=self.config.label_smoothing)


class ReplayCEConfig(PluginConfig):
    kind: Literal["replay_ce"] = "replay_ce"
    weight: NonNegative = Field(1.0, description="weight beta of this term")


class FromMemory(SecondaryObjective):
    """Base of objectives on stored examples: its own batches of the memory, named by kind."""

    capabilities = frozenset({"uses_memory"})

    def bind(self, ctx: StageContext) -> None:
        self.memory = ctx.memory
        n = len(ctx.memory)
        self.sampler = ctx.sampler(self.config.kind, n, ctx.memory_batch) if n else None
        self.idx: Tensor | None = None  # this step's rows of the memory

    def sample(self, step: int) -> Batch | None:
        if self.sampler is None:
            return None
        self.idx = self.sampler.indices(step)
        return Batch(
            I.take(self.memory.inputs, self.idx),  # type: ignore[arg-type]
            self.memory.targets[self.idx],  # type: ignore[index]
            key=("memory", self.sampler.name),
        )


class ReplayCE(FromMemory):
    """Cross-entropy on labelled examples stored from earlier tasks (ER)."""

    def bind(self, ctx: StageContext) -> None:
        super().bind(ctx)
        self.tasks, self.table = ctx.tasks, ctx.tasks.class_table()

    def loss(self, params: Params, logits: Tensor | None, batch: Batch | None) -> Tensor:
        if logits is None or batch is None or self.idx is None:
            return next(iter(params.values())).new_zeros(())
        ids = self.memory.task_ids[self.idx]  # type: ignore[index]
        return F.cross_entropy(self.tasks.restrict(logits, ids, self.table), batch.targets)


@hookimpl
def fipframe_register_objectives() -> list[Spec]:
    return [
        Spec("task_ce", TaskCEConfig, TaskCE, "cross-entropy on the stage's task"),
        Spec("replay_ce", ReplayCEConfig, ReplayCE, "cross-entropy on stored labelled examples"),
    ]
