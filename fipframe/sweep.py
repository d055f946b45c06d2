"""``fipframe sweep``: one config over seeds and a grid of overrides, each run a normal run
directory, on a local process pool or on Ray.

A sweep directory holds ``sweep.json`` (what was asked) and one run directory per cell and seed,
``OUT/<cell>/seed-<s>``. Running the same sweep again continues it: finished runs are read
back, interrupted ones resumed (each from its own checkpoint), missing ones started. Runs are
independent processes (or Ray tasks), so one failing leaves the others; the summary says which
failed and the command exits with 1. ``fipframe report OUT`` prints the summary again.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fipframe.errors import ConfigError

SWEEP_FILE = "sweep.json"
#: config fields that change how a run is watched or read, not its results: a run continued
#: with other values of these is the same run
NOT_RESULTS = ("run.progress", "loggers", "run.loader", "run.eval_batch_size")
BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class Cell:
    """One point of the grid: its directory name and the overrides that make it."""

    name: str
    overrides: tuple[str, ...]


@dataclass
class Job:
    cell: Cell
    seed: int
    out: Path


@dataclass
class SweepSpec:
    source: str | None
    preset: str | None
    overrides: list[str]
    grid: list[str]
    seeds: list[int]
    cells: list[Cell] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "source_sha256": _sha256(self.source),
            "preset": self.preset,
            "overrides": self.overrides,
            "grid": self.grid,
            "seeds": self.seeds,
            "cells": [{"name": c.name, "overrides": list(c.overrides)} for c in self.cells],
        }


def _sha256(path: str | None) -> str | None:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None


def _same(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """The same sweep: the config's content (wherever the file now is), overrides, grid, seeds."""
    keys = set(old) | set(new)
    return all(old.get(k) == new.get(k) for k in keys - {"source"})


def _values(path: str, raw: str) -> list[Any]:
    """``1,10,100`` or a YAML list ``[1, 10, 100]``; each value parsed as YAML."""
    try:
        if raw.strip().startswith("["):
            values = yaml.safe_load(raw)
        else:
            values = [yaml.safe_load(v) for v in raw.split(",")]
    except yaml.YAMLError as exc:
        raise ConfigError(f"--grid {path}: {raw!r} is not a YAML list or a,b,c ({exc})") from None
    if not isinstance(values, list) or not values:
        raise ConfigError(f"--grid {path}: expected values a,b,c or [a, b, c], got {raw!r}")
    return values


def cells(grid: Sequence[str]) -> list[Cell]:
    """The product of ``PATH=V1,V2,...`` axes, named by each path's last part
    (``alpha=10+lr=0.001``; the whole path where two axes end alike)."""
    axes: list[tuple[str, list[Any]]] = []
    for item in grid:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r}: expected PATH=V1,V2,... (e.g. run.seed=0,1)")
        path, raw = item.split("=", 1)
        if any(path == p for p, _ in axes):
            raise ConfigError(f"--grid: {path} is given twice; list its values once")
        axes.append((path, _values(path, raw)))
    if not axes:
        return [Cell("base", ())]
    lasts = [p.split(".")[-1] for p, _ in axes]
    names = [p.split(".")[-1] if lasts.count(p.split(".")[-1]) == 1 else p for p, _ in axes]
    out = []
    for combo in itertools.product(*(v for _, v in axes)):
        label = "+".join(f"{n}={_text(v)}" for n, v in zip(names, combo, strict=True))
        over = tuple(f"{p}={_text(v)}" for (p, _), v in zip(axes, combo, strict=True))
        out.append(Cell(re.sub(r"[^\w.=+-]", "_", label), over))
    return out


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


def jobs(spec: SweepSpec, root: Path) -> list[Job]:
    return [Job(c, s, root / c.name / f"seed-{s}") for c in spec.cells for s in spec.seeds]


def prepare(spec: SweepSpec, root: Path, validate: Callable[[list[str]], Any]) -> list[Job]:
    """Check every cell's config before anything runs, then write (or match) sweep.json."""
    if not spec.seeds:
        raise ConfigError("--seeds: give at least one seed")
    if len(set(spec.seeds)) != len(spec.seeds):
        raise ConfigError(f"--seeds: {spec.seeds} repeats a seed")
    spec.cells = cells(spec.grid)
    for cell in spec.cells:
        try:
            validate([*spec.overrides, *cell.overrides, f"run.seed={spec.seeds[0]}"])
        except ConfigError as exc:
            raise ConfigError(f"sweep cell {cell.name}: {exc}") from None
    path = root / SWEEP_FILE
    if path.exists():
        old = json.loads(path.read_text())
        if not _same(old, spec.to_dict()):
            raise ConfigError(
                f"{path}: {root} holds another sweep (config, overrides, grid or seeds differ); "
                "give another --out, or the same arguments to continue it"
            )
        if old.get("source") != spec.source:  # the same file moved: run from where it is now
            path.write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
    else:
        root.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
    return jobs(spec, root)


def finished(out: Path) -> bool:
    """A run directory whose every branch ended (its summary was written at the end)."""
    if not (out / "summary.json").is_file():
        return False
    from fipframe.eval.results import RunResult

    result = RunResult.load(out)
    return all(result.finished(b) for b in result.branches)


def continue_run(out: Path, config: Any) -> str:
    """Start, continue or read back the run of ``config`` in ``out``: ``ran``, ``resumed`` or
    ``done before``. A directory that holds a run of another config is refused, naming what
    differs; one interrupted before its first checkpoint is started again."""
    from fipframe.api import load_config, resume, run
    from fipframe.traversal import integrity
    from fipframe.traversal.artifact import CHECKPOINT

    if (out / "config.yaml").is_file():
        stored = load_config(out / "config.yaml", pm=type(config).plugin_manager)
        changes = [
            c
            for c in integrity.diff(stored.dump(), config.dump())
            if not any(c[0] == k or c[0].startswith(k + ".") for k in NOT_RESULTS)
        ]
        if changes:
            path, a, b = changes[0]
            more = f" and {len(changes) - 1} more" if len(changes) > 1 else ""
            raise ConfigError(
                f"{out}: holds a run of another config ({path}: {a!r} there, {b!r} now{more}); "
                "give another --out, or the arguments it was run with"
            )
        if finished(out):
            return "done before"
        if (out / CHECKPOINT).is_file():
            resume(out, pm=type(config).plugin_manager)
            return "resumed"
    run(config, out=out)  # new, or stopped before anything but config.yaml was saved
    return "ran"


def run_one(
    source: str | None, preset: str | None, overrides: list[str], out: str, threads: int
) -> dict[str, Any]:
    """One run of the sweep, in a worker process or a Ray task: started, resumed or read."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    from fipframe.api import load_config

    t = time.perf_counter()
    try:
        status = continue_run(Path(out), load_config(source, preset=preset, overrides=overrides))
    except Exception as exc:  # one run's failure is reported; the sweep goes on
        return {"out": out, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    return {"out": out, "status": status, "seconds": time.perf_counter() - t}


def execute(
    spec: SweepSpec,
    todo: list[Job],
    *,
    backend: str,
    workers: int,
    threads: int,
    ray_address: str | None = None,
    say: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> list[dict[str, Any]]:
    """Run every job; returns their outcomes in the order of ``todo``."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    if workers < 1:
        raise ConfigError(f"--workers: expected a positive integer, got {workers}")
    if threads < 0:
        raise ConfigError(f"--threads: expected 0 (torch's default) or more, got {threads}")
    calls = [
        (spec.source, spec.preset, [*spec.overrides, *j.cell.overrides, f"run.seed={j.seed}",
                                    "run.progress=off"], str(j.out), threads)
        for j in todo
    ]  # fmt: skip
    names = {str(j.out): f"{j.cell.name}/seed-{j.seed}" for j in todo}
    outcomes: dict[str, dict[str, Any]] = {}

    def done(result: dict[str, Any]) -> None:
        outcomes[result["out"]] = result
        took = f" in {result['seconds']:.0f} s" if result.get("seconds") else ""
        said = f": {result['error']}" if result["status"] == "failed" else took
        say(f"[{len(outcomes)}/{len(todo)}] {names[result['out']]} {result['status']}{said}")

    if backend == "local":
        _local(calls, workers, done)
    else:
        _ray(calls, threads, ray_address, done)
    return [outcomes[str(j.out)] for j in todo]


def _local(calls: list[tuple], workers: int, done: Callable[[dict[str, Any]], None]) -> None:
    if workers == 1:
        for c in calls:
            done(run_one(*c))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: a fresh interpreter per worker (no forked torch thread pools or CUDA contexts)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_one, *c) for c in calls]
        try:
            for f in as_completed(futures):
                done(f.result())
        except KeyboardInterrupt:
            for f in futures:
                f.cancel()
            raise


def _ray(
    calls: list[tuple], threads: int, address: str | None, done: Callable[[dict[str, Any]], None]
) -> None:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            f"--backend ray needs ray ({exc}); install it with: pip install 'fipframe[ray]'"
        ) from None
    if not ray.is_initialized():
        ray.init(
            address=address or os.environ.get("RAY_ADDRESS"),
            include_dashboard=False,
            log_to_driver=False,
        )
    task = ray.remote(num_cpus=max(threads, 1))(run_one)
    pending = [task.remote(*c) for c in calls]
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        done(ray.get(ready[0]))


def summary(root: Path) -> str:
    """Average test accuracy per cell and branch, mean ± std over the cell's finished seeds."""
    from fipframe.eval.compare import Comparison, _cell

    spec = json.loads((root / SWEEP_FILE).read_text())
    rows, branches = [], []
    for c in spec["cells"]:
        dirs = [root / c["name"] / f"seed-{s}" for s in spec["seeds"]]
        dirs = [d for d in dirs if (d / "metrics.jsonl").is_file()]
        comp = Comparison.load(dirs) if dirs else None
        if comp is not None:
            branches += [b for b in comp.branches if b not in branches]
        rows.append((c["name"], comp))
    heads = [*branches, "seeds"]
    cells_ = []
    for name, comp in rows:
        vals = [_cell(comp.averages(b)) if comp else "-" for b in branches]
        n = min((len(comp.averages(b)) for b in branches), default=0) if comp else 0
        cells_.append((name, [*vals, f"{n}/{len(spec['seeds'])}"]))
    width = max([len(n) for n, _ in cells_] + [4])
    cw = max([len(h) for h in heads] + [len(v) for _, vs in cells_ for v in vs]) + 2
    lines = [
        f"sweep {root}: {len(rows)} cells x {len(spec['seeds'])} seeds; average test accuracy "
        "(%), mean ± sample std over the seeds that finished",
        "cell".ljust(width) + "".join(h.rjust(cw) for h in heads),
    ]
    lines += [n.ljust(width) + "".join(v.rjust(cw) for v in vs) for n, vs in cells_]
    return "\n".join(lines)
