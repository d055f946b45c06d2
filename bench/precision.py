"""``run.autocast: bf16`` and ``run.compile`` against plain float32, side by side in one run:
one FIP penalty step (task batch 128 + 128 stored inputs, KL) on the MLP, the small CNN and the
small ViT, the settings interleaved round by round on the same data and point.

    python bench/precision.py [--steps 30] [--device cpu|cuda]

Printed per model and setting: median ms per step, the ratio to float32, the first step's
seconds (torch.compile compiles there), and how far the setting's gradient is from the
float32 one at the same point (relative L2 distance and cosine): what a cheaper forward costs
in fidelity. Metric products and evaluation are eager float32 in every setting, so they are
not timed here.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from interleave import interleaved, machine

from fipframe.api import load_config
from fipframe.core.integrator import riemannian_gradient
from fipframe.data.memory import Memory
from fipframe.plugins import make_plugin_manager
from fipframe.traversal.build import build_components, build_stage
from fipframe.traversal.step import make_problem

MODELS = {
    "MLP 784-400-400-10": {"kind": "mlp", "hidden": [400, 400]},
    "small CNN": {"kind": "small_cnn"},
    "small ViT": {"kind": "vit"},
}


SETTINGS = {
    "float32": {"autocast": "off", "compile": False},
    "bf16 autocast": {"autocast": "bf16", "compile": False},
    "torch.compile": {"autocast": "off", "compile": True},
}


def config(model: dict, setting: dict, device: str) -> dict:
    stage = {"name": "s", "task": 1, "steps": 10**6, "batch_size": 128, "memory_batch": 128,
             "integrator": {"kind": "penalty", "alpha": 10.0}, "metric": "kl",
             "objectives": ["task_ce"]}  # fmt: skip
    return {
        "name": "precision",
        "model": model,
        "data": {
            "kind": "split_mnist",
            "tasks": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]],
            "train_limit": 2048,
            "eval_limit": 256,
        },  # fmt: skip
        "memory": {"size": 512},
        "run": {"progress": "off", "device": device, "seed": 0, **setting},
        "stages": [{**stage, "task": 0, "integrator": "gradient", "metric": None}],
        "branches": {"fip": [stage]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    pm = make_plugin_manager(entry_points_enabled=False)
    print(
        f"# precision: FIP penalty step, batch 128 + 128 stored, {args.steps} steps each; "
        f"{machine(args.device)}"
    )
    print(f"{'model':<22}{'setting':<16}{'ms/step':>9}{'x float32':>10}{'first s':>9}"
          f"{'grad rel. dist.':>17}{'cosine':>9}")  # fmt: skip
    for label, model in MODELS.items():
        runners, grads, first = {}, {}, {}
        for name, setting in SETTINGS.items():
            cfg = load_config(config(model, setting, args.device), pm=pm)
            comp = build_components(cfg, pm=pm, registry=pm.registry)
            memory = Memory(512, seed=0)
            memory.add_task(0, comp.tasks.tasks[0], lambda x, c=comp: c.evaluator.logits(
                c.adapter.params(), x))  # fmt: skip
            params = comp.adapter.params()
            st = build_stage(comp, "fip", 0, cfg.branches["fip"][0], params, memory, [], {})
            t0 = time.perf_counter()
            problem = make_problem(comp, st, memory, 0, 0.0)
            grads[name] = torch.cat([g.flatten() for g in riemannian_gradient(
                params, problem, 10.0)[0].values()])  # fmt: skip
            first[name] = time.perf_counter() - t0
            box = {"p": params, "s": st.integrator.init(params), "t": 0}

            def step(comp=comp, st=st, memory=memory, box=box):
                problem = make_problem(comp, st, memory, box["t"], 0.0)
                box["p"], box["s"], _ = st.integrator.step(box["p"], box["s"], problem)
                box["t"] += 1

            runners[name] = step
        times = interleaved(runners, torch.device(args.device), args.warmup, args.steps)
        base = statistics.median(times["float32"])
        a = grads["float32"].double()
        for name in SETTINGS:
            m = statistics.median(times[name])
            b = grads[name].double()
            dist = float((a - b).norm() / a.norm())
            cos = float(a @ b / (a.norm() * b.norm()))
            print(f"{label:<22}{name:<16}{m * 1e3:>9.2f}{m / base:>10.2f}{first[name]:>9.2f}"
                  f"{dist:>17.2e}{cos:>9.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
