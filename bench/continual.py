"""Continual learning: every method on the same data, memory, model and steps; a results table.

Each (sequence, method, configuration, seed) runs in its own process (``--worker``), so its wall
time and peak resident memory are its own. All methods share the seed's initial weights and
batches for the first task; they differ from the second task on.

Tuning: every method gets the same budget, ``len(GRID[method])`` = 4 configurations, tried on
seed 0 and ranked by the validation split's ACC (never test). The chosen configuration then
runs on the remaining seeds; seed 0's run of it is reused. The page lists every configuration
tried and its validation ACC.

Usage:
    python bench/continual.py [--seeds 0 1 2] [--sequences split permuted]
        [--methods ...] [--jobs 2] [--threads 1] [--out docs/results/continual.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

from _report import mean_std, outcome, write_keeping

ROOT = Path(__file__).resolve().parent.parent
NOTES = "## What we learned"
BUDGET = 4  # configurations per method, the same for every method


def _grad(lr: float = 1e-3) -> dict:
    return {"kind": "gradient", "lr": lr}


def _fip(kind: str, metric: str, **integrator) -> dict:
    return {"objectives": ["task_ce"], "integrator": {"kind": kind, **integrator}, "metric": metric}


# per method, its BUDGET configurations: the objectives (and step rule) of every stage after the
# first; the first stage is task_ce alone (plus SI's weight-0 observer, which only measures
# importance along the first task's path)
GRID: dict[str, list[dict]] = {
    "fine-tuning": [
        {"objectives": ["task_ce"], "integrator": _grad(lr)} for lr in (1e-4, 3e-4, 1e-3, 3e-3)
    ],
    "joint (upper)": [
        {"objectives": ["joint_ce"], "integrator": _grad(lr)} for lr in (1e-4, 3e-4, 1e-3, 3e-3)
    ],
    "EWC": [
        {"objectives": ["task_ce", {"kind": "ewc", "weight": w}]} for w in (1e2, 1e3, 1e4, 1e5)
    ],
    "SI": [
        {"objectives": ["task_ce", {"kind": "si", "weight": w}]} for w in (0.1, 1.0, 10.0, 100.0)
    ],
    "LwF": [
        {"objectives": ["task_ce", {"kind": "lwf", "weight": w, "temperature": t}]}
        for w, t in ((1.0, 2.0), (3.0, 2.0), (10.0, 2.0), (1.0, 4.0))
    ],
    "ER": [
        {"objectives": ["task_ce", {"kind": "replay_ce", "weight": w}]}
        for w in (0.5, 1.0, 2.0, 4.0)
    ],
    "DER++": [
        {
            "objectives": [
                "task_ce",
                {"kind": "der", "weight": a},
                {"kind": "replay_ce", "weight": b},
            ]
        }
        for a, b in ((0.1, 0.5), (0.2, 1.0), (0.5, 0.5), (1.0, 1.0))
    ],
    "FIP penalty (L2 logits)": [
        _fip("penalty", "l2", lr=1e-3, alpha=a) for a in (0.3, 1.0, 3.0, 10.0)
    ],
    "FIP penalty (KL)": [
        _fip("penalty", "kl", lr=1e-3, alpha=a) for a in (100.0, 300.0, 1000.0, 3000.0)
    ],
    "FIP penalty (Bhattacharyya)": [
        _fip("penalty", "bhattacharyya", lr=1e-3, alpha=a) for a in (30.0, 100.0, 300.0, 1000.0)
    ],
    "FIP eps_step (KL)": [
        _fip("eps_step", "kl", eps=e, alpha=a)
        for e, a in ((0.05, 10.0), (0.1, 10.0), (0.2, 10.0), (0.1, 100.0))
    ],
    # damping 1 and 10, not smaller: along this path CG needs about 65 iterations per step to
    # reach its tolerance at damping 0.1 (about 30 CPU-minutes per run here), more below it
    "FIP natural (KL)": [
        _fip("natural", "kl", eps=e, damping=d)
        for e, d in ((0.05, 1.0), (0.1, 1.0), (0.05, 10.0), (0.1, 10.0))
    ],
}
assert all(len(v) == BUDGET for v in GRID.values()), "every method gets the same tuning budget"
METHODS = list(GRID)
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
        "skip": ("FIP natural (KL)",),  # a converged solve costs 10-50x a penalty step; Split only
    },
}


def config(
    sequence: str,
    method: str,
    seed: int,
    steps: int,
    memory: int,
    selection: str = "class_balanced",
    choice: int = 0,
    later: int | None = None,
) -> dict:
    """One method's run; ``later`` (if given) is the steps of every task after the first,
    which keeps ``steps`` (equal-compute rows: the same first-task network, fewer steps)."""
    seq = SEQUENCES[sequence]
    data = seq["data"]
    n = len(data["tasks"]) if "tasks" in data else data["n_tasks"]
    spec = GRID[method][choice]
    first = {
        "name": "task0",
        "task": 0,
        "steps": steps,
        "integrator": _grad(),
        "objectives": ["task_ce", {"kind": "si", "weight": 0.0}],
    }
    later = [
        {
            "name": f"task{t}",
            "task": t,
            "steps": later or steps,
            "integrator": spec.get("integrator", _grad()),
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
    choice: int = 0,
    later: int | None = None,
) -> None:
    import torch

    import fipframe

    t0 = time.perf_counter()
    result = fipframe.run(config(sequence, method, seed, steps, memory, selection, choice, later))
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
        "threads": torch.get_num_threads(),
        "config": GRID[method][choice],
    }
    natural = [r["metrics"] for r in ends[1:] if "cg/iters" in r["metrics"]]
    if natural:  # the solver's work, averaged over the tasks after the first
        payload["cg"] = {
            k: sum(m[k] for m in natural) / len(natural)
            for k in ("cg/iters", "cg/residual", "cg/capped")
        }
    Path(out).write_text(json.dumps(payload))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="the first tunes")
    ap.add_argument("--sequences", nargs="+", default=list(SEQUENCES), choices=list(SEQUENCES))
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--memory", type=int, default=500)
    ap.add_argument(
        "--selection", default="class_balanced", choices=["class_balanced", "random", "reservoir"]
    )
    ap.add_argument("--steps", type=int, default=None, help="steps per task (default per sequence)")
    ap.add_argument(
        "--later-steps",
        type=int,
        default=None,
        help="steps of each task after the first (default: --steps); for equal-compute rows",
    )
    ap.add_argument("--jobs", type=int, default=1, help="worker processes side by side")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    ap.add_argument("--out", default=str(ROOT / "docs/results/continual.md"))
    ap.add_argument("--raw", default=str(ROOT / "runs/continual.json"))
    ap.add_argument(
        "--worker",
        nargs=8,
        metavar=("SEQ", "METHOD", "CHOICE", "SEED", "STEPS", "MEM", "SEL", "OUT"),
    )
    args = ap.parse_args()
    if args.worker:
        seq, method, choice, seed, steps, memory, selection, out = args.worker
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        worker(
            seq,
            method,
            int(seed),
            int(steps),
            int(memory),
            out,
            selection,
            int(choice),
            args.later_steps,
        )
        return

    raw_path = Path(args.raw)
    raw: dict = json.loads(raw_path.read_text()) if raw_path.exists() else {}
    scratch = tempfile.TemporaryDirectory(prefix="fipframe-continual-")  # removed at exit
    tmp = Path(scratch.name)

    def one(sequence: str, method: str, choice: int, seed: int) -> dict:
        key = _key(args, sequence, method, choice, seed)
        if key in raw and raw[key].get("config") == GRID[method][choice]:
            return raw[key]  # finished in an earlier invocation (the bench resumes)
        steps = args.steps or SEQUENCES[sequence]["steps"]
        out = tmp / f"{abs(hash(key))}.json"
        cmd = [sys.executable, __file__, "--worker", sequence, method, str(choice), str(seed)]
        cmd += [str(steps), str(args.memory), args.selection, str(out)]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        cmd += ["--later-steps", str(args.later_steps)] if args.later_steps else []
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=dict(os.environ, PYTHONHASHSEED="0"))
        raw[key] = json.loads(out.read_text())
        raw_path.parent.mkdir(parents=True, exist_ok=True)
        raw_path.write_text(json.dumps(raw))  # one writer: the pool's threads only run workers
        print(
            f"{sequence:8s} {method:28s} config {choice} seed {seed}  val ACC "
            f"{100 * raw[key]['val']['acc']:6.2f}  {time.perf_counter() - t0:6.1f} s",
            flush=True,
        )
        return raw[key]

    tune, rest = args.seeds[0], args.seeds[1:]
    with ThreadPoolExecutor(args.jobs) as pool:
        for sequence in args.sequences:
            methods = [m for m in args.methods if m not in SEQUENCES[sequence]["skip"]]
            trials = [(m, c) for m in methods for c in range(BUDGET)]
            list(pool.map(lambda mc, s=sequence: one(s, *mc, tune), trials))
            chosen = {m: best(raw, args, sequence, m) for m in methods}
            finals = [(m, chosen[m], seed) for m in methods for seed in rest]
            list(pool.map(lambda mcs, s=sequence: one(s, *mcs), finals))
    write_report(raw, args)


def _key(args: argparse.Namespace, sequence: str, method: str, choice: int, seed: int) -> str:
    steps = args.steps or SEQUENCES[sequence]["steps"]
    suffix = "" if args.selection == "class_balanced" else f"|{args.selection}"
    if args.later_steps:
        suffix += f"|later{args.later_steps}"
    return f"{sequence}|{method}|c{choice}|{seed}|{steps}|{args.memory}{suffix}"


def best(raw: dict, args: argparse.Namespace, sequence: str, method: str) -> int:
    """The configuration with the best validation ACC on the tuning seed (ties: the first)."""
    scores = [
        raw[_key(args, sequence, method, c, args.seeds[0])]["val"]["acc"] for c in range(BUDGET)
    ]
    return max(range(BUDGET), key=lambda c: (scores[c], -c))


def _runs(raw: dict, args: argparse.Namespace, sequence: str, method: str) -> list[dict]:
    """The chosen configuration's finished runs on one sequence, one per seed."""
    choice = best(raw, args, sequence, method)
    keys = [_key(args, sequence, method, choice, s) for s in args.seeds]
    return [raw[k] for k in keys if k in raw]


def _label(cfg: dict) -> str:
    """A configuration in a few words: its step rule's numbers and its objectives' weights."""
    parts = []
    integ = cfg.get("integrator", {})
    parts += [f"{k} {v:g}" for k, v in integ.items() if k not in ("kind",)]
    for o in cfg["objectives"]:
        if isinstance(o, dict):
            parts += [f"{o['kind']} {k} {v:g}" for k, v in o.items() if k != "kind"]
    return ", ".join(parts) or "defaults"


def _tuned(raw: dict, args: argparse.Namespace, sequence: str, method: str) -> bool:
    """Every configuration of ``method`` ran on the tuning seed, under the present grid."""
    keys = [_key(args, sequence, method, c, args.seeds[0]) for c in range(BUDGET)]
    return all(k in raw and raw[k].get("config") == GRID[method][c] for c, k in enumerate(keys))


def write_report(raw: dict, args: argparse.Namespace) -> None:
    import torch

    threads = sorted({r.get("threads", 2) for r in raw.values()})
    lines = [
        "# Continual learning: every method in one framework",
        "",
        f"Command: `{' '.join(['python bench/continual.py', *sys.argv[1:]])}`. "
        f"Machine: {os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}, "
        f"{'/'.join(map(str, threads))} torch thread(s) per worker, {args.jobs} worker(s) side by "
        f"side, no GPU. Date: {date.today().isoformat()}.",
        "",
        "MLP 784-400-400-10, Adam 1e-3 (unless a row's configuration says otherwise), batch 128 "
        "new examples per step (+128 stored where a method uses the memory), memory "
        f"{args.memory} examples shared by every method "
        f"({args.selection.replace('_', '-')} selection; FIP reads the stored inputs only, ER and "
        "DER++ also their labels, DER++ the outputs recorded when they were stored). Every method "
        "starts the second task from the same first-task network. Tuning: every method tried "
        f"the same {BUDGET} configurations' worth of budget on seed {args.seeds[0]} and kept the "
        "one with the best validation ACC (section 'Tuning' lists them all); test accuracy was "
        "never looked at to choose. Mean +- std over seeds "
        f"{', '.join(map(str, args.seeds))} of test accuracy (%): ACC = average over all tasks "
        "after the last, BWT = backward transfer, F = forgetting. Time per task: wall seconds per "
        "task after the first, in its own process (includes evaluation at each task's end); "
        "peak RSS: that process's peak resident memory (Python, torch and the data included).",
        "",
    ]
    tuning: list[str] = []
    for sequence in args.sequences:
        steps = args.steps or SEQUENCES[sequence]["steps"]
        per = f"{steps} steps per task" + (
            f" for the first, {args.later_steps} for each later one" if args.later_steps else ""
        )
        lines += [f"## {SEQUENCES[sequence]['title']}", "", f"{per}.", ""]
        lines += [
            "| method | ACC (%) | BWT (%) | F (%) | val ACC (%) | time/task (s) | peak RSS (MiB) "
            "| seeds | configuration (chosen on val) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        tuning += [f"### {SEQUENCES[sequence]['title'].split(',')[0]}", ""]
        tuning += ["| method | " + " | ".join(f"config {c}" for c in range(BUDGET)) + " |"]
        tuning += ["|---|" + "---|" * BUDGET]
        accs: dict[str, list[float]] = {}
        for method in args.methods:
            if not _tuned(raw, args, sequence, method):
                continue
            runs = _runs(raw, args, sequence, method)
            choice = best(raw, args, sequence, method)

            def cell(vals: list[float], scale: float = 100.0, digits: int = 2) -> str:
                m, s = mean_std([scale * v for v in vals])
                return f"{m:.{digits}f} +- {s:.{digits}f}"

            accs[method] = [100 * r["test"]["acc"] for r in runs]
            label = _label(GRID[method][choice])
            solved = [r["cg"] for r in runs if "cg" in r]
            if solved:  # the solver's work, averaged over the seeds' tasks after the first
                cg = {k: sum(c[k] for c in solved) / len(solved) for k in solved[0]}
                label += (
                    f" (CG: {cg['cg/iters']:.0f} iterations, residual {cg['cg/residual']:.3f}, "
                    f"capped {100 * cg['cg/capped']:.0f}% of steps)"
                )
            lines.append(
                f"| {method} | {cell([r['test']['acc'] for r in runs])} "
                f"| {cell([r['test'].get('bwt', 0.0) for r in runs])} "
                f"| {cell([r['test'].get('forgetting', 0.0) for r in runs])} "
                f"| {cell([r['val']['acc'] for r in runs])} "
                f"| {cell([r['time_per_task'] for r in runs], 1.0, 1)} "
                f"| {mean_std([r['peak_rss_mib'] for r in runs])[0]:.0f} | {len(runs)} | {label} |"
            )
            trials = [raw[_key(args, sequence, method, c, args.seeds[0])] for c in range(BUDGET)]
            tuning.append(
                f"| {method} | "
                + " | ".join(
                    ("**" if c == choice else "")
                    + f"{_label(GRID[method][c])}: {100 * t['val']['acc']:.2f}"
                    + ("**" if c == choice else "")
                    for c, t in enumerate(trials)
                )
                + " |"
            )
        lines.append("")
        fips = [m for m in accs if m.startswith("FIP")]
        others = [m for m in accs if not m.startswith("FIP")]
        if fips and others:
            short = {m: m.removeprefix("FIP ").replace("penalty ", "") for m in fips}
            lines += [
                "Each FIP row against each other method, ACC (rule: lead when the difference of "
                "the means exceeds the larger of the two seed standard deviations, loss when the "
                "other leads, tie otherwise; with one seed every difference decides). The FIP "
                f"rows are {len(fips)} variants of {BUDGET} configurations each "
                f"({len(fips) * BUDGET} in all): the best of them had more chances than any "
                f"baseline's {BUDGET}, so read a column, not the best cell.",
                "",
                "| against | " + " | ".join(short[m] for m in fips) + " |",
                "|---|" + "---|" * len(fips),
            ]
            for o in others:
                cells = []
                for m in fips:
                    diff = mean_std(accs[m])[0] - mean_std(accs[o])[0]
                    cells.append(f"{outcome(accs[m], accs[o])} ({diff:+.2f})")
                lines.append(f"| {o} | " + " | ".join(cells) + " |")
            lines.append("")
        tuning.append("")
    lines += ["![average accuracy over the tasks seen so far](../img/continual.png)", ""]
    lines += [
        "## Tuning",
        "",
        f"Validation ACC (%) of every configuration tried, seed {args.seeds[0]}; the chosen one in "
        "bold.",
        "",
        *tuning,
    ]
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
            if not _tuned(raw, args, sequence, method):
                continue
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
