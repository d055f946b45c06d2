"""K runs walked in lockstep by the engine against the same K runs walked one after another,
side by side in one process.

    python bench/lockstep_runs.py [--device cpu|cuda] [--ks 1 2 4 8] [--reps 2]
                                  [--rule penalty|natural]

Each run (seeds 0..K-1 of one config): split MNIST 0-1 then 2-3 (2,000 training and 500
val/test images per task), a 40-step trunk and a 40-step FIP branch (KL, 64 stored
inputs per step; ``--rule natural``: the natural step, CG to 1e-4 with damping 0.1, its
solves stacked too), batch 64, chunks of 20 steps (val and test of both tasks evaluated at every
chunk end). The runs are built first (untimed); then the K walks are timed alone one after
another, and K fresh walks through ``fipframe.traversal.lockstep.run_together`` (steps and
evaluations stacked with vmap), alternating, median of ``--reps``, after an untimed pair
of runs of each kind. Prints seconds per path
(total / K), the ratio alone / lockstep (above 1: lockstep pays), how many steps and
evaluations (and solves) per path were stacked
and the largest end-point difference between the two ways (``--dtype float64`` for the
path identity; in float32 Adam turns the other summation order into visible differences).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from interleave import machine

from fipframe.api import build, load_config
from fipframe.traversal import lockstep

MODELS = {
    "MLP 784-400-400-10": {"kind": "mlp", "hidden": [400, 400]},
    "small CNN": {"kind": "small_cnn"},
    "small ViT": {"kind": "vit"},
}

STAGE = {"steps": 40, "batch_size": 64, "objectives": ["task_ce"]}
CONFIG = {
    "name": "lockstep-bench",
    "data": {"kind": "split_mnist", "tasks": [[0, 1], [2, 3]], "train_limit": 2000,
             "eval_limit": 500},
    "memory": {"size": 200},
    "run": {"chunk": 20, "progress": "off"},
    "stages": [{**STAGE, "name": "first", "task": 0,
                "integrator": {"kind": "gradient", "lr": 1e-3}}],
    "branches": {"fip": [{**STAGE, "name": "second", "task": 1, "memory_batch": 64,
                          "integrator": {"kind": "penalty", "lr": 1e-3, "alpha": 5.0},
                          "metric": "kl"}]},
}  # fmt: skip
RULES = {
    "penalty": {"kind": "penalty", "lr": 1e-3, "alpha": 5.0},
    "natural": {"kind": "natural", "eps": 0.05, "damping": 0.1, "cg_tol": 1e-4},
}


def configs(
    model: dict, k: int, device: str, dtype: str = "float32", rule: str = "penalty"
) -> list:
    out = []
    for seed in range(k):
        c = copy.deepcopy(CONFIG)
        c["model"] = model
        c["branches"]["fip"][0]["integrator"] = RULES[rule]
        c["run"].update(seed=seed, device=device, dtype=dtype)
        out.append(load_config(c))
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_alone(cs: list, device: str) -> tuple[float, list]:
    travs = [build(c) for c in cs]
    sync(device)
    t = time.perf_counter()
    results = [lockstep.alone(tr.walk()) for tr in travs]
    sync(device)
    return time.perf_counter() - t, results


def time_together(cs: list, device: str) -> tuple[float, list, list]:
    travs = [build(c) for c in cs]
    walks = [tr.walk(notes=lockstep.Notes(say=print)) for tr in travs]
    sync(device)
    t = time.perf_counter()
    outcomes = lockstep.run_together(walks, say=print)
    sync(device)
    for o in outcomes:
        if o.error is not None:
            raise o.error
    return time.perf_counter() - t, [o.value for o in outcomes], outcomes


def gap(a: list, b: list) -> float:
    worst = 0.0
    for ra, rb in zip(a, b, strict=True):
        for key, (pa, _) in ra.points.items():
            pb = rb.points[key][0]
            worst = max(worst, max(float((pa[n] - pb[n]).abs().max()) for n in pa))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--rule", default="penalty", choices=list(RULES), help="the branch's step")
    args = ap.parse_args()
    print(
        f"# lockstep runs: K seeds of one config (40 + 40 steps, batch 64 + 64 stored, chunk 20)"
        f", {args.rule} branch, median of {args.reps}; {args.dtype}, {machine(args.device)}"
    )
    print(
        f"{'model':<20}{'K':>4}{'alone s/path':>14}{'lockstep s/path':>17}{'ratio':>8}"
        f"{'stacked steps':>15}{'evals':>7}{'solves':>8}{'end gap':>10}"
    )
    for label in args.models:
        warm = configs(MODELS[label], 2, args.device, rule=args.rule)  # first calls untimed
        time_alone(warm, args.device)
        time_together(warm, args.device)
        for k in args.ks:
            cs = configs(MODELS[label], k, args.device, args.dtype, args.rule)
            alone_t, together_t = [], []
            for _ in range(args.reps):
                ta, alone = time_alone(cs, args.device)
                tb, together, outcomes = time_together(cs, args.device)
                alone_t.append(ta)
                together_t.append(tb)
            a = statistics.median(alone_t) / k
            b = statistics.median(together_t) / k
            steps = sum(o.stacked["step"] for o in outcomes) / k
            evals = sum(o.stacked["evaluate"] for o in outcomes) / k
            solves = sum(o.stacked["solve"] for o in outcomes) / k
            print(
                f"{label:<20}{k:>4}{a:>14.2f}{b:>17.2f}{a / b:>8.2f}{steps:>15.0f}{evals:>7.0f}"
                f"{solves:>8.0f}{gap(alone, together):>10.1e}",
                flush=True,
            )


if __name__ == "__main__":
    main()
