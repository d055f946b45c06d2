"""Tasks and task sequences: tensors already shaped for the model, moved to the device once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Split:
    """Inputs ``x`` [N, ...] and integer labels ``y`` [N]."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device, dtype: torch.dtype) -> Split:
        x = (
            self.x.to(device=device, dtype=dtype)
            if self.x.is_floating_point()
            else self.x.to(device)
        )
        return Split(x, self.y.to(device))

    def subset(self, index: Tensor) -> Split:
        return Split(self.x[index], self.y[index])


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


@dataclass
class TaskSequence:
    """Tasks learned one after another, sharing one output head of ``num_classes``."""

    name: str
    tasks: list[Task]
    input_shape: tuple[int, ...]
    num_classes: int
    meta: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tasks)

    def to(self, device: torch.device, dtype: torch.dtype) -> TaskSequence:
        return TaskSequence(
            self.name,
            [t.to(device, dtype) for t in self.tasks],
            self.input_shape,
            self.num_classes,
            dict(self.meta),
        )


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
) -> TaskSequence:
    """Split three datasets into tasks by class groups (class-incremental, one shared head)."""
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
    return TaskSequence(name, tasks, tuple(train.x.shape[1:]), num_classes)


def _pick(split: Split, classes: tuple[int, ...], limit: int | None) -> Split:
    mask = torch.isin(split.y, torch.tensor(classes, dtype=split.y.dtype))
    index = mask.nonzero().squeeze(1)
    if limit is not None:
        index = index[:limit]
    return split.subset(index)
