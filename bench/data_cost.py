"""Cost of a FIP step with streamed data against resident data, side by side in one process.

The same penalty step (task_ce on 128 new-task examples + alpha * Bhattacharyya on 128 stored
inputs) on the same MNIST task, read three ways:

- resident: every split on the device, a batch is one gather (the default);
- streamed: ``run.stream: true``, the task's arrays in host memory, each batch gathered whole
  through a ``torch.utils.data.DataLoader`` and copied to the device one step ahead;
- dataset: the same arrays behind a plain ``torch.utils.data.Dataset`` read item by item by
  ``--workers`` DataLoader worker processes (the path of a user's Dataset that decodes or
  augments each item).

The stored-input memory is resident in all three (it always is). Models: the MLP
784-400-400-10 and the small CNN (32-64 channels, 128 hidden).

Steps run in blocks (``--block`` steps of one variant, then of the next, repeated
``--rounds`` times): a block is long enough that the workers' read-ahead cannot hide the cost
of one variant inside the other's time, and alternating blocks makes drift in machine load hit
both alike. Printed: median milliseconds per step over the blocks, and the ratio.

Usage: python bench/data_cost.py [--models mlp small_cnn] [--workers 2] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch
from step_cost import CONFIG as STEP_COST_CONFIG
from torch.utils.data import Dataset

from fipframe.api import load_config
from fipframe.data.memory import Memory
from fipframe.plugins import make_plugin_manager
from fipframe.traversal.build import build_components, build_stage
from fipframe.traversal.step import make_problem

MODELS = {
    "mlp": {"kind": "mlp", "hidden": [400, 400]},
    "small_cnn": {"kind": "small_cnn", "channels": [32, 64], "hidden": 128},
}
BLOCK = {"mlp": 100, "small_cnn": 10}  # steps per timed block: about a second on 2 CPU cores


def config(model: dict, device: str, stream: bool, workers: int) -> dict:
    """step_cost's config (the same FIP step), with this model and the data read as asked."""
    cfg = copy.deepcopy(STEP_COST_CONFIG)
    cfg["model"] = model
    cfg["run"] = {
        "progress": "off",
        "device": device,
        "stream": stream,
        "loader": {"workers": workers},
    }
    cfg["branches"] = {"fip": cfg["branches"]["fip"]}
    return cfg


class Items(Dataset):
    """Rows of host tensors, one item per call, as a user's Dataset gives them."""

    def __init__(self, split):
        self.x, self.y = split.x.cpu(), split.y.cpu()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def runner(model: dict, device: str, variant: str, workers: int, pm):
    """A function that takes ``n`` FIP steps, the device it runs on, and its stage."""
    cfg = load_config(config(model, device, variant == "streamed", workers), pm=pm)
    data = None
    if variant == "dataset":  # the registered tasks, handed back as per-task Datasets
        tasks = build_components(cfg, pm=pm, registry=pm.registry).tasks
        data = [(Items(t.train), Items(t.test), Items(t.val)) for t in tasks.tasks]
    comp = build_components(cfg, pm=pm, registry=pm.registry, data=data)
    params0 = comp.adapter.params()
    memory = Memory(500, seed=0)
    memory.add_task(0, comp.tasks.tasks[0], lambda x: comp.evaluator.logits(params0, x))
    stage = cfg.branches["fip"][0]
    st = build_stage(comp, "fip", 0, stage, params0, memory, [], {})
    box = {"p": params0, "s": st.integrator.init(params0), "t": 0}
    comp.adapter.train(True)

    def steps(n: int) -> None:
        for _ in range(n):
            problem = make_problem(comp, st, memory, box["t"], 0.0)
            box["p"], box["s"], _ = st.integrator.step(box["p"], box["s"], problem)
            box["t"] += 1

    return steps, comp.device, st


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--block", type=int, help="steps per timed block (default: per model)")
    ap.add_argument("--rounds", type=int, default=10, help="blocks of each variant")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    pm = make_plugin_manager(entry_points_enabled=False)
    print(
        f"# data_cost: FIP penalty step, 128 task + 128 stored examples; resident, streamed "
        f"host arrays, a Dataset through {args.workers} workers; {args.rounds} blocks of each"
    )
    for name in args.models:
        model = copy.deepcopy(MODELS[name])
        block = args.block or BLOCK[name]
        variants = {
            v: runner(model, args.device, v, args.workers, pm)
            for v in ("resident", "streamed", "dataset")
        }
        device = variants["resident"][1]
        for steps, _, _ in variants.values():
            steps(10)  # warm-up (and the loader's first read)
        per_block: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for k, (steps, _, _) in variants.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                steps(block)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                per_block[k].append((time.perf_counter() - t0) / block)
        for _, _, st in variants.values():
            st.close()
        med = {k: statistics.median(v) * 1e3 for k, v in per_block.items()}
        spread = {k: (min(v) * 1e3, max(v) * 1e3) for k, v in per_block.items()}
        print(f"## {name} ({block} steps per block)")
        for k in variants:
            lo, hi = spread[k]
            print(f"  {k:>9}: {med[k]:7.3f} ms/step (median; blocks {lo:.3f}-{hi:.3f})")
        for k in ("streamed", "dataset"):
            print(f"  {k} / resident = {med[k] / med['resident']:.3f}   (target <= 1.2)")
    print(
        f"# device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{platform.machine()}"
    )


if __name__ == "__main__":
    main()
