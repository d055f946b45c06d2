"""Compare FIP step rules: retention of old tasks against accuracy on the new one.

Every rule continues from the same trunk network (one run, one branch per rule and setting),
with the same memory (500 stored images, inputs only) and the same number of steps. A small
grid per rule is chosen on the validation split (average over tasks); the table reports that
setting's test accuracy and the branch's wall time, so unequal compute per step is visible.

Usage: python bench/step_rules.py [--out docs/results/step_rules.md] [--steps 1000]

Cost: the natural rule solves to its CG tolerance, about 55-70 metric-vector products per step
along this path at damping 0.1 (2026-12-02), so its two settings take several CPU-hours at 1000
steps on a 2-core machine; the other rules take minutes.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import tempfile
from pathlib import Path

import torch
from _report import write_keeping

import fipframe

KL = "kl"
GRID = {
    "fine-tuning (gradient)": [{"integrator": {"kind": "gradient", "lr": 1e-3}}],
    "penalty (FIP, KL)": [
        {"integrator": {"kind": "penalty", "lr": 1e-3, "alpha": a}, "metric": KL}
        for a in (1.0, 10.0)
    ],
    "eps_step (KL)": [
        {"integrator": {"kind": "eps_step", "eps": e, "alpha": 10.0}, "metric": KL}
        for e in (0.1, 0.3)
    ],
    "natural (CG to residual 1e-2, damping 0.1)": [
        {"integrator": {"kind": "natural", "eps": e, "damping": 0.1}, "metric": KL}
        for e in (0.1, 0.3)
    ],
    "projected (rank 20)": [
        {"integrator": {"kind": "projected", "eps": e, "rank": 20, "refresh": 50}, "metric": KL}
        for e in (0.1, 0.3)
    ],
}
SEQUENCES = {
    "Split-MNIST, 2 tasks (0-4, 5-9), class-incremental": {
        "kind": "split_mnist",
        "tasks": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]],
    },
    "Permuted-MNIST, 3 tasks (10k train images each)": {"kind": "permuted_mnist", "n_tasks": 3},
}


def n_tasks(data: dict) -> int:
    return len(data["tasks"]) if "tasks" in data else data["n_tasks"]


def config(data: dict, steps: int, only: dict[str, tuple[dict, int]] | None = None) -> dict:
    """The grid (every rule and setting for ``steps`` per task), or ``only`` the given
    branches: name -> (setting, steps per task)."""
    n = n_tasks(data)
    stage = {"steps": steps, "objectives": ["task_ce"]}
    if only is None:
        only = {
            f"r{k}s{i}": (extra, steps)
            for k, settings in enumerate(GRID.values())
            for i, extra in enumerate(settings)
        }
    branches = {
        name: [dict(stage, name=f"task{t}", task=t, steps=n_steps, **extra) for t in range(1, n)]
        for name, (extra, n_steps) in only.items()
    }
    return {
        "name": "step-rules",
        "model": {"kind": "mlp", "hidden": [400, 400]},
        "data": data,
        "memory": {"size": 500},
        "run": {"seed": 0, "chunk": 100, "progress": "off"},
        "stages": [dict(stage, name="task0", task=0, integrator={"kind": "gradient"})],
        "branches": branches,
    }


def _run(cfg: dict) -> tuple[fipframe.RunResult, dict[str, float]]:
    """Run a config; the wall time of each branch (from the record before its first one to
    its last stage end)."""
    with tempfile.TemporaryDirectory() as tmp:
        result = fipframe.run(fipframe.load_config(cfg), out=tmp)
    start: dict[str, float] = {}
    end: dict[str, float] = {}
    for before, record in zip(result.records, result.records[1:], strict=False):
        if record["branch"] != before["branch"]:
            start.setdefault(record["branch"], before["time"])
    for record in result.records:
        if record["kind"] == "stage_end":
            end[record["branch"]] = record["time"]
    return result, {b: end[b] - t for b, t in start.items()}


def _knob(setting: dict) -> str:
    chosen = setting["integrator"]
    return ", ".join(f"{key} {v}" for key, v in chosen.items() if key in ("alpha", "eps")) or "-"


def _row(rule: str, second: str, m: dict, took: str) -> str:
    n = sum(1 for key in m if key.startswith("acc/test/task_"))
    old = sum(m[f"acc/test/task_{i}"] for i in range(n - 1)) / (n - 1)
    new = m[f"acc/test/task_{n - 1}"]
    avg = m["acc/test/average"]
    return f"| {rule} | {second} | {100 * old:.2f} | {100 * new:.2f} | {100 * avg:.2f} | {took} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="docs/results/step_rules.md")
    ap.add_argument("--steps", type=int, default=1000)
    args = ap.parse_args()
    lines = [
        "# Step rules compared",
        "",
        f"Command: `python bench/step_rules.py --steps {args.steps}`. Machine: "
        f"{torch.get_num_threads()} CPU threads ({platform.machine()}), torch {torch.__version__}, "
        f"no GPU. Date: {datetime.date.today()}.",
        "",
        "MLP 784-400-400-10, one shared head, Adam 1e-3 for the first task, then every rule "
        f"from that same network for {args.steps} steps per task (batch 128 new + 128 stored "
        "inputs, memory 500, KL metric). Per rule, the setting with the best validation "
        "average was kept (grid in `bench/step_rules.py`); test accuracy (%) shown. `old` is "
        "the mean over earlier tasks after the last task, `new` the last task. Time is the "
        "wall time of the rule's branch: steps are equal, compute per step is not. The "
        "second table of each sequence gives every chosen setting the wall time the penalty "
        "rule took (steps per task scaled by the measured time per step), i.e. equal compute.",
        "",
    ]
    for title, data in SEQUENCES.items():
        result, took = _run(config(data, args.steps))
        ends = {r["branch"]: r for r in result.records if r["kind"] == "stage_end"}
        lines += [
            f"## {title}",
            "",
            f"Equal steps ({args.steps} per task):",
            "",
            "| rule | chosen | old tasks | new task | average | time (s) |",
            "|---|---|---:|---:|---:|---:|",
        ]
        chosen: dict[str, tuple[dict, float]] = {}  # rule -> (setting, seconds per step)
        for k, (rule, settings) in enumerate(GRID.items()):
            names = [f"r{k}s{i}" for i in range(len(settings))]
            best = max(names, key=lambda b: ends[b]["metrics"]["acc/val/average"])
            setting = settings[names.index(best)]
            chosen[rule] = (setting, took[best] / (args.steps * (n_tasks(data) - 1)))
            lines.append(_row(rule, _knob(setting), ends[best]["metrics"], f"{took[best]:.0f}"))
            print(lines[-1], flush=True)
        per_step = chosen["penalty (FIP, KL)"][1]
        only = {
            f"r{k}": (setting, max(1, round(args.steps * per_step / t)))
            for k, (setting, t) in enumerate(chosen.values())
        }
        result, took = _run(config(data, args.steps, only))
        ends = {r["branch"]: r for r in result.records if r["kind"] == "stage_end"}
        lines += [
            "",
            f"Equal compute (the penalty rule's time for {args.steps} steps per task):",
            "",
            "| rule | steps per task | old tasks | new task | average | time (s) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for k, rule in enumerate(chosen):
            name = f"r{k}"
            lines.append(_row(rule, str(only[name][1]), ends[name]["metrics"], f"{took[name]:.0f}"))
            print(lines[-1], flush=True)
        lines.append("")
    write_keeping(Path(args.out), "\n".join(lines), "## Reading")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
