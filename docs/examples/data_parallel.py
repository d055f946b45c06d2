"""One FIP path walked by several processes, from your own script and your own model.

    torchrun --standalone --nproc-per-node 2 docs/examples/data_parallel.py --out runs/dp
    python docs/examples/data_parallel.py --out runs/one          # the same path, one process

Every process runs this script. ``fipframe.run`` reads torchrun's variables (``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``), joins the process group (gloo on CPU, NCCL on CUDA), starts every
process from rank 0's weights, gives each process its share of every batch and averages every
gradient, so the processes walk the path one process walks with the same batches (docs/scale.md).
Rank 0 writes the run directory; this script prints the results there only.
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn

import fipframe

STAGE = {"task": 1, "batch_size": 128, "objectives": ["task_ce"]}
CONFIG = {
    "name": "data-parallel-example",
    "data": {"kind": "split_mnist", "tasks": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]],
             "train_limit": 5000, "eval_limit": 1000},
    "memory": {"size": 500},
    "run": {"seed": 0, "chunk": 50, "progress": "lines"},
    "stages": [{"name": "learn-0-4", "task": 0, "steps": 200, "batch_size": 128,
                "integrator": {"kind": "gradient", "lr": 0.001}, "objectives": ["task_ce"]}],
    "branches": {
        "finetune": [{**STAGE, "name": "learn-5-9", "steps": 200,
                      "integrator": {"kind": "gradient", "lr": 0.001}}],
        "fip": [{**STAGE, "name": "learn-5-9", "steps": 200, "memory_batch": 128, "metric": "kl",
                 "integrator": {"kind": "penalty", "lr": 0.001, "alpha": 10.0}}],
    },
}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="run directory (none: results in memory only)")
    ap.add_argument("--steps", type=int, default=200, help="steps of every stage")
    args = ap.parse_args()
    for stages in [CONFIG["stages"], *CONFIG["branches"].values()]:
        stages[0]["steps"] = args.steps
    torch.manual_seed(0)  # every process builds the model; rank 0's weights are the start
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    result = fipframe.run(CONFIG, model=model, out=args.out)
    if int(os.environ.get("RANK", "0")) == 0:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        print(f"{world} process(es)\n{result.table()}")


if __name__ == "__main__":
    main()
