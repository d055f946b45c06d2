"""Continual learning: every method on the same data, memory, model and steps; a results table.

Each (sequence, method, seed) runs in its own process (``--worker``), so its wall time and peak
resident memory are its own. All methods share the seed's initial weights and batches for the
first task; they differ from the second task on. Hyper-parameters were set once (FIP's alpha
and divergence on the validation split of Split-MNIST, seed 0, see docs/results/continual.md);
nothing was chosen on test accuracy.

Usage:
    python bench/continual.py [--seeds 0 1 2] [--sequences split permuted]
        [--out docs/results/continual.md] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from _report import write_keeping

ROOT = Path(__file__).resolve().parent.parent
NOTES = "## What we learned"
GRAD = {"kind": "gradient", "lr": 1e-3}

# objectives (and step rule) of every stage after the first; the first stage is task_ce alone
# (plus SI's weight-0 observer, which only measures importance along the first task's path)
METHODS: dict[str, dict] = {
    "fine-tuning": {"objectives": ["task_ce"]},
    "joint (upper)": {"objectives": ["joint_ce"]},
    "EWC": {"objectives": ["task_ce", {"kind": "ewc", "weight": 1000.0}]},
    "SI": {"objectives": ["task_ce", {"kind": "si", "weight": 1.0}]},
    "LwF": {"objectives": ["task_ce", "lwf"]},
    "ER": {"objectives": ["task_ce", "replay_ce"]},
    "DER++": {"objectives": ["task_ce", {"kind": "der", "weight": 0.2}, "replay_ce"]},
    "FIP penalty (L2 logits)": {
        "objectives": ["task_ce"],
        "integrator": {"kind": "penalty", "lr": 1e-3, "alpha": 1.0},
        "metric": "l2",
    },
    "FIP penalty (KL)": {
        "objectives": ["task_ce"],
        "integrator": {"kind": "penalty", "lr": 1e-3, "alpha": 1000.0},
        "metric": "kl",
    },
    "FIP penalty (Bhattacharyya)": {
        "objectives": ["task_ce"],
        "integrator": {"kind": "penalty", "lr": 1e-3, "alpha": 100.0},
        "metric": "bhattacharyya",
    },
    "FIP eps_step (KL)": {
        "objectives": ["task_ce"],
        "integrator": {"kind": "eps_step", "eps": 0.1, "alpha": 10.0},
        "metric": "kl",
    },
    "FIP natural (KL)": {
        "objectives": ["task_ce"],
        "integrator": {"kind": "natural", "eps": 0.1, "cg_iters": 10, "damping": 1e-3},
        "metric": "kl",
    },
}
SEQUENCES = {
    "split": {
        "title": "Split-MNIST, 5 tasks of 2 digits, class-incremental (one 10-way head)",
        "data": {"kind": "split_mnist", "tasks": [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]},
        "steps": 500,
        "skip": (),
    },
    "permuted": {
        "title": "Permuted-MNIST, 10 tasks (10k training images each)",
        "data": {"kind": "permuted_mnist", "n_tasks": 10},
        "steps": 300,
        "skip": ("FIP natural (KL)",),  # ten times the cost of a penalty step; Split only
    },
}


def config(
    sequence: str,
    method: str,
    seed: int,
    steps: int,
    memory: int,
    selection: str = "class_balanced",
) -> dict:
    seq = SEQUENCES[sequence]
    data = seq["data"]
    n = len(data["tasks"]) if "tasks" in data else data["n_tasks"]
    spec = METHODS[method]
    first = {
        "name": "task0",
        "task": 0,
        "steps": steps,
        "integrator": GRAD,
        "objectives": ["task_ce", {"kind": "si", "weight": 0.0}],
    }
    later = [
        {
            "name": f"task{t}",
            "task": t,
            "steps": steps,
            "integrator": spec.get("integrator", GRAD),
            "objectives": spec["objectives"],
            **({"metric": spec["metric"]} if "metric" in spec else {}),
        }
        for t in range(1, n)
    ]
    return {
        "name": f"{sequence}-s{seed}",
        "model": {"kind": "mlp", "hidden": [400, 400]},
        "data": data,
        "memory": {"size": memory, "selection": selection},
        "run": {"seed": seed, "chunk": steps, "progress": "off"},
        "stages": [first, *later],
    }


def worker(
    sequence: str,
    method: str,
    seed: int,
    steps: int,
    memory: int,
    out: str,
    selection: str = "class_balanced",
) -> None:
    import fipframe

    t0 = time.perf_counter()
    result = fipframe.run(config(sequence, method, seed, steps, memory, selection))
    wall = time.perf_counter() - t0
    ends = [r for r in result.records if r["kind"] == "stage_end"]
    times = [b["time"] - a["time"] for a, b in zip(ends, ends[1:], strict=False)]
    learned, rows = result.matrix("trunk")
    payload = {
        "matrix": rows,
        "val": result.continual("trunk", "val"),
        "test": result.continual("trunk", "test"),
        "time_per_task": sum(times) / max(len(times), 1),  # tasks after the first
        "wall": wall,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    Path(out).write_text(json.dumps(payload))


def mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sequences", nargs="+", default=list(SEQUENCES), choices=list(SEQUENCES))
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--memory", type=int, default=500)
    ap.add_argument(
        "--selection", default="class_balanced", choices=["class_balanced", "random", "reservoir"]
    )
    ap.add_argument("--steps", type=int, default=None, help="steps per task (default per sequence)")
    ap.add_argument("--out", default=str(ROOT / "docs/results/continual.md"))
    ap.add_argument("--raw", default=str(ROOT / "runs/continual.json"))
    ap.add_argument(
        "--worker", nargs=7, metavar=("SEQ", "METHOD", "SEED", "STEPS", "MEM", "SEL", "OUT")
    )
    args = ap.parse_args()
    if args.worker:
        seq, method, seed, steps, memory, selection, out = args.worker
        worker(seq, method, int(seed), int(steps), int(memory), out, selection)
        return
    suffix = "" if args.selection == "class_balanced" else f"|{args.selection}"

    raw_path = Path(args.raw)
    raw: dict = json.loads(raw_path.read_text()) if raw_path.exists() else {}
    tmp = Path(tempfile.mkdtemp())
    for sequence in args.sequences:
        steps = args.steps or SEQUENCES[sequence]["steps"]
        for seed in args.seeds:
            for method in args.methods:
                if method in SEQUENCES[sequence]["skip"]:
                    continue
                key = f"{sequence}|{method}|{seed}|{steps}|{args.memory}{suffix}"
                if key in raw:
                    continue  # finished in an earlier invocation (the bench resumes)
                out = tmp / "one.json"
                cmd = [sys.executable, __file__, "--worker", sequence, method, str(seed)]
                cmd += [str(steps), str(args.memory), args.selection, str(out)]
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, env=dict(os.environ, PYTHONHASHSEED="0"))
                raw[key] = json.loads(out.read_text())
                raw_path.parent.mkdir(parents=True, exist_ok=True)
                raw_path.write_text(json.dumps(raw))
                acc = raw[key]["test"]["acc"]
                print(
                    f"{sequence:8s} seed {seed} {method:28s} ACC {100 * acc:6.2f}  "
                    f"{time.perf_counter() - t0:6.1f} s",
                    flush=True,
                )
    write_report({k: v for k, v in raw.items() if k.count("|") == 4 + bool(suffix)}, args)


def _runs(raw: dict, args: argparse.Namespace, sequence: str, method: str) -> list[dict]:
    """The finished runs of one method on one sequence at this invocation's settings."""
    steps = args.steps or SEQUENCES[sequence]["steps"]
    return [
        v
        for k, v in raw.items()
        if k.split("|")[:2] == [sequence, method]
        and k.split("|")[3:5] == [str(steps), str(args.memory)]
        and int(k.split("|")[2]) in args.seeds
    ]


def write_report(raw: dict, args: argparse.Namespace) -> None:
    import torch

    lines = [
        "# Continual learning: every method in one framework",
        "",
        f"Command: `{' '.join(['python bench/continual.py', *sys.argv[1:]])}`. "
        f"Machine: {os.cpu_count()} CPU threads ({platform.machine()}), torch {torch.__version__}, "
        f"no GPU. Date: {date.today().isoformat()}.",
        "",
        "MLP 784-400-400-10, Adam 1e-3, batch 128 new examples per step (+128 stored where a "
        f"method uses the memory), memory {args.memory} examples shared by every method "
        f"({args.selection.replace('_', '-')} selection; FIP reads the stored inputs only, ER and "
        "DER++ also their labels, DER++ the outputs recorded when they were stored). Every method "
        "starts the second task from the same first-task network. Mean +- std over seeds of "
        "test accuracy (%): ACC = average over all tasks after the last, BWT = backward "
        "transfer, F = forgetting. Time per task: wall seconds per task after the first, in "
        "its own process (includes evaluation at each task's end); peak RSS: that process's "
        "peak resident memory (Python, torch and the data included).",
        "",
    ]
    for sequence in args.sequences:
        steps = args.steps or SEQUENCES[sequence]["steps"]
        lines += [f"## {SEQUENCES[sequence]['title']}", "", f"{steps} steps per task.", ""]
        lines += [
            "| method | ACC (%) | BWT (%) | F (%) | val ACC (%) | time/task (s) | peak RSS (MiB) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for method in args.methods:
            runs = _runs(raw, args, sequence, method)
            if not runs:
                continue

            def cell(vals: list[float], scale: float = 100.0, digits: int = 2) -> str:
                m, s = mean_std([scale * v for v in vals])
                return f"{m:.{digits}f} +- {s:.{digits}f}"

            lines.append(
                f"| {method} | {cell([r['test']['acc'] for r in runs])} "
                f"| {cell([r['test'].get('bwt', 0.0) for r in runs])} "
                f"| {cell([r['test'].get('forgetting', 0.0) for r in runs])} "
                f"| {cell([r['val']['acc'] for r in runs])} "
                f"| {cell([r['time_per_task'] for r in runs], 1.0, 1)} "
                f"| {mean_std([r['peak_rss_mib'] for r in runs])[0]:.0f} |"
            )
        lines.append("")
    lines += ["![average accuracy over the tasks seen so far](../img/continual.png)", ""]
    write_keeping(Path(args.out), "\n".join(lines), NOTES)
    print(f"wrote {args.out}")
    plot(raw, args)


def plot(raw: dict, args: argparse.Namespace) -> None:
    """Average test accuracy over the tasks seen so far, after each task, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seqs = args.sequences
    fig, axes = plt.subplots(1, len(seqs), figsize=(6.2 * len(seqs), 4.2), squeeze=False)
    colours = plt.get_cmap("tab20").colors
    for ax, sequence in zip(axes[0], seqs, strict=True):
        for index, method in enumerate(args.methods):
            runs = [r["matrix"] for r in _runs(raw, args, sequence, method)]
            if not runs:
                continue
            n = len(runs[0])
            curve = [
                sum(sum(m[i][: i + 1]) / (i + 1) for m in runs) / len(runs) * 100 for i in range(n)
            ]
            style = "-" if method.startswith("FIP") else "--"
            ax.plot(
                range(1, n + 1),
                curve,
                style,
                marker="o",
                ms=3,
                lw=1.5,
                label=method,
                color=colours[(2 * index) % 20 + (2 * index) // 20],
            )
            ax.set_xticks(range(1, n + 1))
        ax.set_title(SEQUENCES[sequence]["title"].split(",")[0])
        ax.set_xlabel("tasks learned")
        ax.set_ylabel("test accuracy on tasks so far (%)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()  # the first sequence has every method
    fig.legend(handles, labels, fontsize=7, loc="center right")
    fig.tight_layout(rect=(0, 0, 0.83, 1))
    out = ROOT / "docs/img/continual.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
