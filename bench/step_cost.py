"""Cost of one FIP penalty step against an experience-replay step and an authors'-style step.

All three run side by side in one process on the same MLP (784-400-400-10), the same data and
the same total batch (128 task examples + 128 stored examples), interleaved round by round so
that drift in machine load hits them alike. Printed: median milliseconds per step and ratios.

- replay:   fipframe's `gradient` integrator on task_ce + replay_ce (one fused forward).
- fip:      fipframe's `penalty` integrator on task_ce + alpha * Bhattacharyya divergence on
            stored inputs, anchor outputs cached once (one fused forward).
- authors:  the pattern of the authors' notebooks: a second (anchor) network's forward on the
            stored inputs every step, outside no_grad, and every step a round trip of all
            weights and gradients through host numpy.

Usage: python bench/step_cost.py [--steps 200] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
import torch.nn.functional as F
from interleave import interleaved, machine

from fipframe.api import load_config
from fipframe.plugins import make_plugin_manager
from fipframe.traversal.build import Components, build_components, build_stage
from fipframe.traversal.step import make_problem

CONFIG = {
    "name": "bench",
    "model": {"kind": "mlp", "hidden": [400, 400]},
    "data": {"kind": "split_mnist", "tasks": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]},
    "memory": {"size": 500},
    "run": {"progress": "off"},
    "stages": [
        {
            "name": "first",
            "task": 0,
            "steps": 1,
            "integrator": "gradient",
            "objectives": ["task_ce"],
        }
    ],
    "branches": {
        "replay": [
            {
                "name": "s",
                "task": 1,
                "steps": 10**6,
                "integrator": "gradient",
                "objectives": ["task_ce", "replay_ce"],
            }
        ],
        "fip": [
            {
                "name": "s",
                "task": 1,
                "steps": 10**6,
                "integrator": {"kind": "penalty", "alpha": 10.0},
                "metric": "bhattacharyya",
                "objectives": ["task_ce"],
            }
        ],
    },
}


def bhattacharyya(logits, anchor_logits):
    logp, logq = torch.log_softmax(logits, -1), torch.log_softmax(anchor_logits, -1)
    return -torch.logsumexp(0.5 * (logp + logq), -1).mean()


class AuthorsStyle:
    """One step in the style of the authors' code (see module docstring)."""

    def __init__(self, trav: Components, memory):
        self.net = copy.deepcopy(trav.adapter.model)
        self.anchor = copy.deepcopy(trav.adapter.model)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-3)
        self.task = trav.tasks.tasks[1].train
        self.mem = memory.inputs
        self.g = torch.Generator().manual_seed(0)

    def step(self) -> None:
        i = torch.randint(len(self.task), (128,), generator=self.g).to(self.mem.device)
        j = torch.randint(len(self.mem), (128,), generator=self.g).to(self.mem.device)
        x, y, xm = self.task.x[i], self.task.y[i], self.mem[j]
        anchor_logits = self.anchor(xm)  # recomputed each step, with autograd tracking
        loss = F.cross_entropy(self.net(x), y) + 10.0 * bhattacharyya(self.net(xm), anchor_logits)
        self.opt.zero_grad()
        loss.backward()
        for p in self.net.parameters():  # host round trip of weights and gradients
            w, g = p.data.cpu().numpy(), p.grad.cpu().numpy()
            p.data.copy_(torch.from_numpy(w).to(p.device))
            p.grad.copy_(torch.from_numpy(g).to(p.device))
        self.opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    CONFIG["run"]["device"] = args.device
    pm = make_plugin_manager(entry_points_enabled=False)
    config = load_config(CONFIG, pm=pm)
    trav = build_components(config, pm=pm, registry=pm.registry)
    dev = trav.device
    from fipframe.data.memory import Memory

    memory = Memory(500, seed=0)
    memory.add_task(0, trav.tasks.tasks[0])
    params0 = trav.adapter.params()

    runners = {}
    for name in ("replay", "fip"):
        stage = config.branches[name][0]
        st = build_stage(trav, name, 0, stage, params0, memory, [], {})
        box = {"p": params0, "s": st.integrator.init(params0), "t": 0}

        def step(st=st, box=box, stage=stage):
            problem = make_problem(trav, st, memory, box["t"], 0.0)
            box["p"], box["s"], _ = st.integrator.step(box["p"], box["s"], problem)
            box["t"] += 1

        runners[name] = step
    runners["authors"] = AuthorsStyle(trav, memory).step

    times = interleaved(runners, dev, args.warmup, args.steps)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"# step_cost: MLP 784-400-400-10, batch 128 + 128 stored, {args.steps} steps each")
    print(f"# {machine(dev)}")
    for k, v in med.items():
        print(f"{k:>8}: {v:7.3f} ms/step (median)")
    print(f"fip / replay  = {med['fip'] / med['replay']:.3f}   (target <= 1.15)")
    print(f"fip / authors = {med['fip'] / med['authors']:.3f}")


if __name__ == "__main__":
    main()
