"""Shared fixtures: fresh plugin managers and small configs on real MNIST."""

from __future__ import annotations

import copy
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest

from fipframe.plugins import make_plugin_manager

# the Hugging Face tests load bundled and generated checkpoints only: never ask the hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TINY: dict[str, Any] = {
    "name": "tiny",
    "model": {"kind": "mlp", "hidden": [32]},
    "data": {
        "kind": "split_mnist",
        "tasks": [[0, 1], [2, 3]],
        "train_limit": 600,
        "eval_limit": 200,
    },
    "memory": {"size": 60},
    "run": {"seed": 3, "chunk": 10, "progress": "off"},
    "stages": [
        {
            "name": "first",
            "task": 0,
            "steps": 30,
            "batch_size": 32,
            "integrator": {"kind": "gradient", "lr": 0.01},
            "objectives": ["task_ce"],
        }
    ],
    "branches": {
        "finetune": [
            {
                "name": "second",
                "task": 1,
                "steps": 30,
                "batch_size": 32,
                "integrator": {"kind": "gradient", "lr": 0.01},
                "objectives": ["task_ce"],
            }
        ],
        "fip": [
            {
                "name": "second",
                "task": 1,
                "steps": 30,
                "batch_size": 32,
                "memory_batch": 32,
                "integrator": {"kind": "penalty", "lr": 0.01, "alpha": 5.0},
                "metric": "kl",
                "objectives": ["task_ce"],
            }
        ],
    },
}


@pytest.fixture
def tiny() -> dict[str, Any]:
    """A two-task, two-branch config that runs in about a second on real MNIST."""
    return copy.deepcopy(TINY)


@pytest.fixture
def pm():
    """A fresh plugin manager with every installed plugin (built-ins + entry points)."""
    return make_plugin_manager()


@pytest.fixture
def pm_builtin():
    """A fresh plugin manager with the built-ins only."""
    return make_plugin_manager(entry_points_enabled=False)


def make_distribution(
    root: Path, name: str, module: str, source: str, entry: str = "plugin"
) -> None:
    """Write a real installed distribution (dist-info with entry points) and its module.

    Put ``root`` on sys.path and importlib.metadata discovers it like any pip-installed package.
    """
    info = root / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[fipframe]\n{entry} = {module}\n")
    (root / f"{module}.py").write_text(textwrap.dedent(source))
