"""Tasks and task sequences: examples already shaped for the model.

A :class:`Split` holds its examples as device tensors (resident, the default and the fast
path); a :class:`fipframe.data.stream.StreamedSplit` reads them through a DataLoader instead and
offers the same methods. Inputs are a tensor or a mapping of named tensors
(:mod:`fipframe.data.inputs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from fipframe.data import inputs as I


@dataclass
class Split:
    """Inputs ``x`` (a tensor [N, ...] or named tensors, each [N, ...]) and integer labels
    ``y`` [N], resident on one device."""

    x: I.Inputs
    y: Tensor
    #: a resident split; streamed splits say True and read examples through a DataLoader
    streamed: ClassVar[bool] = False
    #: ``transform(inputs, generator) -> inputs`` on each training batch (None: none)
    transform: Any = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device, dtype: torch.dtype) -> Split:
        return Split(I.to(self.x, device, dtype), self.y.to(device), transform=self.transform)

    def subset(self, index: Tensor) -> Split:
        return Split(I.take(self.x, index), self.y[index])

    def gather(self, index: Tensor) -> I.Inputs:
        """The inputs of rows ``index`` (on this split's device)."""
        return I.take(self.x, index.to(self.y.device))

    def inputs(self, batch_size: int) -> list[I.Inputs]:
        """Every input in order, in batches of ``batch_size``."""
        n = len(self)
        return [I.narrow(self.x, i, i + batch_size) for i in range(0, n, batch_size)]

    def head(self, n: int) -> I.Inputs:
        """The inputs of the first ``n`` rows."""
        return I.narrow(self.x, 0, n)

    @property
    def input_shape(self) -> tuple[int, ...] | dict[str, tuple[int, ...]]:
        return I.shapes(self.x)

    def batches(self, sampler: Any) -> Batches:
        """Training batches that follow ``sampler`` (``get(t)`` gathers ``indices(t)``)."""
        return Batches(self, sampler)

    @staticmethod
    def concat(splits: Sequence[Split]) -> Split:
        return Split(I.cat([s.x for s in splits]), torch.cat([s.y for s in splits]))


class Batches:
    """Batches of a resident split along a sampler: ``get(t)`` -> (inputs, labels, rows)."""

    def __init__(self, split: Split, sampler: Any):
        self.split = split
        self.sampler = sampler
        self._gen: torch.Generator | None = None

    def get(self, step: int) -> tuple[I.Inputs, Tensor, Tensor]:
        idx = self.sampler.indices(step)
        x = I.take(self.split.x, idx)
        if self.split.transform is not None:
            x = self.split.transform(x, step_generator(self, self.sampler, step, self.split.y))
        return x, self.split.y[idx], idx

    def close(self) -> None:
        pass


def step_generator(owner: Any, sampler: Any, step: int, like: Tensor) -> torch.Generator:
    """A generator on ``like``'s device seeded by (sampler, step): per-batch transforms draw
    the same numbers on resume and after a rollback."""
    import zlib

    if getattr(owner, "_gen", None) is None:
        owner._gen = torch.Generator(device=like.device)
    owner._gen.manual_seed(zlib.crc32(f"{sampler.seed}/{sampler.name}/{step}".encode()))
    return owner._gen


def concat(splits: Sequence[Any]) -> Any:
    """One split of every row of ``splits`` (resident or streamed, not mixed)."""
    return type(splits[0]).concat(splits)


@dataclass
class Task:
    """One task: a name, the classes it contains and its train/val/test splits."""

    name: str
    classes: tuple[int, ...]
    train: Split
    val: Split
    test: Split

    def to(self, device: torch.device, dtype: torch.dtype) -> Task:
        return Task(
            self.name,
            self.classes,
            self.train.to(device, dtype),
            self.val.to(device, dtype),
            self.test.to(device, dtype),
        )


Scenario = Literal["class", "task"]
#: logit given to classes outside an example's task in the task-incremental scenario
MASKED = -1.0e9


@dataclass
class TaskSequence:
    """Tasks learned one after another, sharing one output head of ``num_classes``.

    ``scenario`` says how the head is read: ``"class"`` (class-incremental: argmax over every
    class, no task identity) or ``"task"`` (task-incremental: the task is known, so training and
    evaluation compare only the logits of that task's classes).
    """

    name: str
    tasks: list[Task]
    #: the shape of one example's input: a tuple, or one per key for named inputs
    input_shape: tuple[int, ...] | dict[str, tuple[int, ...]]
    num_classes: int
    meta: dict[str, str] = field(default_factory=dict)
    scenario: Scenario = "class"

    def __len__(self) -> int:
        return len(self.tasks)

    def to(self, device: torch.device, dtype: torch.dtype) -> TaskSequence:
        return TaskSequence(
            self.name,
            [t.to(device, dtype) for t in self.tasks],
            self.input_shape,
            self.num_classes,
            dict(self.meta),
            self.scenario,
        )

    def class_table(self) -> Tensor:
        """[tasks, classes] bool: which classes belong to which task (on the data's device)."""
        device = self.tasks[0].train.y.device if self.tasks else None
        table = torch.zeros(len(self.tasks), self.num_classes, dtype=torch.bool, device=device)
        for i, task in enumerate(self.tasks):
            table[i, list(task.classes)] = True
        return table

    def restrict(
        self, logits: Tensor, task_ids: Tensor | int, table: Tensor | None = None
    ) -> Tensor:
        """In the task-incremental scenario, mask every logit outside each example's task.

        ``task_ids`` is one task index or one per row; class-incremental logits pass unchanged.
        """
        if self.scenario == "class":
            return logits
        table = self.class_table() if table is None else table
        allowed = table[task_ids]
        if allowed.dim() == 1:
            allowed = allowed.expand_as(logits)
        return logits.masked_fill(~allowed, MASKED)


def class_split(
    name: str,
    train: Split,
    val: Split,
    test: Split,
    groups: Sequence[Sequence[int]],
    *,
    num_classes: int,
    train_limit: int | None = None,
    eval_limit: int | None = None,
    scenario: Scenario = "class",
) -> TaskSequence:
    """Split three datasets into tasks by class groups (one shared head; see ``scenario``)."""
    tasks = []
    for i, group in enumerate(groups):
        classes = tuple(int(c) for c in group)
        picked = [
            _pick(s, classes, lim)
            for s, lim in ((train, train_limit), (val, eval_limit), (test, eval_limit))
        ]
        label = (
            "-".join(str(c) for c in classes)
            if len(classes) <= 3
            else f"{classes[0]}..{classes[-1]}"
        )
        tasks.append(Task(f"task_{i} ({label})", classes, *picked))
    return TaskSequence(name, tasks, train.input_shape, num_classes, scenario=scenario)


def _pick(split: Split, classes: tuple[int, ...], limit: int | None) -> Split:
    mask = torch.isin(split.y, torch.tensor(classes, dtype=split.y.dtype))
    index = mask.nonzero().squeeze(1)
    if limit is not None:
        index = index[:limit]
    return split.subset(index)
