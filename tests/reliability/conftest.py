"""Helpers for the reliability suite: runs interrupted at a chosen point, as a kill would."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from fipframe import load_config, run
from fipframe.plugins import hookimpl, make_plugin_manager


class StopAt:
    """Raises KeyboardInterrupt (Ctrl-C) after the chunk at ``step`` of ``branch`` is committed."""

    def __init__(self, branch: str, step: int):
        self.branch, self.step = branch, step

    @hookimpl
    def fipframe_chunk_end(self, run: Any, step: int, metrics: dict[str, float]) -> None:
        if run.position.branch == self.branch and run.position.step >= self.step:
            raise KeyboardInterrupt


def interrupted(config: dict[str, Any], out: Path, branch: str, step: int) -> Path:
    """Run ``config`` into ``out`` and stop it after ``branch`` reaches ``step``."""
    pm = make_plugin_manager(plugins=[StopAt(branch, step)])
    with pytest.raises(KeyboardInterrupt):
        run(load_config(copy.deepcopy(config), pm=pm), out=out)
    return out


@pytest.fixture
def small(tiny):
    """The tiny two-branch config with a csv logger and 3 chunks per stage."""
    tiny["loggers"] = ["csv"]
    return tiny
