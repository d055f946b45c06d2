"""Which run a checkpoint belongs to, and which config changes a resume may make.

A fresh run writes ``run.json`` with a random run id; every checkpoint carries that id, the
sha256 of the resolved config and the config itself. Resuming compares them with the run
directory and the config it is given:

- a checkpoint from another run (its id differs) is refused;
- a config that differs from the checkpoint's is refused unless each difference was asked
  for with an override on this resume (``--set PATH=VALUE``) or the resume is forced;
- even an override may not rewrite what already happened: the model, the data, the seed, the
  dtype, the manifold, the memory, a stage that finished before the interruption, or what the
  interrupted stage's saved optimiser state depends on (its step rule, optimiser, objectives,
  metric kind, task, anchor, pruning, start point or name); ``--force`` lifts this except for
  the interrupted stage's state, which cannot be carried into another step rule;
- an accepted change is written into ``config.yaml`` and appended to ``changes.jsonl``
  (when, at which point, which fields from what to what, which overrides, forced or not).
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
import uuid
from collections.abc import Iterable
from typing import Any

import yaml

from fipframe.errors import RunDirError
from fipframe.traversal.artifact import CHANGES, RUN, RunDir

GLOBAL = ("name", "model", "data", "manifold", "memory", "run.seed", "run.dtype", "run.init")
#: config fields that change how a run is watched or read, not its results: a run continued
#: with other values of these is the same run (``--seeds``, sweeps, comparisons)
NOT_RESULTS = ("run.progress", "loggers", "run.loader", "run.eval_batch_size", "run.compile")


def watch_only(path: str) -> bool:
    """Is the dotted config path one of :data:`NOT_RESULTS` (or inside one)?"""
    return any(path == k or path.startswith(k + ".") for k in NOT_RESULTS)


STATEFUL = (
    "integrator.kind",
    "integrator.optimizer",
    "objectives",
    "metric.kind",
    "metric",
    "task",
    "anchor",
    "prune",
    "start_from",
    "name",
)


def digest(config: Any) -> str:
    """sha256 of the resolved config (canonical JSON); ``config``: a RunConfig or its dump."""
    dump = config.dump() if hasattr(config, "dump") else config
    text = json.dumps(dump, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def start(rd: RunDir) -> str:
    """Write ``run.json`` for a fresh run; its id."""
    run_id = uuid.uuid4().hex
    rd.write_json(
        RUN,
        {
            "run_id": run_id,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": socket.gethostname(),
        },
    )
    return run_id


def run_id(rd: RunDir) -> str | None:
    info = rd.read_json(RUN)
    return info.get("run_id") if isinstance(info, dict) else None


def check_run(rd: RunDir, meta: dict[str, Any]) -> None:
    """Refuse a checkpoint made by another run."""
    rid = run_id(rd)
    if meta.get("run_id") and rid and meta["run_id"] != rid:
        raise RunDirError(
            f"{rd.root / 'checkpoint.safetensors'}: belongs to run {meta['run_id'][:12]}, not to "
            f"this directory's run {rid[:12]} ({rd.root / RUN}); a run directory is moved or "
            "copied whole, never a checkpoint alone"
        )


def stamp(config: Any, rid: str | None) -> dict[str, Any]:
    """What every checkpoint of this run carries."""
    return {"run_id": rid, "config_digest": digest(config), "config": config.dump()}


def diff(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """Leaf differences of two JSON-like values, as (dotted path, old, new)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in dict.fromkeys([*old, *new]):
            sub = f"{path}.{key}" if path else str(key)
            out += diff(old.get(key, _ABSENT), new.get(key, _ABSENT), sub)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            out += diff(a, b, f"{path}.{i}")
        return out
    return [] if old == new else [(path, old, new)]


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


_ABSENT = _Absent()


def _within(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + ".")


def _where(path: str, config: dict[str, Any]) -> tuple[str, int | None] | None:
    """(branch, stage index) of a stage path (``stages.1...``, ``branches.fip.0...``); the
    index is None for a whole list (``stages``, ``branches.fip``)."""
    parts = path.split(".")
    if parts[0] == "stages":
        return "trunk", int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    if parts[0] == "branches" and len(parts) > 1:
        return parts[1], int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
    return None


def _as_now(config: Any, old: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's config as this version reads it: fields added since (with their
    defaults) filled in, so they are not mistaken for changes. Unreadable: as stored."""
    try:
        return type(config).model_validate(old).dump()
    except Exception:  # noqa: BLE001 - a config this version refuses is compared as stored
        return old


def check(
    rd: RunDir,
    config: Any,
    meta: dict[str, Any],
    *,
    overrides: Iterable[str] = (),
    force: bool = False,
) -> list[tuple[str, Any, Any]]:
    """Refuse a config change resume may not make; the accepted changes (empty when the
    config is the checkpoint's)."""
    if "config" not in meta or meta.get("config_digest") == digest(config):
        return []
    if _recorded(rd, meta["config_digest"], digest(config)):
        return []  # a change accepted by an earlier resume, before its first new checkpoint
    old, new = _as_now(config, meta["config"]), config.dump()
    if digest(old) == digest(new):
        return []  # the same config; a newer fipframe only spells out fields it added since
    changes = diff(old, new)
    keys = [o.split("=", 1)[0] for o in overrides]
    order = ["trunk", *old.get("branches", {})]
    at_branch, at_stage, done = meta["branch"], int(meta["stage"]), bool(meta.get("done"))
    last = order[-1]
    last_stages = old["stages"] if last == "trunk" else old["branches"][last]
    over = done and at_branch == last and at_stage == len(last_stages) - 1
    problems = []
    for path, a, b in changes:
        show = f"{path}: {_short(a)} -> {_short(b)}"
        where = _where(path, old)
        if over and (where is None or where[0] in order):
            problems.append(
                f"{show}: the run has finished; nothing would run with the change (add a "
                "branch to extend it, or start a new run)"
            )
            continue
        asked = any(_within(path, k) for k in keys)
        if not asked and not force:
            problems.append(
                f"{show} differs from the config the checkpoint was made with (config.yaml "
                "edited, or another config given); resume with --set "
                f"{path}={_short(b)} to change it deliberately, or --force"
            )
            continue
        if any(_within(path, g) for g in GLOBAL) and not force:
            problems.append(f"{show}: the {path.split('.')[0]} of a run cannot change on resume")
            continue
        if where is None:
            continue  # run settings, loggers, new branches: what comes next
        branch, si = where
        if branch not in order:
            continue  # a branch added after the others
        if si is None:  # a stage list that grew or shrank: its first stage decides
            si = 0
        finished = order.index(branch) < order.index(at_branch) or (
            branch == at_branch and (si < at_stage or (si == at_stage and done))
        )
        if finished and not force:
            problems.append(
                f"{show}: {branch}/{si} finished before the interruption; a resume cannot "
                "change what already ran (--force to record it anyway)"
            )
        prefix = f"stages.{si}" if branch == "trunk" else f"branches.{branch}.{si}"
        current = branch == at_branch and si == at_stage and not done
        rest = path[len(prefix) + 1 :]
        if current and any(_within(rest, s) for s in STATEFUL):
            problems.append(
                f"{show}: the interrupted stage's saved state belongs to its {rest}; it "
                "cannot change mid-stage (start a new run or add a branch)"
            )
        if current and rest == "steps" and isinstance(b, int) and b < int(meta["step"]):
            problems.append(f"{show}: the interrupted stage is already at step {meta['step']}")
    if problems:
        raise RunDirError([f"{rd.root}: cannot resume: {p}" for p in problems])
    return changes


def record(
    rd: RunDir,
    config: Any,
    meta: dict[str, Any],
    changes: list[tuple[str, Any, Any]],
    overrides: Iterable[str],
    force: bool,
) -> None:
    """Write the changed config into config.yaml and the change into changes.jsonl."""
    rd.append_line(
        CHANGES,
        {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "checkpoint_seq": meta["seq"],
            "at": {"branch": meta["branch"], "stage": meta["stage"], "step": meta["step"]},
            "overrides": list(overrides),
            "forced": force,
            "changed": {p: [_jsonable(a), _jsonable(b)] for p, a, b in changes},
            "digest": {"from": meta["config_digest"], "to": digest(config)},
        },
    )
    rd.write_text("config.yaml", yaml.safe_dump(config.dump(), sort_keys=False))


def _recorded(rd: RunDir, old: str, new: str) -> bool:
    path = rd.root / CHANGES
    if not path.exists():
        return False
    for line in reversed(path.read_text(errors="replace").splitlines()):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        d = entry.get("digest", {}) if isinstance(entry, dict) else {}
        if d.get("from") == old:
            return d.get("to") == new
    return False


def _jsonable(value: Any) -> Any:
    return None if value is _ABSENT else value


def _short(value: Any) -> str:
    text = "(absent)" if value is _ABSENT else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def file_matches(rd: RunDir, meta: dict[str, Any]) -> list[str]:
    """Problems if config.yaml no longer says what the checkpoint was made with (edited by
    hand since; an accepted change not yet committed is fine)."""
    from fipframe.configfile import read_file

    if "config" not in meta or not (rd.root / "config.yaml").is_file():
        return []
    try:
        now = read_file(rd.root / "config.yaml")
    except Exception as exc:  # ConfigError: unreadable
        return [str(exc)]
    changes = diff(meta["config"], now)
    if not changes:
        return []
    if _recorded(rd, meta["config_digest"], digest(now)):
        return []
    shown = "; ".join(f"{p}: {_short(a)} -> {_short(b)}" for p, a, b in changes[:3])
    more = f" (and {len(changes) - 3} more)" if len(changes) > 3 else ""
    return [
        f"{rd.root / 'config.yaml'}: differs from the config the run was made with ({shown}"
        f"{more}); it no longer describes this run"
    ]
