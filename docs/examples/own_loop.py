"""FIP in a plain PyTorch loop: learn MNIST digits 0-4, then 5-9, with and without the penalty.

    python docs/examples/own_loop.py            # about a minute on 2 CPU cores

Plain training on 5-9 forgets 0-4; the same loop plus ``fipframe.FIPRegularizer`` (the KL
divergence to the network's outputs after 0-4, on 500 stored images) keeps most of it.
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from torch import nn

import fipframe
from fipframe.data.mnist import load_mnist


def split(x: torch.Tensor, y: torch.Tensor, digits: range) -> tuple[torch.Tensor, torch.Tensor]:
    keep = (y >= digits.start) & (y < digits.stop)
    return x[keep], y[keep]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def train(model, x, y, steps, batch, seed, extra=None) -> None:
    """Adam on cross-entropy (plus ``extra()`` when given) for ``steps`` random batches."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(y), (batch,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        if extra is not None:
            loss = loss + extra()
        opt.zero_grad()
        loss.backward()
        opt.step()


def main(steps: int = 500, memory: int = 500, alpha: float = 10.0, seed: int = 0) -> dict:
    train_split, _, test_split = load_mnist()
    x, y = train_split.x.flatten(1), train_split.y
    xt, yt = test_split.x.flatten(1), test_split.y
    old, new = split(x, y, range(0, 5)), split(x, y, range(5, 10))
    old_t, new_t = split(xt, yt, range(0, 5)), split(xt, yt, range(5, 10))

    torch.manual_seed(seed)
    first = nn.Sequential(
        nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 400), nn.ReLU(), nn.Linear(400, 10)
    )
    train(first, *old, steps, 128, seed)
    stored = old[0][
        torch.randperm(len(old[1]), generator=torch.Generator().manual_seed(seed))[:memory]
    ]

    results = {"after 0-4": (accuracy(first, *old_t), accuracy(first, *new_t))}
    for name in ("plain", "fip"):
        model = copy.deepcopy(first)
        fip = fipframe.FIPRegularizer(model, stored, metric="kl", alpha=alpha, batch_size=128)
        train(model, *new, steps, 128, seed + 1, extra=fip if name == "fip" else None)
        results[name] = (accuracy(model, *old_t), accuracy(model, *new_t))
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--memory", type=int, default=500)
    ap.add_argument("--alpha", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(f"{'':<10} {'digits 0-4':>10} {'digits 5-9':>10}   (test accuracy)")
    for name, (o, n) in main(a.steps, a.memory, a.alpha, a.seed).items():
        print(f"{name:<10} {100 * o:>9.2f}% {100 * n:>9.2f}%")
