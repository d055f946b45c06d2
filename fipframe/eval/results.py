"""RunResult: what a traversal measured, read from its records; tables and plots of it.

Accuracies are class-incremental: one shared head, argmax over every class. ``final`` holds
each finished branch's test accuracy per task after its last stage. A branch that did not
finish (interrupted, or not started) is never credited with another path's numbers: it is
shown as unfinished, at its last step, with its accuracy so far.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRUNK = "trunk"


def stage_names(config: Any) -> dict[str, list[dict[str, Any]]]:
    """The run's plan as results need it: ``{branch: [{"name", "steps"}, ...]}``, trunk first.
    ``config``: a RunConfig or its plain mapping (a run directory's config.yaml)."""
    dump = config.dump() if hasattr(config, "dump") else config
    plan = {TRUNK: list(dump.get("stages") or [])}
    plan.update(dict(dump.get("branches") or {}))
    return {
        b: [
            {"name": s.get("name"), "steps": s.get("steps"), "label": describe_stage(s)}
            for s in stages
            if isinstance(s, dict)
        ]
        for b, stages in plan.items()
        if isinstance(stages, list)
    }


def _kind(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return value.get("kind")
    return None


def describe_stage(stage: dict[str, Any]) -> str:
    """A stage's method in a few words, for legends: the step rule, its alpha or eps, the
    metric, and the objectives besides the task's loss (``penalty a=10 kl``)."""
    integ = stage.get("integrator")
    parts = [_kind(integ) or "?"]
    if isinstance(integ, dict):
        for key, short in (("alpha", "α"), ("eps", "ε")):
            if isinstance(integ.get(key), (int, float)):
                parts.append(f"{short}={integ[key]:g}")  # noqa: RUF001
    metric = _kind(stage.get("metric"))
    if metric and parts[0] != "gradient":
        parts.append(metric)
    others = [_kind(o) for o in stage.get("objectives") or []]
    parts += [f"+{o}" for o in others if o and o != "task_ce"]
    return " ".join(parts)


@dataclass
class RunResult:
    records: list[dict[str, Any]]
    task_names: list[str]
    run_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: (branch, stage) -> (end point, buffers) held in memory by the run that made this result
    points: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False)
    #: the parameters no path moved (frozen), held in memory by the run that made this result
    fixed: dict[str, Any] | None = field(default=None, repr=False)
    #: the stages each branch has (see :func:`stage_names`); None: unknown, judged by records
    plan: dict[str, list[dict[str, Any]]] | None = None
    #: what reading the run directory noticed (a torn last line dropped)
    notes: list[str] = field(default_factory=list)
    #: the checkpoint's metadata, when read from a run directory that has one
    checkpoint: dict[str, Any] | None = field(default=None, repr=False)

    @classmethod
    def from_records(
        cls,
        records: list[dict[str, Any]],
        tasks: Any,
        run_dir: Path | None,
        plan: dict[str, list[dict[str, Any]]] | None = None,
    ) -> RunResult:
        return cls(list(records), [t.name for t in tasks.tasks], run_dir, plan=plan)

    @classmethod
    def load(cls, run_dir: str | Path) -> RunResult:
        """Rebuild the result of a (possibly unfinished) run from its directory."""
        from fipframe.errors import RunDirError
        from fipframe.traversal.artifact import CHECKPOINT, METRICS, RunDir, read_tensors

        root = Path(run_dir)
        if not (root / METRICS).exists():
            from fipframe.errors import ConfigError

            raise ConfigError(f"{root}: not a run directory (no {METRICS})")
        rd = RunDir(root)
        covered, checkpoint = None, None
        if (root / CHECKPOINT).exists():  # read first: its records were written before it
            checkpoint = read_tensors(root / CHECKPOINT)[1]
            covered = checkpoint["seq"]
        records = rd.records()
        if covered is not None and covered >= 0 and not any(r["seq"] == covered for r in records):
            raise RunDirError(
                f"{root / METRICS}: record seq {covered}, which the checkpoint covers, is "
                "missing; the records were cut or edited"
            )
        names: list[str] = []
        try:
            summary = rd.read_json("summary.json")
        except RunDirError as exc:  # rebuilt from the records; say so
            rd.notes += [f"{p} (ignored; the table comes from the records)" for p in exc.problems]
            summary = None
        if isinstance(summary, dict):
            names = list(summary.get("tasks") or [])
        if not names:
            origin = rd.read_json("origin.json")
            if isinstance(origin, dict):
                names = [t["name"] for t in origin.get("data", {}).get("tasks", [])]
        if not names:
            n = len({k for r in records for k in r["metrics"] if k.startswith("acc/test/task_")})
            names = [f"task_{i}" for i in range(n)]
        plan = None
        if (root / "config.yaml").is_file():
            from fipframe.configfile import read_file

            plan = stage_names(read_file(root / "config.yaml"))
        result = cls(records, names, root, plan=plan)
        result.notes = list(rd.notes)
        result.checkpoint = checkpoint
        return result

    # -- views -----------------------------------------------------------------------------
    @property
    def branches(self) -> list[str]:
        if self.plan is not None:
            names = list(self.plan)
        else:
            names = list(dict.fromkeys(r["branch"] for r in self.records))
        return [b for b in names if b != TRUNK] or [TRUNK]

    def _last_end(self, branch: str) -> dict[str, Any] | None:
        ends = [r for r in self.records if r["kind"] == "stage_end" and r["branch"] == branch]
        return ends[-1] if ends else None

    def finished(self, branch: str) -> bool:
        """Did every stage of ``branch`` (and of the trunk before it) record its end?"""
        done = {(r["branch"], r["stage"]) for r in self.records if r["kind"] == "stage_end"}
        if self.plan is None:
            return self._last_end(branch) is not None
        paths = [TRUNK] if branch == TRUNK else [TRUNK, branch]
        return all((b, s["name"]) in done for b in paths for s in self.plan.get(b, []))

    def progress(self, branch: str) -> dict[str, Any]:
        """Where an unfinished branch stopped: its last record's stage and step (of the
        stage's steps), or ``{"stage": None}`` if it never started."""
        own = [r for r in self.records if r["branch"] == branch]
        if not own:
            return {"stage": None, "step": 0, "steps": None}
        last = own[-1]
        steps = None
        for s in (self.plan or {}).get(branch, []):
            if s["name"] == last["stage"]:
                steps = s["steps"]
        return {"stage": last["stage"], "step": last["step"], "steps": steps, "record": last}

    def _accs(self, record: dict[str, Any], split: str) -> list[float]:
        return [
            record["metrics"].get(f"acc/{split}/task_{i}", float("nan"))
            for i in range(len(self.task_names))
        ]

    def accuracies(self, branch: str, split: str = "test") -> list[float] | None:
        """Per-task accuracy at the end of the branch (None if it did not finish)."""
        end = self._last_end(branch)
        if end is None or not self.finished(branch):
            return None
        return self._accs(end, split)

    @property
    def final(self) -> dict[str, dict[str, float]]:
        out = {}
        for branch in self.branches:
            accs = self.accuracies(branch)
            if accs is not None:
                out[branch] = dict(zip(self.task_names, accs, strict=True))
        return out

    @property
    def unfinished(self) -> dict[str, dict[str, Any]]:
        """Branches that did not finish: where each stopped and its test accuracy so far."""
        out = {}
        for branch in self.branches:
            if self.finished(branch):
                continue
            where = self.progress(branch)
            record = where.pop("record", None)
            where["accuracy_so_far"] = (
                dict(zip(self.task_names, self._accs(record, "test"), strict=True))
                if record
                else None
            )
            out[branch] = where
        return out

    def path(self, branch: str) -> list[dict[str, Any]]:
        """Records along a branch's whole path: the trunk's, then the branch's own."""
        return [r for r in self.records if r["branch"] in (TRUNK, branch)]

    def matrix(self, branch: str, split: str = "test") -> tuple[list[int], list[list[float]]]:
        """The accuracy matrix along a branch's path: ``R[i][j]`` is the accuracy on task ``j``
        after the ``i``-th stage that learned a task. Returns (that stage's task, R)."""
        rows, learned = [], []
        for r in self.path(branch):
            if r["kind"] != "stage_end" or r.get("task") is None:
                continue
            learned.append(int(r["task"]))
            rows.append(
                [
                    r["metrics"].get(f"acc/{split}/task_{j}", float("nan"))
                    for j in range(len(self.task_names))
                ]
            )
        return learned, rows

    def continual(self, branch: str, split: str = "test") -> dict[str, float]:
        """Average accuracy, backward transfer and forgetting (Lopez-Paz & Ranzato 2017;
        Chaudhry et al. 2018) over the tasks learned along the branch's path.

        ``acc`` = mean over learned tasks of their final accuracy; ``bwt`` = mean over all but
        the last learned task of (final - just after learning it); ``forgetting`` = mean over
        the same tasks of (best accuracy before the last stage - final). All as fractions.
        """
        learned, rows = self.matrix(branch, split)
        if not rows or not self.finished(branch):
            return {}
        tasks = list(dict.fromkeys(learned))
        final = rows[-1]
        out = {"acc": sum(final[j] for j in tasks) / len(tasks)}
        earlier = tasks[:-1]
        if earlier:
            last = {t: i for i, t in enumerate(learned)}  # the row right after learning t
            out["bwt"] = sum(final[j] - rows[last[j]][j] for j in earlier) / len(earlier)
            best = {j: max(row[j] for row in rows[:-1]) for j in earlier}
            out["forgetting"] = sum(best[j] - final[j] for j in earlier) / len(earlier)
        return out

    def table(self, split: str = "test") -> str:
        """A plain-text table of per-task and average accuracy (%) per branch."""
        rows: list[tuple[str, list[float] | None]] = []
        start = self.accuracies(TRUNK, split)
        if start is not None and self.branches != [TRUNK]:
            rows.append(("start (end of shared stages)", start))
        for branch in self.branches:
            accs = self.accuracies(branch, split)
            if accs is not None:
                rows.append((branch, accs))
                continue
            where = self.progress(branch)
            if where["stage"] is None:
                rows.append((f"{branch} (not started)", None))
                continue
            of = f"/{where['steps']}" if where["steps"] is not None else ""
            label = f"{branch} (unfinished: {where['stage']} step {where['step']}{of}; so far)"
            rows.append((label, self._accs(where["record"], split)))
        heads = [*self.task_names, "average"]
        width = max([len(r[0]) for r in rows] + [6])
        lines = [
            f"{split} accuracy (%), one shared head",
            "method".ljust(width) + "".join(f"  {h:>14}" for h in heads),
        ]
        for name, accs in rows:
            if accs is None:
                lines.append(name.ljust(width) + "".join(f"  {'-':>14}" for _ in heads))
                continue
            cells = [*accs, sum(accs) / len(accs)]
            lines.append(name.ljust(width) + "".join(f"  {100 * a:14.2f}" for a in cells))
        cl = {b: self.continual(b, split) for b in self.branches}
        if any("bwt" in m for m in cl.values()):
            lines += [
                "",
                "over the tasks each path learned (%): ACC, backward transfer, forgetting",
            ]
            lines.append("method".ljust(width) + "".join(f"  {h:>10}" for h in ("ACC", "BWT", "F")))
            for b, m in cl.items():
                if m:
                    cells = [m["acc"], m.get("bwt", 0.0), m.get("forgetting", 0.0)]
                    lines.append(b.ljust(width) + "".join(f"  {100 * v:10.2f}" for v in cells))
                else:
                    lines.append(b.ljust(width) + "  (unfinished)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tasks": self.task_names,
            "final_test_accuracy": self.final,
            "final_val_accuracy": {
                b: self.accuracies(b, "val") for b in self.branches if self.finished(b)
            },
            **({"unfinished": self.unfinished} if self.unfinished else {}),
            **self.extra,
        }

    # -- the trained network -----------------------------------------------------------------
    def point(
        self,
        branch: str | None = None,
        stage: str | None = None,
        *,
        device: Any = "cpu",
        source: str | None = None,
    ) -> Any:
        """The :class:`~fipframe.eval.points.Point` at the end of ``branch`` (default: the last
        branch), or of ``stage`` on its path (a trunk stage too): moved weights, the module's
        buffers there and the parameters no path moved."""
        from fipframe.errors import ConfigError
        from fipframe.eval.points import Point

        branch = branch or self.branches[-1]
        if branch not in self.branches and branch != TRUNK:
            raise ConfigError(
                f"{source or self.run_dir}: no branch {branch!r}; branches: "
                f"{', '.join(self.branches)}"
            )
        ends = [r for r in self.path(branch) if r["kind"] == "stage_end"]
        if stage is not None:
            ends = [r for r in ends if r["stage"] == stage]
        if not ends:
            what = f"stage {stage!r} on the path of branch {branch!r}" if stage else branch
            raise ConfigError(
                f"{source or self.run_dir or 'result'}: no finished {what}; branches: "
                f"{', '.join(self.branches)}"
            )
        end = ends[-1]
        key = (end["branch"], end["stage"])
        fixed = self.fixed or {}
        meta = {k: end.get(k) for k in ("branch", "stage", "step", "global_step")}
        if key in self.points:
            params, buffers = self.points[key]
        elif self.run_dir is not None and end.get("point"):
            from fipframe.traversal.artifact import FIXED, load_point

            params = load_point(self.run_dir / end["point"], device)
            buffers = (
                load_point(self.run_dir / end["buffers"], device) if end.get("buffers") else {}
            )
            if (self.run_dir / FIXED).is_file():
                fixed = load_point(self.run_dir / FIXED, device)
        else:
            raise ConfigError("this result holds no points (run it with out=...)")
        return Point(dict(params), dict(buffers), dict(fixed), source or str(self.run_dir), meta)

    def load_into(self, module: Any, branch: str | None = None, stage: str | None = None) -> Any:
        """Copy the weights at the end of ``branch`` (default: the last branch) into ``module``.

        ``stage``: that stage of the branch's path instead of its last (a trunk stage too).
        Parameters that were frozen get the values the run started with; the module's buffers
        (BatchNorm statistics) are those the run had at that point.
        ``module`` must have the run's parameter names and shapes (a new instance of the
        run's model class). Returns the module, in eval mode.
        """
        from fipframe.eval.points import load_module

        return load_module(module, self.point(branch, stage, source="load_into")).eval()

    # -- files -----------------------------------------------------------------------------
    def save(self) -> None:
        if self.run_dir is None:
            return
        from fipframe.traversal.artifact import RunDir

        rd = RunDir(self.run_dir)
        rd.write_json("summary.json", self.to_dict())
        rd.write_text("results.txt", self.table() + "\n")
        self.plot(self.run_dir / "accuracy.png")

    def label(self, branch: str) -> str:
        """``branch (method)``: the method of the branch's last stage, when the plan has it."""
        stages = (self.plan or {}).get(branch) or []
        method = stages[-1].get("label") if stages else None
        return f"{branch} ({method})" if method and branch != TRUNK else branch

    def plot(self, path: str | Path) -> Path:
        """The run on one figure: accuracy on the first task along every path (retention: the
        shared stages drawn once), average accuracy over the tasks learned so far, and the two
        quantities that define a FIP, the output divergence on stored inputs and the path's
        length in the metric. Written as PNG (200 dpi) and SVG beside it."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        branches = [b for b in self.branches if b != TRUNK]
        trunk = [r for r in self.records if r["branch"] == TRUNK]
        trunk_end = max((r["global_step"] for r in trunk), default=0)
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        fig, axes = plt.subplots(2, 2, figsize=(10, 6.6), sharex=True)
        (ax_first, ax_avg), (ax_div, ax_len) = axes
        first = self.task_names[0] if self.task_names else "task 0"

        def series(recs: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
            pts = [(r["global_step"], r["metrics"][key]) for r in recs if key in r["metrics"]]
            return [p[0] for p in pts], [p[1] for p in pts]

        def learned_avg(recs: list[dict[str, Any]]) -> tuple[list[int], list[float]]:
            seen: list[int] = []
            xs, ys = [], []
            for r in recs:
                t = r.get("task")
                if t is not None and int(t) not in seen:
                    seen.append(int(t))
                accs = [r["metrics"].get(f"acc/test/task_{j}") for j in seen]
                if accs and all(a is not None for a in accs):
                    xs.append(r["global_step"])
                    ys.append(100 * sum(accs) / len(accs))
            return xs, ys

        drawn: set[Any] = set()
        if trunk:  # the shared stages, once, in grey
            xs, ys = series(trunk, "acc/test/task_0")
            ax_first.plot(xs, [100 * y for y in ys], color="0.45", lw=2, label="shared stages")
            ax_avg.plot(*learned_avg(trunk), color="0.45", lw=2)
        for i, b in enumerate(branches):
            own = [r for r in self.records if r["branch"] == b]
            c = colours[i % len(colours)]
            xs, ys = series(trunk[-1:] + own, "acc/test/task_0")  # on from the trunk's end
            ax_first.plot(xs, [100 * y for y in ys], color=c, lw=1.6, label=self.label(b))
            seen_trunk = [r for r in trunk if r.get("task") is not None][-1:]
            ax_avg.plot(*learned_avg(seen_trunk + own), color=c, lw=1.6)
            for ax, key in ((ax_div, "loss/divergence"), (ax_len, "path/length")):
                xs, ys = series(own, key)
                if xs:
                    ax.plot(xs, ys, color=c, lw=1.6)
                    drawn.add(ax)
        for ax, title in (
            (ax_first, f"retention: test accuracy on {first} (%)"),
            (ax_avg, "average test accuracy over the tasks learned so far (%)"),
            (ax_div, "output divergence on the stored inputs (each branch's metric)"),
            (ax_len, "path length in the metric (cumulative, per stage)"),
        ):
            ax.set_title(title, fontsize=10)
            ax.grid(alpha=0.3)
            if trunk_end and branches:
                ax.axvline(trunk_end, color="0.6", ls="--", lw=1)
        for ax in (ax_first, ax_avg):
            ax.set_ylim(-2, 102)
        for ax in (ax_div, ax_len):
            ax.set_xlabel("step along the path")
            if ax not in drawn:
                ax.text(0.5, 0.5, "no stage with a metric", ha="center", va="center",
                        transform=ax.transAxes, color="0.5")  # fmt: skip
        ax_first.legend(loc="lower left", fontsize=8)
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, dpi=200)
        fig.savefig(out.with_suffix(".svg"))
        plt.close(fig)
        return out
