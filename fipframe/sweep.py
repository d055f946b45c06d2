"""``fipframe sweep``: one config over seeds and a grid of overrides, each run a normal run
directory, on a local process pool or on Ray.

A sweep directory holds ``sweep.json`` (what was asked) and one run directory per cell and seed,
``OUT/<cell>/seed-<s>``. Every run's config is resolved and validated in the calling process
before anything runs, and sent to the workers whole: editing the file mid-sweep changes nothing,
and Ray's nodes need only the sweep directory. Running the same sweep again continues it:
finished runs are read back, interrupted ones resumed (each from its own checkpoint), missing
ones started. Runs are independent processes (or Ray tasks), so one failing, or its worker
dying, leaves the others; the summary marks what failed and the command exits with 1.
``fipframe report OUT`` prints the summary again.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fipframe.errors import ConfigError
from fipframe.traversal.integrity import watch_only

SWEEP_FILE = "sweep.json"
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
    config: dict[str, Any] = field(default_factory=dict)  # resolved, validated


def _values(path: str, raw: str) -> list[Any]:
    """``1,10,100`` or a YAML list ``[1, 10, 100]``; each value parsed as YAML; equal values
    once."""
    try:
        if raw.strip().startswith("["):
            values = yaml.safe_load(raw)
        else:
            values = [yaml.safe_load(v) for v in raw.split(",")]
    except yaml.YAMLError as exc:
        raise ConfigError(f"--grid {path}: {raw!r} is not a YAML list or a,b,c ({exc})") from None
    if not isinstance(values, list) or not values:
        raise ConfigError(f"--grid {path}: expected values a,b,c or [a, b, c], got {raw!r}")
    unique: list[Any] = []
    for v in values:  # 5.0 and 5.00 are one value: one cell
        if v not in unique:
            unique.append(v)
    return unique


def _no_seed(item: str, where: str) -> None:
    if item.split("=", 1)[0] == "run.seed":
        raise ConfigError(f"{where}: run.seed is what --seeds sets; give the seeds there")


def cells(grid: Sequence[str]) -> list[Cell]:
    """The product of ``PATH=V1,V2,...`` axes, named by each path's last part
    (``alpha=10+lr=0.001``; the whole path where two axes end alike)."""
    axes: list[tuple[str, list[Any]]] = []
    for item in grid:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r}: expected PATH=V1,V2,... (e.g. run.chunk=25,50)")
        _no_seed(item, "--grid")
        path, raw = item.split("=", 1)
        if any(path == p for p, _ in axes):
            raise ConfigError(f"--grid: {path} is given twice; list its values once")
        axes.append((path, _values(path, raw)))
    if not axes:
        return [Cell("base", ())]
    lasts = [p.split(".")[-1] for p, _ in axes]
    names = [p.split(".")[-1] if lasts.count(p.split(".")[-1]) == 1 else p for p, _ in axes]
    out: list[Cell] = []
    for combo in itertools.product(*(v for _, v in axes)):
        label = "+".join(f"{n}={_text(v)}" for n, v in zip(names, combo, strict=True))
        over = tuple(f"{p}={_text(v)}" for (p, _), v in zip(axes, combo, strict=True))
        cell = Cell(re.sub(r"[^\w.=+-]", "_", label), over)
        clash = next((c for c in out if c.name == cell.name), None)
        if clash is not None:
            raise ConfigError(
                f"--grid: {', '.join(clash.overrides)} and {', '.join(over)} would share the "
                f"directory {cell.name!r} (names keep letters, digits and . = + - _); give "
                "values that differ there"
            )
        out.append(cell)
    return out


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


def _leaves(node: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        return [x for k, v in node.items() for x in _leaves(v, f"{path}.{k}" if path else k)]
    if isinstance(node, list):
        return [x for i, v in enumerate(node) for x in _leaves(v, f"{path}.{i}")] or [(path, [])]
    return [(path, node)]


def _digest(config: dict[str, Any]) -> str:
    """What identifies a cell's runs: its resolved config, seed and watch-only fields aside."""
    import hashlib

    kept = [(p, v) for p, v in _leaves(config) if p != "run.seed" and not watch_only(p)]
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=repr).encode()).hexdigest()


def prepare(
    grid: Sequence[str],
    overrides: Sequence[str],
    seeds: Sequence[int],
    root: Path,
    resolve: Callable[[list[str]], Any],
) -> list[Job]:
    """Resolve and validate every run's config (``resolve(overrides) -> RunConfig``) before
    anything runs, then write sweep.json, or check that the one there is this sweep."""
    if not seeds:
        raise ConfigError("--seeds: give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: {list(seeds)} repeats a seed")
    for item in overrides:
        _no_seed(item, "overrides")
    todo: list[Job] = []
    record = []
    for cell in cells(grid):
        digest = None
        for seed in seeds:
            try:
                config = resolve([*overrides, *cell.overrides, f"run.seed={seed}"]).dump()
            except ConfigError as exc:
                raise ConfigError(f"sweep cell {cell.name}, seed {seed}: {exc}") from None
            todo.append(Job(cell, seed, root / cell.name / f"seed-{seed}", config))
            digest = digest or _digest(config)
        record.append({"name": cell.name, "overrides": list(cell.overrides), "config": digest})
    spec = {"cells": record, "seeds": list(seeds), "grid": list(grid), "overrides": list(overrides)}
    path = root / SWEEP_FILE
    if path.exists():
        old = json.loads(path.read_text())
        if [(c["name"], c.get("config")) for c in old.get("cells", [])] != [
            (c["name"], c["config"]) for c in record
        ]:
            raise ConfigError(
                f"{path}: {root} holds another sweep (its cells or their configs differ); give "
                "another --out, or the same config and grid to continue it"
            )
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=2) + "\n")  # seeds may grow; the cells may not
    return todo


def finished(out: Path) -> bool:
    """A run directory whose every branch ended (its summary was written at the end)."""
    if not (out / "summary.json").is_file():
        return False
    from fipframe.eval.results import RunResult

    result = RunResult.load(out)
    return all(result.finished(b) for b in result.branches)


def _clear_unstarted(out: Path) -> None:
    """Remove what a run stopped before its first checkpoint left (config.yaml, run.json,
    origin.json, points, ...): nothing of its progress is lost, and it can start again."""
    from fipframe.core.configs import RESERVED, RESERVED_DIRS

    for name in [*RESERVED, ".lock"]:
        (out / name).unlink(missing_ok=True)
    for name in RESERVED_DIRS:
        shutil.rmtree(out / name, ignore_errors=True)


def continue_run(out: Path, config: Any) -> str:
    """Start, continue or read back the run of ``config`` in ``out``: ``ran``, ``resumed`` or
    ``done before``. A directory that holds a run of another config is refused, naming what
    differs (fields that only change how a run is watched are taken from ``config``); one
    stopped before its first checkpoint is started again."""
    from fipframe.traversal.lockstep import alone

    status, walk = open_run(out, config)
    if walk is not None:
        alone(walk(None))
    return status


def open_run(out: Path, config: Any) -> tuple[str, Callable[[Any], Any] | None]:
    """What :func:`continue_run` does, built but not walked: the status and, unless the run
    is done, ``walk(notes)``, the traversal's generator (see
    :meth:`fipframe.traversal.engine.Traversal.walk`)."""
    from fipframe.api import build, load_config, resumable
    from fipframe.traversal import integrity
    from fipframe.traversal.artifact import CHECKPOINT

    pm = type(config).plugin_manager
    if (out / "config.yaml").is_file():
        stored = load_config(out / "config.yaml", pm=pm)
        changes = integrity.diff(stored.dump(), config.dump())
        differ = [c for c in changes if not watch_only(c[0])]
        if differ:
            path, a, b = differ[0]
            more = f" and {len(differ) - 1} more" if len(differ) > 1 else ""
            raise ConfigError(
                f"{out}: holds a run of another config ({path}: {a!r} there, {b!r} now{more}); "
                "give another --out, or the arguments it was run with"
            )
        if finished(out):
            return "done before", None
        if (out / CHECKPOINT).is_file():
            settings = [f"{p}={_text(b)}" for p, _, b in changes if b is not integrity._ABSENT]
            traversal = resumable(out, overrides=settings, pm=pm)
            return "resumed", lambda notes: traversal.walk(
                resume=True, overrides=settings, notes=notes
            )
        if not (out / "metrics.jsonl").is_file():
            _clear_unstarted(out)
    fresh = build(config, out=out)
    return "ran", lambda notes: fresh.walk(notes=notes)


def run_group(configs: list[dict[str, Any]], outs: list[str], threads: int) -> list[dict[str, Any]]:
    """Runs of the sweep in one worker process or Ray task: started, resumed or read; with
    more than one, as lockstep paths (their steps stacked where they fit together)."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    from fipframe.api import load_config
    from fipframe.traversal.lockstep import Notes, run_together

    t = time.perf_counter()
    results: list[dict[str, Any] | None] = [None] * len(configs)
    walks, started = [], []
    for i, (config, out) in enumerate(zip(configs, outs, strict=True)):
        try:
            status, walk = open_run(Path(out), load_config(config))
        except Exception as exc:  # one run's failure is reported; the sweep goes on
            results[i] = _failed(out, exc)
            continue
        if walk is None:
            results[i] = {"out": out, "status": status, "seconds": time.perf_counter() - t}
            continue
        walks.append(walk(Notes(label=out) if len(configs) > 1 else None))
        started.append((i, status))

    def ended(j: int, outcome: Any) -> None:
        i, status = started[j]
        results[i] = (
            _failed(outs[i], outcome.error)
            if outcome.error is not None
            else {"out": outs[i], "status": status, "seconds": time.perf_counter() - t}
        )

    run_together(walks, on_end=ended)  # one walk without notes: a plain run
    return results  # type: ignore[return-value]


def execute(
    todo: list[Job],
    *,
    backend: str,
    workers: int,
    threads: int,
    gpus: float = 0.0,
    ray_address: str | None = None,
    lockstep: int = 1,
    say: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> list[dict[str, Any]]:
    """Run every job; their outcomes, in the order of ``todo``. ``lockstep`` K > 1 gives
    each worker (or Ray task) K consecutive runs to walk as lockstep paths."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    if workers < 1:
        raise ConfigError(f"--workers: expected a positive integer, got {workers}")
    if threads < 0:
        raise ConfigError(f"--threads: expected 0 (torch's default) or more, got {threads}")
    if gpus < 0:
        raise ConfigError(f"--gpus-per-run: expected 0 or more, got {gpus}")
    if lockstep < 1:
        raise ConfigError(f"--lockstep: expected runs per worker, 1 or more, got {lockstep}")
    runs = []
    for j in todo:
        config = json.loads(json.dumps(j.config))
        config.setdefault("run", {})["progress"] = "off"  # runs side by side: no bars
        runs.append((config, str(j.out)))
    # consecutive runs (the seeds of a cell come together) share a worker
    groups = [list(range(i, min(i + lockstep, len(runs)))) for i in range(0, len(runs), lockstep)]
    calls = [([runs[i][0] for i in g], [runs[i][1] for i in g], threads) for g in groups]
    outcomes: dict[int, dict[str, Any]] = {}

    def done(g: int, results: list[dict[str, Any]]) -> None:
        for i, result in zip(groups[g], results, strict=True):
            outcomes[i] = result
            j = todo[i]
            took = f" in {result['seconds']:.0f} s" if result.get("seconds") else ""
            said = f": {result['error']}" if result["status"] == "failed" else took
            say(
                f"[{len(outcomes)}/{len(todo)}] {j.cell.name}/seed-{j.seed} "
                f"{result['status']}{said}"
            )

    if backend == "local":
        _local(calls, workers, done)
    else:
        _ray(calls, threads, gpus, ray_address, done)
    return [outcomes[i] for i in range(len(todo))]


def _failed(out: str, exc: BaseException) -> dict[str, Any]:
    return {"out": out, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}


def _all_failed(call: tuple, why: str) -> list[dict[str, Any]]:
    return [{"out": out, "status": "failed", "error": why} for out in call[1]]


Done = Callable[[int, list[dict[str, Any]]], None]


def _local(calls: list[tuple], workers: int, done: Done) -> None:
    if workers == 1:
        for i, c in enumerate(calls):
            done(i, run_group(*c))
        return
    broken = _pool(calls, list(range(len(calls))), workers, done)
    # a worker died and broke the pool: every group it held or had queued lost its worker.
    # Each of their runs is run again alone (a finished one is read back), so only the run
    # that kills its own worker is reported failed
    died = "its worker process died (killed, out of memory, a crash)"
    for g in broken:
        configs, outs, threads = calls[g]
        results: list[dict[str, Any]] = []
        for single in [([c], [o], threads) for c, o in zip(configs, outs, strict=True)]:
            got: list[dict[str, Any]] = []
            if _pool([single], [0], 1, lambda _, r, got=got: got.extend(r)):
                got = _all_failed(single, died)
            results += got
        done(g, results)


def _pool(calls: list[tuple], which: list[int], workers: int, done: Done) -> list[int]:
    """Run ``calls[which]`` on a fresh spawn pool; the indices whose worker pool broke."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    broken = []
    # spawn: a fresh interpreter per worker (no forked torch thread pools or CUDA contexts)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_group, *calls[i]): i for i in which}
        try:
            for f in as_completed(futures):
                i = futures[f]
                try:
                    done(i, f.result())
                except BrokenProcessPool:
                    broken.append(i)
                except Exception as exc:  # anything else from the pool: these runs failed
                    done(i, _all_failed(calls[i], f"{type(exc).__name__}: {exc}"))
        except KeyboardInterrupt:
            for f in futures:
                f.cancel()
            raise
    return sorted(broken)


def _ray(calls: list[tuple], threads: int, gpus: float, address: str | None, done: Done) -> None:
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
    task = ray.remote(num_cpus=max(threads, 1), num_gpus=gpus)(run_group)
    pending = {task.remote(*c): i for i, c in enumerate(calls)}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(ready[0])
        try:
            done(i, ray.get(ready[0]))
        except Exception as exc:  # the task's worker died
            done(i, _all_failed(calls[i], f"{type(exc).__name__}: {exc}"))


def summary(root: Path, failed: Sequence[str] = ()) -> str:
    """Average test accuracy per cell and branch, mean ± std over the cell's finished seeds;
    the seeds column counts finished runs and names failed ones."""
    from fipframe.eval.compare import Comparison, _cell

    spec = json.loads((root / SWEEP_FILE).read_text())
    failed_set = {str(Path(f)) for f in failed}
    rows, branches = [], []
    for c in spec["cells"]:
        dirs = [root / c["name"] / f"seed-{s}" for s in spec["seeds"]]
        bad = [d for d in dirs if str(d) in failed_set]
        readable = []
        for d in dirs:
            if d in bad or not (d / "metrics.jsonl").is_file():
                continue
            readable.append(d)
        comp = None
        if readable:
            try:
                comp = Comparison.load(readable)
            except Exception:  # noqa: BLE001  (a damaged run: the others are still shown)
                comp = None
        if comp is not None:
            branches += [b for b in comp.branches if b not in branches]
        rows.append((c["name"], comp, len(bad)))
    heads = [*branches, "seeds"]
    body = []
    for name, comp, n_bad in rows:
        vals = [_cell(comp.averages(b)) if comp else "-" for b in branches]
        n = min((len(comp.averages(b)) for b in branches), default=0) if comp else 0
        seeds = f"{n}/{len(spec['seeds'])}" + (f", {n_bad} failed" if n_bad else "")
        body.append((name, [*vals, seeds]))
    width = max([len(n) for n, _ in body] + [4])
    cw = max([len(h) for h in heads] + [len(v) for _, vs in body for v in vs]) + 2
    lines = [
        f"sweep {root}: {len(rows)} cells x {len(spec['seeds'])} seeds; average test accuracy "
        "(%), mean ± sample std over the seeds that finished",
        "cell".ljust(width) + "".join(h.rjust(cw) for h in heads),
    ]
    lines += [n.ljust(width) + "".join(v.rjust(cw) for v in vs) for n, vs in body]
    return "\n".join(lines)
