"""Cross-component rules on a validated RunConfig, reported together in one ConfigError."""

from __future__ import annotations

from typing import Any

from fipframe.plugins import hookimpl
from fipframe.registry import Registry

_MEMORY_OBJECTIVES = {"replay_ce"}


@hookimpl
def fipframe_check_config(config: Any, registry: Registry) -> list[str]:
    problems: list[str] = []
    n_tasks = getattr(config.data, "n_tasks", None)
    for where, stages in config.all_stages():
        names = [s.name for s in stages]
        for dup in sorted({n for n in names if names.count(n) > 1}):
            problems.append(f"{where}: stage name {dup!r} is used twice")
        for i, stage in enumerate(stages):
            path = f"{where}[{i}]"
            caps = registry.spec("integrator", stage.integrator.kind).capabilities
            needs_metric = "needs_metric" in caps
            if needs_metric and stage.metric is None:
                problems.append(
                    f"{path}.metric: integrator {stage.integrator.kind!r} needs a metric "
                    f"(one of: {', '.join(registry.kinds('metric'))})"
                )
            if not needs_metric and stage.metric is not None:
                problems.append(
                    f"{path}.metric: integrator {stage.integrator.kind!r} does not use a metric; "
                    "remove it or choose an integrator that does"
                )
            if n_tasks is not None and stage.task is not None and stage.task >= n_tasks:
                problems.append(
                    f"{path}.task: {stage.task} is out of range; data has {n_tasks} tasks "
                    f"(0..{n_tasks - 1})"
                )
            if stage.anchor == "stored" and stage.metric is None:
                problems.append(
                    f"{path}.anchor: 'stored' compares outputs through a metric; set a metric"
                )
            uses_memory = stage.metric is not None or any(
                o.kind in _MEMORY_OBJECTIVES for o in stage.objectives
            )
            if uses_memory and config.memory.size == 0:
                problems.append(
                    f"{path}: uses stored inputs but memory.size is 0; set memory.size > 0"
                )
    return problems
