"""Your own data as a task sequence: tensors or Datasets from Python, checked on the way in.

``fipframe.run(config, data=...)`` accepts

- a :class:`~fipframe.data.task.TaskSequence` (used as it is, after the checks below);
- a list with one entry per task of tensors ``(x_train, y_train, x_test, y_test)`` or
  ``(x_train, y_train, x_test, y_test, x_val, y_val)``, each ``x`` a tensor or a dict of named
  tensors (``{"input_ids": ..., "attention_mask": ...}``), each ``y`` integer labels. They stay
  resident on the device (the fast path);
- a list with one entry per task of torch Datasets, ``(train, test)``, ``(train, test, val)`` or
  ``{"train": ..., "test": ..., "val": ...}``, whose items are ``(input, label)``. They are
  streamed through a DataLoader (``run.loader``): only labels stay resident.

Call :func:`task_sequence` yourself for names, an explicit head width or the task-incremental
scenario. Each task's classes are the labels its training split holds. Every check names the
task and split at fault and says what was expected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from fipframe.data import inputs as I
from fipframe.data.task import Scenario, Split, Task, TaskSequence
from fipframe.errors import ConfigError

_PARTS = ("train", "test", "val")


def task_sequence(
    data: Any,
    *,
    names: Sequence[str] | None = None,
    num_classes: int | None = None,
    scenario: Scenario = "class",
    loader: Any = None,
    transform: Any = None,
    name: str = "user",
) -> TaskSequence:
    """Tasks from tensors or Datasets (see the module docstring), checked.

    Args:
        data: the tasks.
        names: one name per task (default ``task_<i>``).
        num_classes: width of the shared head (default: the largest label + 1).
        scenario: ``"class"`` (one head, argmax over every class) or ``"task"`` (only the
            task's classes compete).
        loader: a ``LoaderConfig`` for Datasets (default: 2 workers). ``run.loader`` applies
            when ``data=`` is a list; a TaskSequence built here keeps this one.
        transform: ``transform(inputs, generator) -> inputs``, applied on the device to every
            training batch, of tensors or Datasets alike (augmentation on the GPU);
            ``generator`` is seeded by the step, so a resumed run draws what an uninterrupted
            one does.
    """
    if isinstance(data, TaskSequence):
        check(data)
        return data
    if not isinstance(data, Sequence) or isinstance(data, (str, bytes)) or not data:
        raise ConfigError(
            "data: expected a TaskSequence or a non-empty list with one entry per task "
            f"(tensors or Datasets), got {type(data).__name__}"
        )
    if names is not None and len(names) != len(data):
        raise ConfigError(f"data: {len(names)} names for {len(data)} tasks")
    if loader is None:
        from fipframe.config import LoaderConfig

        loader = LoaderConfig()
    splits = [_task_splits(entry, i, loader) for i, entry in enumerate(data)]
    if transform is not None:
        for parts in splits:
            parts[0].transform = transform
    labels = torch.cat([s.y for parts in splits for s in parts])
    top = int(labels.max()) + 1 if len(labels) else 0
    if len(labels) and int(labels.min()) < 0:
        raise ConfigError("data: labels must be 0 or more (class indices of the head)")
    if num_classes is None:
        num_classes = top
    elif top > num_classes:
        raise ConfigError(
            f"data: labels reach {top - 1}, but num_classes is {num_classes} (labels must be "
            f"0..{num_classes - 1})"
        )
    tasks = []
    for i, (train, test, val) in enumerate(splits):
        classes = tuple(int(c) for c in torch.unique(train.y).tolist())
        tasks.append(Task(names[i] if names else f"task_{i}", classes, train, val, test))
    seq = TaskSequence(name, tasks, tasks[0].train.input_shape, num_classes, scenario=scenario)
    check(seq)
    return seq


def check(seq: TaskSequence) -> None:
    """Labels within each task's classes and the head, the same input format in every task."""
    problems = []
    first = None
    for i, task in enumerate(seq.tasks):
        allowed = set(task.classes)
        if any(not 0 <= c < seq.num_classes for c in allowed):
            problems.append(
                f"data: task {i} ({task.name}) has classes {sorted(allowed)}, outside the head's "
                f"0..{seq.num_classes - 1}"
            )
        for part in ("train", "val", "test"):
            split = getattr(task, part)
            if len(split) == 0:
                continue
            if split.y.dim() != 1 or split.y.is_floating_point():
                problems.append(f"data: task {i} {part} labels must be a 1-d integer tensor")
                continue
            found = set(torch.unique(split.y).tolist())
            if extra := sorted(found - allowed):
                problems.append(
                    f"data: task {i} ({task.name}) {part} has labels {extra[:10]} that are not "
                    f"among its classes {sorted(allowed)[:10]}"
                )
        for part in ("train", "val", "test"):
            split = getattr(task, part)
            if part != "train" and len(split) == 0:
                continue
            shape = split.input_shape
            if first is None:
                first = shape
            elif _format(shape) != _format(first):
                where = f"task {i}'s {part}" if part != "train" else f"task {i}'s"
                problems.append(
                    f"data: {where} inputs are {_show(shape)}, task 0's {_show(first)}; every "
                    "task and split must give the same keys and per-example shapes (they go "
                    "through one forward)"
                )
    if problems:
        raise ConfigError(problems)


def _format(shape: Any) -> Any:
    return sorted(shape.items()) if isinstance(shape, dict) else shape


def _show(shape: Any) -> str:
    if isinstance(shape, dict):
        return "{" + ", ".join(f"{k}: {list(v)}" for k, v in shape.items()) + "}"
    return str(list(shape))


def _task_splits(entry: Any, i: int, loader: Any) -> tuple[Any, Any, Any]:
    """(train, test, val) of one task's entry."""
    where = f"data[{i}]"
    if isinstance(entry, Mapping) and set(entry) <= set(_PARTS) and "train" in entry:
        parts = [entry.get(p) for p in _PARTS]
        if parts[1] is None:
            raise ConfigError(f"{where}: a task needs 'train' and 'test' Datasets")
        return tuple(  # type: ignore[return-value]
            _dataset(d, f"{where}.{p}", loader) if d is not None else _empty_like(parts[0])
            for d, p in zip(parts, _PARTS, strict=True)
        )
    if not isinstance(entry, (tuple, list)):
        raise ConfigError(
            f"{where}: expected (x_train, y_train, x_test, y_test[, x_val, y_val]) tensors or "
            f"(train, test[, val]) Datasets, got {type(entry).__name__}"
        )
    if len(entry) in (2, 3) and all(_is_dataset(d) for d in entry):
        train = _dataset(entry[0], f"{where}.train", loader)
        test = _dataset(entry[1], f"{where}.test", loader)
        val = _dataset(entry[2], f"{where}.val", loader) if len(entry) == 3 else None
        return train, test, val if val is not None else _empty_like(train)
    if len(entry) not in (4, 6):
        raise ConfigError(
            f"{where}: expected 4 tensors (x_train, y_train, x_test, y_test) or 6 (and x_val, "
            f"y_val), or 2-3 Datasets; got {len(entry)} items"
        )
    names = ["x_train", "y_train", "x_test", "y_test", "x_val", "y_val"]
    splits = []
    for k in range(0, len(entry), 2):
        xname, yname = names[k], names[k + 1]
        x = I.check(entry[k], f"{where}.{xname}")
        y = entry[k + 1]
        if not isinstance(y, Tensor) or y.dim() != 1 or y.is_floating_point():
            raise ConfigError(
                f"{where}.{yname}: labels must be a 1-d integer tensor (class indices), got "
                + (
                    f"{y.dtype} of shape {list(y.shape)}"
                    if isinstance(y, Tensor)
                    else type(y).__name__
                )
            )
        if len(y) != I.length(x):
            raise ConfigError(
                f"{where}: {xname} holds {I.length(x)} examples but {yname} {len(y)} labels"
            )
        splits.append(Split(x, y.long()))
    train, test = splits[0], splits[1]
    val = splits[2] if len(splits) == 3 else Split(I.narrow(train.x, 0, 0), train.y[:0])
    if len(train) == 0:
        raise ConfigError(f"{where}.x_train: a task needs training examples")
    return train, test, val


def _is_dataset(d: Any) -> bool:
    return hasattr(d, "__getitem__") and hasattr(d, "__len__") and not isinstance(d, Tensor)


def _dataset(d: Any, where: str, loader: Any) -> Any:
    from fipframe.data.stream import StreamedSplit

    if not _is_dataset(d):
        raise ConfigError(f"{where}: expected a torch Dataset (with __getitem__ and __len__)")
    return StreamedSplit(d, None, loader, where=where)


def _empty_like(split: Any) -> Any:
    return split.subset(torch.zeros(0, dtype=torch.long))
