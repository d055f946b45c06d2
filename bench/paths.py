"""Paths between two trained networks on MNIST: FIP vs the straight line vs Garipov et al.'s
Bezier curve and polygonal chain, 3 seeds.

Per seed, two networks A and B are trained from different initialisations on all ten digits.
Then every path type joins them:

- linear: ``(1 - t) A + t B`` (no training);
- bezier, polychain: the bend trained by ``fipframe.eval.paths.train_curve``;
- fip: a run that starts at A (``run.init``) with A's training examples stored
  (``memory.learned``), the KL invariance term on them, the task's cross-entropy and
  ``to_network`` toward B ramped up over the stage; its saved points, then the straight rest of
  the way to B (included in the evaluation).

Compute is equal: the FIP's steps forward and backward ``batch + memory_batch`` examples, so
the curves get ``steps x (batch + memory_batch) / batch`` steps of ``batch``. Every trained path
type gets the same tuning budget (``BUDGET`` settings, chosen on seed 0's validation split by
the error barrier). Each path is evaluated at the same 21 evenly spaced points (by Euclidean
length for the FIP), BatchNorm statistics recomputed at each. Barrier = max error along the
path minus the mean of the ends' errors.

    python bench/paths.py                         # small CNN, 3 seeds: ~25 min on 2 CPU cores
    python bench/paths.py --model vgg11           # VGG11 (BN), much longer
    python bench/paths.py --train-steps 60 --path-steps 40 --limit 1000 --seeds 0 --out /tmp/p.md

Raw results go to runs/paths-<model>.json (the bench resumes from it); the page to
docs/results/paths.md (one section per model), keeping the hand-written notes below ``NOTES``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from _report import mean_std, outcome, write_keeping  # noqa: E402

import fipframe  # noqa: E402
from fipframe.eval import paths as P  # noqa: E402
from fipframe.eval.points import path_points, read_point  # noqa: E402

NOTES = "## What we learned"
BUDGET = 2
MODELS = {
    "small_cnn": {"kind": "small_cnn", "channels": [32, 64], "hidden": 128, "batch_norm": True},
    "vgg11": {"kind": "vgg11", "batch_norm": True},
}
GRID = {
    "fip": [{"weight": 0.5, "alpha": 1.0}, {"weight": 2.0, "alpha": 1.0}],
    "bezier": [{"lr": 1e-3}, {"lr": 3e-3}],
    "polychain": [{"lr": 1e-3}, {"lr": 3e-3}],
}
BATCH = 128
POINTS = 21


def base(args: argparse.Namespace, seed: int) -> dict:
    """A network trained on all ten digits (the ends; the others replace ``stages``)."""
    return {
        "model": MODELS[args.model],
        "data": {
            "kind": "split_mnist",
            "tasks": [list(range(10))],
            "train_limit": args.limit,
            "eval_limit": args.eval_limit,
        },
        "memory": {"size": 1000},
        "run": {"seed": seed, "chunk": 50, "progress": "off", "measure_inputs": 0},
        "stages": [
            {
                "name": "train",
                "task": 0,
                "steps": args.train_steps,
                "batch_size": BATCH,
                "integrator": {"kind": "gradient", "lr": 1e-3},
                "objectives": ["task_ce"],
            }
        ],
    }


def fip_config(args: argparse.Namespace, a: Path, b: Path, spec: dict) -> dict:
    cfg = base(args, 0)
    cfg["memory"]["learned"] = [0]
    every = max(1, args.path_steps // 20)  # points are saved at chunk ends
    cfg["run"].update(init=str(a), save_every=every, chunk=every)
    cfg["stages"] = [
        {
            "name": "connect",
            "task": 0,
            "steps": args.path_steps,
            "batch_size": BATCH,
            "memory_batch": BATCH,
            "integrator": {
                "kind": "penalty",
                "lr": 1e-2,
                "alpha": spec["alpha"],
                "optimizer": {"name": "sgd", "momentum": 0.9},
            },
            "metric": "kl",
            "objectives": [
                "task_ce",
                {
                    "kind": "to_network",
                    "target": str(b),
                    "weight": {"start": 0.0, "end": spec["weight"]},
                },
            ],
        }
    ]
    return cfg


def build_path(args, kind: str, spec: dict, a: Path, b: Path, work: Path):
    """The path of ``kind`` at ``spec`` and the seconds it took to make."""
    A, B = read_point(a).params, read_point(b).params
    t0 = time.perf_counter()
    if kind == "linear":
        return P.linear(A, B), 0.0, {}
    if kind == "fip":
        out = work / f"fip-{spec['weight']}-{spec['alpha']}"
        if not (out / "summary.json").exists():  # seed 0's tuning run is its final run
            fipframe.run(fip_config(args, a, b, spec), out=out)
            (out / "bench-seconds.txt").write_text(f"{time.perf_counter() - t0}\n")
        secs = float((out / "bench-seconds.txt").read_text())
        pts = [p.params for p in path_points(out, "trunk")]
        gap = float(
            P.norm(P.sub_tree(pts[-1], B)) / P.norm(P.sub_tree(A, B))
        )  # the straight rest of the way
        return P.through([A, *pts, B]), secs, {"gap": gap}
    tr = fipframe.build(base(args, 0))
    steps = args.path_steps * 2  # (batch + memory_batch) / batch
    curve = P.train_curve(
        kind, A, B, tr.adapter, tr.tasks, steps=steps, lr=spec["lr"], batch_size=BATCH
    )
    return curve, time.perf_counter() - t0, {}


def measure(args, seed: int, work: Path, choice: dict | None) -> dict:
    """Every path type at every setting (``choice`` None: tuning on val) or at its chosen one."""
    a, b = work / f"a{seed}", work / f"b{seed}"
    for path, s in ((a, 100 + 2 * seed), (b, 101 + 2 * seed)):
        if not path.exists():
            fipframe.run(base(args, s), out=path)
    ev = fipframe.build(base(args, 0)).evaluator
    out: dict = {}
    kinds = (
        {"linear": [{}], **GRID}
        if choice is None
        else {"linear": [{}], **{k: [choice[k]] for k in GRID}}
    )
    for kind, specs in kinds.items():
        for i, spec in enumerate(specs):
            path, secs, extra = build_path(args, kind, spec, a, b, work / f"s{seed}")
            row = {"spec": spec, "seconds": secs, **extra}
            for split in ["val"] if choice is None else ["val", "test"]:
                rows = P.evaluate_path(ev, path, POINTS, split=split)
                row[split] = rows
                row[f"{split}_barrier"] = P.barrier(rows, "error")
                row[f"{split}_loss_barrier"] = P.barrier(rows, "loss")
            out[f"{kind}/{i}"] = row
            print(
                f"  seed {seed} {kind} {spec}: val barrier {100 * row['val_barrier']:.2f} pts"
                + (f", test {100 * row['test_barrier']:.2f}" if "test" in row else "")
                + f" ({secs:.0f} s)",
                flush=True,
            )
    return out


def report(args, results: dict, choice: dict) -> str:
    kinds = ["linear", *GRID]
    lines = [
        f"## {args.model} on MNIST (all ten digits)",
        "",
        f"`python bench/paths.py --model {args.model}` on {platform.node() or 'this machine'} "
        f"({torch.get_num_threads()} threads, CPU), {date.today()}; seeds {args.seeds}; "
        "ends trained "
        f"{args.train_steps} steps (Adam 1e-3, batch {BATCH}, {args.limit or 50000} training "
        f"examples); paths: FIP {args.path_steps} steps of {BATCH} + {BATCH} stored, curves "
        f"{2 * args.path_steps} steps of {BATCH} (equal example passes); {POINTS} points per "
        f"path on {args.eval_limit} test examples, BatchNorm recomputed at each.",
        "",
        "Chosen on seed 0's validation barrier ("
        + f"{BUDGET} settings each): "
        + "; ".join(f"{k} {choice[k]}" for k in GRID)
        + ".",
        "",
        "| path | test error barrier (pts) | test loss barrier | worst error along (%) "
        "| ends' error (%) | seconds to build |",
        "|---|---|---|---|---|---|",
    ]
    per: dict = {}
    for kind in kinds:
        rows = [results[str(s)]["final"][f"{kind}/0"] for s in args.seeds]
        b = [100 * r["test_barrier"] for r in rows]
        lb = [r["test_loss_barrier"] for r in rows]
        worst = [100 * max(x["error"] for x in r["test"]) for r in rows]
        endsv = [100 * (r["test"][0]["error"] + r["test"][-1]["error"]) / 2 for r in rows]
        secs = [r["seconds"] for r in rows]
        per[kind] = b
        f = lambda xs, d=2: "{:.{d}f} +- {:.{d}f}".format(*mean_std(xs), d=d)  # noqa: E731
        lines.append(
            f"| {kind} | {f(b)} | {f(lb, 3)} | {f(worst, 1)} | {f(endsv, 2)} | {f(secs, 0)} |"
        )
    gaps = [results[str(s)]["final"]["fip/0"]["gap"] for s in args.seeds]
    lines += [
        "",
        "The FIP's last saved point lies "
        f"{100 * mean_std(gaps)[0]:.1f} +- {100 * mean_std(gaps)[1]:.1f} % "
        "of the A-B distance from B; that rest is the straight segment, evaluated with the path.",
        "",
        "Seconds to build: the FIP's run includes its evaluation and checkpoint every "
        f"{max(1, args.path_steps // 20)} steps; a curve's is its training loop alone. Rule: "
        "lower barrier leads when the means differ by more than the larger seed std.",
        "",
    ]
    neg = lambda xs: [-x for x in xs]  # noqa: E731
    for other in ("linear", "bezier", "polychain"):
        lines.append(f"- FIP vs {other}: **{outcome(neg(per['fip']), neg(per[other]))}**")
    fb, bb = mean_std(per["fip"])[0], mean_std(per["bezier"])[0]
    verdict = "hit" if fb <= bb else "miss"
    lines += [
        "",
        f"Target (FIP barrier no higher than Bezier's at no more compute): **{verdict}** "
        f"({fb:.2f} vs {bb:.2f} pts mean; "
        f"{outcome(neg(per['fip']), neg(per['bezier']))} by the rule).",
        "",
        f"![paths](../img/paths_{args.model}.png)",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=list(MODELS), default="small_cnn")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train-steps", type=int, default=600)
    ap.add_argument("--path-steps", type=int, default=400)
    ap.add_argument("--limit", type=int, default=None, help="training examples (default all)")
    ap.add_argument("--eval-limit", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=ROOT / "docs/results/paths.md")
    ap.add_argument("--raw", type=Path, default=None)
    ap.add_argument(
        "--work", type=Path, default=None, help="where the runs go (default: a temp dir)"
    )
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    raw = args.raw or ROOT / f"runs/paths-{args.model}.json"
    raw.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(raw.read_text()) if raw.exists() else {}
    scratch = tempfile.TemporaryDirectory(prefix="fipframe-paths-")  # removed at exit
    work = args.work or Path(scratch.name)
    if "tuning" not in results:
        print("tuning on seed 0's validation split", flush=True)
        results["tuning"] = measure(args, args.seeds[0], work, None)
        raw.write_text(json.dumps(results))
    tune = results["tuning"]
    choice = {
        k: min((tune[f"{k}/{i}"] for i in range(len(GRID[k]))), key=lambda r: r["val_barrier"])[
            "spec"
        ]
        for k in GRID
    }
    for s in args.seeds:
        if "final" not in results.get(str(s), {}):
            print(f"seed {s} at the chosen settings", flush=True)
            results[str(s)] = {"final": measure(args, s, work, choice)}
            raw.write_text(json.dumps(results))
    first = results[str(args.seeds[0])]["final"]
    img = args.out.parent.parent / "img" if args.out.parent.name == "results" else args.out.parent
    img.mkdir(parents=True, exist_ok=True)
    P.plot_paths(
        {k: first[f"{k}/0"]["test"] for k in ["linear", *GRID]},
        img / f"paths_{args.model}.png",
        title=f"{args.model}, MNIST, seed {args.seeds[0]}: between two trained networks",
    )
    section = report(args, results, choice)
    page = args.out
    head = "# Paths between networks\n\nWritten by `bench/paths.py`; the method: docs/paths.md.\n\n"
    sections = {}
    if page.exists():
        text = page.read_text().split(NOTES)[0]
        for part in text.split("\n## ")[1:]:
            title = part.split("\n", 1)[0]
            sections[title] = "## " + part.rstrip() + "\n"
    sections[section.split("\n", 1)[0][3:]] = section
    write_keeping(page, head + "\n".join(sections[k] for k in sorted(sections)), NOTES)
    print(section)


if __name__ == "__main__":
    main()
