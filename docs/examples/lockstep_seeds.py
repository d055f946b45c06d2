"""Seeds of one config walked together in one process: their steps and evaluations stacked.

    python docs/examples/lockstep_seeds.py --out runs/lockstep [--seeds 0 1 2] [--device cuda]

MNIST 0-4, then 5-9: a trunk learns the first task, then two branches learn the second, plain
fine-tuning and the FIP penalty (KL to the trunk's outputs on 500 stored images). Every seed is
an ordinary run directory (``OUT/seed-<s>``: resumable, readable by ``fipframe report``), and
the seeds' runs walk in lockstep: one vmapped forward and backward per step for all of them
(docs/scale.md). Running it again continues every run from its checkpoint. On a CPU lockstep
costs time (docs/benchmarks.md); it is meant for a GPU, where a small model's step waits on
kernel launches.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import fipframe
from fipframe.eval.compare import Comparison

STAGE = {"steps": 300, "batch_size": 128, "objectives": ["task_ce"]}


def config(seed: int, steps: int, device: str) -> dict:
    stage = {**STAGE, "steps": steps}
    return {
        "name": "lockstep-seeds",
        "model": {"kind": "mlp", "hidden": [400, 400]},
        "data": {"kind": "split_mnist", "tasks": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]},
        "memory": {"size": 500},
        "run": {"seed": seed, "device": device, "chunk": max(steps // 3, 1), "progress": "lines"},
        "stages": [{**stage, "name": "learn-0-4", "task": 0,
                    "integrator": {"kind": "gradient", "lr": 1e-3}}],
        "branches": {
            "finetune": [{**stage, "name": "learn-5-9", "task": 1,
                          "integrator": {"kind": "gradient", "lr": 1e-3}}],
            "fip": [{**stage, "name": "learn-5-9", "task": 1, "memory_batch": 128,
                     "integrator": {"kind": "penalty", "lr": 1e-3, "alpha": 10.0},
                     "metric": "kl"}],
        },
    }  # fmt: skip


def main(
    seeds: list[int] = (0, 1, 2), steps: int = 300, out: str = "runs/lockstep", device: str = "auto"
) -> Comparison:
    dirs = [Path(out) / f"seed-{s}" for s in seeds]
    fipframe.run_lockstep([config(s, steps, device) for s in seeds], outs=dirs)
    comparison = Comparison.load(dirs)
    print(comparison.table("finetune"))
    return comparison


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/lockstep")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    main(args.seeds, args.steps, args.out, args.device)
