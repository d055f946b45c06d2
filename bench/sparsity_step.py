"""Cost of one FIP sparsification step against one masked fine-tuning step.

Side by side in one process, interleaved round by round, on the same network and data:

- finetune:   `gradient` on task_ce (128 examples), masks applied after the step (what every
              baseline's training step costs once weights are pruned)
- fip:        `penalty` on prune_target + task_ce (64 examples) + KL on 64 stored inputs, the
              pruning mask refreshed every 50 steps by kthvalue on the device (amortised)
- fip-every:  the same with the mask refreshed every step (the refresh's full cost)
- host-sort:  the same FIP step with the authors' refresh: every step, all weights copied to
              host numpy and fully argsorted there, the mask copied back

Usage: python bench/sparsity_step.py [--steps 200] [--device cpu|cuda] [--arch lenet300]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from typing import Any

import numpy as np
import torch
from interleave import interleaved, machine

from fipframe.api import load_config
from fipframe.core.sparsity import (
    SparsityConfig,
    apply_masks,
    magnitude_masks,
    masks_in,
    store_masks,
)
from fipframe.data.memory import Memory
from fipframe.plugins import make_plugin_manager
from fipframe.traversal.build import build_components, build_stage
from fipframe.traversal.step import make_problem

MODELS = {
    "lenet300": {"kind": "lenet300"},
    "small_cnn": {"kind": "small_cnn", "channels": [32, 64], "hidden": 128},
}


def _config(model: dict[str, Any], device: str, every: int) -> dict[str, Any]:
    target = {"kind": "prune_target", "sparsity": 0.95, "every": every, "weight": 100.0}
    return {
        "name": "bench",
        "model": model,
        "data": {"kind": "split_mnist", "tasks": [list(range(10))]},
        "memory": {"size": 2000},
        "run": {"progress": "off", "device": device},
        "stages": [{"name": "s", "task": 0, "steps": 1, "integrator": "gradient"}],
        "branches": {
            "finetune": [
                {"name": "s", "task": 0, "steps": 10**6, "integrator": "gradient",
                 "objectives": ["task_ce"]}
            ],
            "fip": [
                {"name": "s", "task": 0, "steps": 10**6, "batch_size": 64, "memory_batch": 64,
                 "integrator": {"kind": "penalty", "alpha": 1.0}, "metric": "kl",
                 "objectives": [target, "task_ce"]}
            ],
        },
    }  # fmt: skip


def host_sort_masks(params: dict[str, torch.Tensor], names: list[str], s: float):
    """The authors' pattern: weights to host numpy, a full argsort, the mask back."""
    host = np.concatenate([params[n].detach().cpu().numpy().ravel() for n in names])
    order = np.argsort(np.abs(host))
    keep = np.ones_like(host, dtype=bool)
    keep[order[: int(s * host.size)]] = False
    out, i = {}, 0
    for n in names:
        k = params[n].numel()
        out[n] = torch.from_numpy(keep[i : i + k].reshape(params[n].shape)).to(params[n].device)
        i += k
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--arch", default="lenet300", choices=list(MODELS))
    args = ap.parse_args()
    pm = make_plugin_manager(entry_points_enabled=False)
    runners = {}
    comp = None
    for name, every in (("finetune", 50), ("fip", 50), ("fip-every", 1), ("host-sort", 10**9)):
        config = load_config(_config(MODELS[args.arch], args.device, every), pm=pm)
        comp = (
            build_components(config, pm=pm, registry=pm.registry)
            if comp is None
            else dataclasses.replace(comp, config=config)  # same model and data, other stages
        )
        params0 = comp.adapter.params()
        memory = Memory(2000, seed=0)
        memory.add_task(
            0, comp.tasks.tasks[0], lambda x, p=params0, c=comp: c.evaluator.logits(p, x)
        )
        branch = "finetune" if name == "finetune" else "fip"
        stage = config.branches[branch][0]
        carry: dict[str, torch.Tensor] = {}
        if name == "finetune":  # a pruned network: masks at 95% by magnitude
            store_masks(carry, magnitude_masks(params0, SparsityConfig(sparsity=0.95), 0.95))
        st = build_stage(comp, branch, 0, stage, params0, memory, [], carry)
        masks = masks_in(carry)
        target = st.objectives[0] if name != "finetune" else None
        box = {"p": apply_masks(params0, masks), "s": st.integrator.init(params0), "t": 0}

        def step(st=st, box=box, masks=masks, target=target, name=name, memory=memory, comp=comp):
            t = box["t"]
            if target is not None:
                if name == "host-sort":
                    chosen = [n for n, v in box["p"].items() if v.dim() >= 2]
                    target.masks = host_sort_masks(box["p"], chosen, 0.95)
                elif t % target.refresh_every == 0:
                    target.refresh(box["p"], t)
            problem = make_problem(comp, st, memory, t, 0.0)
            box["p"], box["s"], _ = st.integrator.step(box["p"], box["s"], problem)
            if masks:
                box["p"] = apply_masks(box["p"], masks)
            box["t"] += 1

        if target is not None:
            target.refresh(box["p"], 0)
        runners[name] = step
    assert comp is not None
    dev = comp.device

    times = interleaved(runners, dev, args.warmup, args.steps)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    mean = {k: statistics.mean(v) * 1e3 for k, v in times.items()}
    print(f"# sparsity_step: {args.arch}, 128 examples per step, {args.steps} steps each")
    print(f"# {machine(dev)}")
    for k in runners:
        print(f"{k:>10}: {med[k]:7.3f} ms/step median, {mean[k]:7.3f} mean")
    ratio = mean["fip"] / mean["finetune"]
    print(f"fip / finetune       = {ratio:.3f}  (means, so the refresh is amortised)")
    print(f"fip-every / finetune = {mean['fip-every'] / mean['finetune']:.3f}")
    print(f"host-sort / fip      = {mean['host-sort'] / mean['fip']:.3f}")


if __name__ == "__main__":
    main()
