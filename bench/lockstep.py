"""What lockstep paths would buy: K paths' steps as one vmapped forward and backward over
stacked weights, against the same K steps one after another, side by side in one run.

    python bench/lockstep.py [--reps 10] [--device cpu|cuda] [--ks 1 2 4 8 16]

The engine walks paths one after another; running K paths of one architecture in lockstep
(issue 23, item 1) is not built. This bench measures the technique alone, so that the choice
rests on numbers: per K and model, the milliseconds per path-step of (a) K separate steps
(forward of a task batch of 128 + 128 stored inputs, cross-entropy + KL to anchor outputs,
backward, Adam) and (b) one step of the K paths stacked (``torch.func.stack_module_state``,
``torch.func.vmap`` of the functional forward over the path axis, one backward of the summed
loss, Adam on the stacked tensors), and (a) / (b). Both give the same per-path gradients (checked
before timing).
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
import torch.nn.functional as F
from interleave import interleaved, machine
from torch.func import functional_call, stack_module_state, vmap

from fipframe.api import load_config
from fipframe.plugins import make_plugin_manager

MODELS = {
    "MLP 784-400-400-10": {"kind": "mlp", "hidden": [400, 400]},
    "small CNN": {"kind": "small_cnn"},
    "small ViT": {"kind": "vit"},
}


def build(model: dict, device: str) -> torch.nn.Module:
    pm = make_plugin_manager(entry_points_enabled=False)
    cfg = load_config(
        {"name": "b", "model": model, "data": {"kind": "split_mnist", "tasks": [[0], [1]],
         "train_limit": 10, "eval_limit": 10},
         "stages": [{"name": "s", "task": 0, "steps": 1, "integrator": "gradient",
                     "objectives": ["task_ce"]}]}, pm=pm,
    )  # fmt: skip
    adapter = pm.registry.build("adapter", cfg.model, input_shape=(1, 28, 28), num_classes=10)
    return adapter.model.to(device)


def loss_of(logits: torch.Tensor, y: torch.Tensor, ref: torch.Tensor, n: int) -> torch.Tensor:
    """Cross-entropy on the first ``n`` rows + KL to ``ref`` on the rest (one path)."""
    kl = F.kl_div(F.log_softmax(logits[n:], -1), F.log_softmax(ref, -1), log_target=True,
                  reduction="batchmean")  # fmt: skip
    return F.cross_entropy(logits[:n], y) + 10.0 * kl


def one(label: str, base: torch.nn.Module, k: int, reps: int, dev: torch.device) -> tuple:
    """ms per path-step of K separate steps and of the K paths stacked."""
    g = torch.Generator().manual_seed(k)
    nets = [copy.deepcopy(base) for _ in range(k)]
    for i, net in enumerate(nets):  # K different points
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.01 * (i + 1) * torch.randn(p.shape, generator=g).to(dev))
    x = torch.randn(k, 256, 1, 28, 28, generator=g).to(dev)
    y = torch.randint(10, (k, 128), generator=g).to(dev)
    ref = torch.randn(k, 128, 10, generator=g).to(dev)
    opts = [torch.optim.Adam(n.parameters(), lr=1e-3) for n in nets]
    stacked, _ = stack_module_state(nets)
    stacked = {n: t.detach().clone().requires_grad_(True) for n, t in stacked.items()}
    opt_s = torch.optim.Adam(stacked.values(), lr=1e-3)
    skeleton = copy.deepcopy(base).to("meta")

    def forward(params, xi):
        return functional_call(skeleton, params, (xi,))

    def separate(step: bool = True):
        grads = []
        for i, (net, opt) in enumerate(zip(nets, opts, strict=True)):
            loss = loss_of(net(x[i]), y[i], ref[i], 128)
            opt.zero_grad()
            loss.backward()
            grads.append([p.grad.clone() for p in net.parameters()] if not step else None)
            if step:
                opt.step()
        return grads

    def together(step: bool = True):
        logits = vmap(forward)(stacked, x)
        loss = sum(loss_of(logits[i], y[i], ref[i], 128) for i in range(k))
        opt_s.zero_grad()
        loss.backward()
        if step:
            opt_s.step()

    # the same gradients, path by path, before anything is timed
    got = separate(step=False)
    together(step=False)
    names = [n for n, _ in base.named_parameters()]
    gap = max(
        float((stacked[n].grad[i] - got[i][j]).abs().max()
              / got[i][j].abs().max().clamp_min(1e-12))
        for i in range(k) for j, n in enumerate(names)
    )  # fmt: skip
    assert gap < 1e-3, f"{label} K={k}: stacked gradients differ ({gap:.1e})"
    times = interleaved({"separate": separate, "together": together}, dev, 2, reps)
    a = statistics.median(times["separate"]) / k * 1e3
    b = statistics.median(times["together"]) / k * 1e3
    return a, b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    args = ap.parse_args()
    dev = torch.device(args.device)
    print(
        f"# lockstep: K paths' steps (batch 128 + 128 stored each), median of {args.reps}; "
        f"{machine(dev)}"
    )
    print(f"{'model':<22}{'K':>4}{'separate ms/path':>18}{'stacked ms/path':>17}{'ratio':>8}")
    for label, spec in MODELS.items():
        base = build(spec, args.device)
        # training mode (eval-mode attention takes a fast path without a backward), dropout
        # off: the two ways must compute the same thing
        base.train()
        for m in base.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        for k in args.ks:
            a, b = one(label, base, k, args.reps, dev)
            print(f"{label:<22}{k:>4}{a:>18.2f}{b:>17.2f}{a / b:>8.2f}")


if __name__ == "__main__":
    main()
