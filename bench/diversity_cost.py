"""Cost of the weight-space diversity term per step: fipframe's loop over members and tensors
(K x P small ops, ``fipframe.builtin.paths._sq_dist`` per member) against one op per tensor
over the K members stacked ``[K, ...]``, side by side in one run, loss + backward.

    python bench/diversity_cost.py [--members 10] [--reps 30] [--device cpu|cuda]

On a VGG11 (the paths benchmark's network, 28x28 inputs) and the small CNN; prints median ms and
the ratio loop / stacked, and checks both give the same loss and gradient. The stacked form
materialises a K x parameters temporary; docs/benchmarks.md has what it measured.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fipframe.builtin.adapters import SmallCNNConfig, VGG11Config, build_small_cnn, build_vgg
from fipframe.builtin.paths import _sq_dist


def loop_distances(params, members, names):
    """What Diversity.loss computes (space: weights)."""
    return torch.stack([_sq_dist(params, m, names).clamp_min(1e-12).sqrt() for m in members])


def member_distances(params, stacked, names):
    """The alternative: distances [K] to K points stacked per name [K, ...]."""
    total = None
    for n in names:
        d2 = (params[n].unsqueeze(0) - stacked[n]).square().flatten(1).sum(1)
        total = d2 if total is None else total + d2
    return total.clamp_min(1e-12).sqrt()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=10)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, K = {args.members}")
    models = {
        "small CNN": build_small_cnn(SmallCNNConfig(), input_shape=(1, 28, 28), num_classes=10),
        "VGG11": build_vgg(VGG11Config(), input_shape=(1, 28, 28), num_classes=10),
    }
    for title, adapter in models.items():
        params = {n: p.to(dev) for n, p in adapter.params().items()}
        names = list(params)
        members = [{n: p + 0.01 * torch.randn_like(p) for n, p in params.items()}
                   for _ in range(args.members)]  # fmt: skip
        stacked = {n: torch.stack([m[n] for m in members]) for n in names}

        def run(kind, params=params, members=members, stacked=stacked, names=names):
            leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
            d = member_distances(leaves, stacked, names) if kind == "stacked" else (
                loop_distances(leaves, members, names))  # fmt: skip
            loss = -d.mean()
            grads = torch.autograd.grad(loss, list(leaves.values()))
            return loss.detach(), grads

        a, b = run("loop"), run("stacked")
        same = torch.allclose(a[0], b[0], rtol=1e-5) and all(
            torch.allclose(x, y, rtol=1e-4, atol=1e-8) for x, y in zip(a[1], b[1], strict=True)
        )
        times = {"loop": [], "stacked": []}
        for _ in range(args.reps):
            for kind in times:
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                run(kind)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                times[kind].append(time.perf_counter() - t)
        m = {k: 1000 * statistics.median(v) for k, v in times.items()}
        n_params = sum(p.numel() for p in params.values())
        print(
            f"{title:<10} {n_params:>10,} params, {len(names)} tensors: loop {m['loop']:.2f} ms, "
            f"stacked {m['stacked']:.2f} ms, loop/stacked {m['loop'] / m['stacked']:.2f}; "
            f"same loss and gradient: {same}"
        )


if __name__ == "__main__":
    main()
