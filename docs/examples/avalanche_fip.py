"""FIP as an Avalanche plugin: a class-incremental MNIST benchmark in two experiences (digits
0-4, then 5-9) trained by Avalanche's ``Naive`` strategy, with and without ``FIPPlugin``.

    pip install 'fipframe[avalanche]'
    python docs/examples/avalanche_fip.py       # about a minute on 2 CPU cores
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import TensorDataset

from fipframe.data.mnist import load_mnist
from fipframe.integrations.avalanche import FIPPlugin


class Labelled(TensorDataset):
    """A TensorDataset with the ``targets`` Avalanche reads classes from."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        super().__init__(x, y)
        self.targets = y.tolist()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def main(epochs: int = 1, train_size: int = 20000, alpha: float = 10.0, seed: int = 0) -> dict:
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.supervised import Naive

    train, _, test = load_mnist()
    x, y = train.x[:train_size].flatten(1), train.y[:train_size]
    bench = class_incremental_benchmark(
        {"train": Labelled(x, y), "test": Labelled(test.x.flatten(1), test.y)},
        class_order=list(range(10)),
        num_experiences=2,
    )
    old_t = test.y < 5
    results = {}
    for name in ("plain", "fip"):
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 400), nn.ReLU(), nn.Linear(400, 10)
        )
        plugins = (
            [FIPPlugin(mem_size=500, metric="kl", alpha=alpha, seed=seed)] if name == "fip" else []
        )
        strategy = Naive(
            model=model,
            optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
            criterion=nn.CrossEntropyLoss(),
            train_mb_size=128,
            train_epochs=epochs,
            device="cpu",
            plugins=plugins,
            evaluator=EvaluationPlugin(loggers=[]),
        )
        for experience in bench.train_stream:
            strategy.train(experience)
        xt = test.x.flatten(1)
        results[name] = (
            accuracy(model, xt[old_t], test.y[old_t]),
            accuracy(model, xt[~old_t], test.y[~old_t]),
        )
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--alpha", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(f"{'':<10} {'digits 0-4':>10} {'digits 5-9':>10}   (test accuracy)")
    for name, (o, n) in main(a.epochs, alpha=a.alpha, seed=a.seed).items():
        print(f"{name:<10} {100 * o:>9.2f}% {100 * n:>9.2f}%")
