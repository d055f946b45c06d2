"""Compare FIP step rules: retention of old tasks against accuracy on the new one.

Every rule continues from the same trunk network (one run, one branch per rule and setting),
with the same memory (500 stored images, inputs only) and the same number of steps. A small
grid per rule is chosen on the validation split (average over tasks); the table reports that
setting's test accuracy and the branch's wall time, so unequal compute per step is visible.

Usage: python bench/step_rules.py [--out docs/results/step_rules.md] [--steps 1000]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import tempfile
from pathlib import Path

import torch

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
    "natural (CG, 10 it.)": [
        {"integrator": {"kind": "natural", "eps": e, "cg_iters": 10, "damping": 1e-3}, "metric": KL}
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


def config(data: dict, steps: int) -> dict:
    n = len(data["tasks"]) if "tasks" in data else data["n_tasks"]
    stage = {"steps": steps, "objectives": ["task_ce"]}
    branches = {}
    for rule, settings in GRID.items():
        for i, extra in enumerate(settings):
            branches[f"r{list(GRID).index(rule)}s{i}"] = [
                dict(stage, name=f"task{t}", task=t, **extra) for t in range(1, n)
            ]
    return {
        "name": "step-rules",
        "model": {"kind": "mlp", "hidden": [400, 400]},
        "data": data,
        "memory": {"size": 500},
        "run": {"seed": 0, "chunk": 100, "progress": "off"},
        "stages": [dict(stage, name="task0", task=0, integrator={"kind": "gradient"})],
        "branches": branches,
    }


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
        "wall time of the rule's branch: steps are equal, compute per step is not.",
        "",
    ]
    for title, data in SEQUENCES.items():
        with tempfile.TemporaryDirectory() as tmp:
            result = fipframe.run(fipframe.load_config(config(data, args.steps)), out=tmp)
        ends = {r["branch"]: r for r in result.records if r["kind"] == "stage_end"}
        prev_time: dict[str, float] = {}  # time of the record before each branch's first
        for before, record in zip(result.records, result.records[1:], strict=False):
            if record["branch"] != before["branch"]:
                prev_time.setdefault(record["branch"], before["time"])
        lines += [
            f"## {title}",
            "",
            "| rule | chosen | old tasks | new task | average | time (s) |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for k, (rule, settings) in enumerate(GRID.items()):
            names = [f"r{k}s{i}" for i in range(len(settings))]
            best = max(names, key=lambda b: ends[b]["metrics"]["acc/val/average"])
            m = ends[best]["metrics"]
            n = len(result.task_names)
            old = sum(m[f"acc/test/task_{i}"] for i in range(n - 1)) / (n - 1)
            new = m[f"acc/test/task_{n - 1}"]
            chosen = settings[names.index(best)]["integrator"]
            knob = ", ".join(f"{key} {v}" for key, v in chosen.items() if key in ("alpha", "eps"))
            took = ends[best]["time"] - prev_time[best]
            lines.append(
                f"| {rule} | {knob or '-'} | {100 * old:.2f} | {100 * new:.2f} | "
                f"{100 * m['acc/test/average']:.2f} | {took:.0f} |"
            )
            print(lines[-1], flush=True)
        lines.append("")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
