"""Across runs: mean +- std tables over seeds, lead/tie/loss by a stated rule, one plot.

``fipframe report RUN RUN ...`` and ``fipframe run --seeds ...`` use :class:`Comparison`. A
branch's numbers are aggregated over the runs in which it finished; the table says how many.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fipframe.errors import ConfigError
from fipframe.eval.results import TRUNK, RunResult


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def outcome(a: Sequence[float], b: Sequence[float]) -> str:
    """lead / tie / loss of ``a`` against ``b``: a leads when its mean exceeds b's by more than
    the larger of the two seed standard deviations ("n/a" when either has fewer than 2 runs)."""
    if len(a) < 2 or len(b) < 2:  # no spread to judge a difference against
        return "n/a"
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    if ma - mb > max(sa, sb):
        return "lead"
    if mb - ma > max(sa, sb):
        return "loss"
    return "tie"


def _differences(run_dirs: Sequence[str | Path]) -> list[str]:
    """Config fields (dotted paths, at most 6 named) that differ among the runs, run.seed and
    the run's name aside: seeds of one config have none."""
    from fipframe.configfile import read_file
    from fipframe.traversal.integrity import diff, watch_only

    configs = []
    for d in run_dirs:
        path = Path(d) / "config.yaml"
        if path.is_file():
            c = read_file(path)
            c.get("run", {}).pop("seed", None)
            c.pop("name", None)
            configs.append(c)
    found: list[str] = []
    for other in configs[1:]:
        for where, _, _ in diff(configs[0], other):
            if where not in found and not watch_only(where):
                found.append(where)
    return found[:6] + ([f"... ({len(found) - 6} more)"] if len(found) > 6 else [])


def _cell(xs: Sequence[float], scale: float = 100.0) -> str:
    if not xs:
        return "-"
    m, s = mean_std(xs)
    return f"{scale * m:.2f} ± {scale * s:.2f}"


@dataclass
class Comparison:
    results: list[RunResult]
    #: fields other than run.seed in which the runs' configs differ (said above the table)
    differences: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, run_dirs: Sequence[str | Path]) -> Comparison:
        results = [RunResult.load(d) for d in run_dirs]
        names = {tuple(r.task_names) for r in results}
        if len(names) > 1:
            raise ConfigError(
                "report: the runs have different tasks ("
                + " vs ".join(", ".join(n) for n in sorted(names))
                + "); compare runs of one task sequence"
            )
        return cls(results, _differences(run_dirs))

    @property
    def task_names(self) -> list[str]:
        return self.results[0].task_names if self.results else []

    @property
    def branches(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.results:
            seen.update(dict.fromkeys(r.branches))
        return list(seen)

    def finals(self, branch: str) -> list[list[float]]:
        """Per-task test accuracy at the branch's end, one row per run where it finished."""
        rows = [r.accuracies(branch) for r in self.results if branch in r.branches]
        return [a for a in rows if a is not None]

    def averages(self, branch: str) -> list[float]:
        return [sum(a) / len(a) for a in self.finals(branch)]

    def table(self, baseline: str | None = None) -> str:
        n_runs = len(self.results)
        if baseline is not None and baseline not in self.branches:
            raise ConfigError(
                f"--baseline: no branch {baseline!r} in these runs; branches: "
                + ", ".join(self.branches)
            )
        heads = [*self.task_names, "average", "runs"]
        if baseline:
            heads.append(f"vs {baseline}")
        rows = []
        for b in self.branches:
            finals = self.finals(b)
            cells = [_cell([f[i] for f in finals]) for i in range(len(self.task_names))]
            cells += [_cell(self.averages(b)), f"{len(finals)}/{n_runs}"]
            if baseline:
                cells.append(
                    "-" if b == baseline else outcome(self.averages(b), self.averages(baseline))
                )
            rows.append((self.results[0].label(b) if b != TRUNK else b, cells))
        width = max([len(r[0]) for r in rows] + [6])
        cw = max([len(h) for h in heads] + [len(c) for _, cs in rows for c in cs]) + 2
        lines = [
            f"test accuracy (%), mean ± sample std over {n_runs} runs",
            *(
                [f"note: the runs differ beyond run.seed, in {', '.join(self.differences)}"]
                if self.differences
                else []
            ),
            "method".ljust(width) + "".join(h.rjust(cw) for h in heads),
        ]
        lines += [name.ljust(width) + "".join(c.rjust(cw) for c in cs) for name, cs in rows]
        cl = {b: [r.continual(b) for r in self.results if r.finished(b)] for b in self.branches}
        if any(m and "bwt" in m[0] for m in cl.values()):
            lines += ["", "over the tasks each path learned (%): ACC, BWT, forgetting"]
            lines.append("method".ljust(width) + "".join(h.rjust(cw) for h in ("ACC", "BWT", "F")))
            for b, ms in cl.items():
                if ms and "bwt" in ms[0]:
                    cells = [_cell([m[k] for m in ms]) for k in ("acc", "bwt", "forgetting")]
                    lines.append(b.ljust(width) + "".join(c.rjust(cw) for c in cells))
        if baseline:
            lines += [
                "",
                f"vs {baseline}: lead/loss when the averages' means differ by more than the larger "
                "of the two sample stds, tie otherwise",
            ]
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """Mean (line) and +- std (band) over the runs of every branch on two panels: accuracy
        on the first task and average accuracy over all tasks, shared stages once in grey.
        PNG at 200 dpi and SVG beside it."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True, sharey=True)
        first = self.task_names[0] if self.task_names else "task 0"
        for ax, key, title in (
            (axes[0], "acc/test/task_0", f"retention: test accuracy on {first} (%)"),
            (axes[1], "acc/test/average", "average test accuracy over all tasks (%)"),
        ):
            for i, b in enumerate([TRUNK] + [x for x in self.branches if x != TRUNK]):
                xs, lo, mid, hi = self._band(b, key)
                if not xs:
                    continue
                c = "0.45" if b == TRUNK else colours[(i - 1) % len(colours)]
                label = "shared stages" if b == TRUNK else self.results[0].label(b)
                ax.plot(xs, mid, color=c, lw=2 if b == TRUNK else 1.6, label=label)
                ax.fill_between(xs, lo, hi, color=c, alpha=0.2, lw=0)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("step along the path")
            ax.set_ylim(-2, 102)
            ax.grid(alpha=0.3)
        axes[0].legend(loc="lower left", fontsize=8)
        fig.suptitle(f"mean ± std over {len(self.results)} runs", fontsize=10)
        fig.tight_layout()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=200)
        fig.savefig(out.with_suffix(".svg"))
        plt.close(fig)
        return out

    def _band(self, branch: str, key: str) -> tuple[list[int], list[float], ...]:  # type: ignore[misc]
        """Steps logged by every run of ``branch``'s own records, with mean - std, mean,
        mean + std of ``key`` (in %) at each."""
        per_run = []
        for r in self.results:
            own = {
                rec["global_step"]: rec["metrics"][key]
                for rec in r.records
                if rec["branch"] == branch and key in rec["metrics"]
            }
            if own and branch != TRUNK:  # drawn on from the shared stages' last point
                trunk = [x for x in r.records if x["branch"] == TRUNK and key in x["metrics"]]
                if trunk:
                    own.setdefault(trunk[-1]["global_step"], trunk[-1]["metrics"][key])
            if own:
                per_run.append(own)
        if not per_run:
            return [], [], [], []
        steps = sorted(set.intersection(*(set(p) for p in per_run)))
        lo, mid, hi = [], [], []
        for s in steps:
            vals = [100 * p[s] for p in per_run if not math.isnan(p[s])]
            m, sd = mean_std(vals) if vals else (math.nan, 0.0)
            lo.append(m - sd)
            mid.append(m)
            hi.append(m + sd)
        return steps, lo, mid, hi

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": [str(r.run_dir) for r in self.results],
            "tasks": self.task_names,
            "branches": {
                b: {"final": self.finals(b), "average": self.averages(b)} for b in self.branches
            },
        }
