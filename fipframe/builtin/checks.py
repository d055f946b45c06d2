"""Cross-component rules on a validated RunConfig, reported together in one ConfigError."""

from __future__ import annotations

from typing import Any

from fipframe.plugins import hookimpl
from fipframe.registry import Registry


def _n_tasks(data: Any) -> int | None:
    """How many tasks the data config makes, if it says (explicit class groups win)."""
    tasks = getattr(data, "tasks", None)
    if isinstance(tasks, list):
        return len(tasks)
    return getattr(data, "n_tasks", None)


@hookimpl
def fipframe_check_config(config: Any, registry: Registry) -> list[str]:
    problems: list[str] = []
    n_tasks = _n_tasks(config.data)
    trunk = [s.name for s in config.stages]
    for where, stages in config.all_stages():
        before = [] if where == "stages" else list(trunk)
        names = [s.name for s in stages]
        for dup in sorted({n for n in names if names.count(n) > 1}):
            problems.append(f"{where}: stage name {dup!r} is used twice")
        for i, stage in enumerate(stages):
            path = f"{where}[{i}]"
            if stage.start_from is not None and stage.start_from not in before:
                problems.append(
                    f"{path}.start_from: {stage.start_from!r} is not a stage before this one on "
                    f"its path (earlier stages: {', '.join(before) or 'none'})"
                )
            before.append(stage.name)
            caps = registry.spec("integrator", stage.integrator.kind).capabilities
            needs_metric = "needs_metric" in caps
            if needs_metric and stage.metric is None:
                problems.append(
                    f"{path}.metric: integrator {stage.integrator.kind!r} needs a metric "
                    f"(one of: {', '.join(registry.kinds('metric'))})"
                )
            if stage.metric is not None:
                # "metric:<ability>" in an integrator's spec: the metric must declare it
                has = registry.spec("metric", stage.metric.kind).capabilities
                wanted = sorted(c.split(":", 1)[1] for c in caps if c.startswith("metric:"))
                if missing := [c for c in wanted if c not in has]:
                    problems.append(
                        f"{path}.metric: integrator {stage.integrator.kind!r} needs a metric "
                        f"with {', '.join(missing)}; metric {stage.metric.kind!r} declares "
                        f"{', '.join(sorted(has)) or 'none'}"
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
                "uses_memory" in registry.spec("objective", o.kind).capabilities
                for o in stage.objectives
            )
            if uses_memory and config.memory.size == 0:
                problems.append(
                    f"{path}: uses stored inputs but memory.size is 0; set memory.size > 0"
                )
    return problems
