"""FIP in a Lightning training loop: ``FIPCallback`` keeps MNIST digits 0-4 while the same
LightningModule learns 5-9.

    pip install 'fipframe[lightning]'
    python docs/examples/lightning_fip.py       # about a minute on 2 CPU cores
"""

from __future__ import annotations

import argparse
import copy

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fipframe.data.mnist import load_mnist
from fipframe.integrations.lightning import FIPCallback


class Classifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 400), nn.ReLU(),
            nn.Linear(400, 10),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def digits(split, lo: int, hi: int) -> TensorDataset:
    keep = (split.y >= lo) & (split.y < hi)
    return TensorDataset(split.x[keep], split.y[keep])


def fit(module, data, steps, seed, callbacks=()) -> None:
    L.seed_everything(seed, verbose=False)
    loader = DataLoader(data, batch_size=128, shuffle=True)
    trainer = L.Trainer(
        max_steps=steps, callbacks=list(callbacks), logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(module, loader)


def accuracy(module, data: TensorDataset) -> float:
    module.eval()
    with torch.no_grad():
        x, y = data.tensors
        return (module(x).argmax(1) == y).float().mean().item()


def main(steps: int = 500, memory: int = 500, alpha: float = 10.0, seed: int = 0) -> dict:
    train, _, test = load_mnist()
    old, new = digits(train, 0, 5), digits(train, 5, 10)
    old_t, new_t = digits(test, 0, 5), digits(test, 5, 10)
    torch.manual_seed(seed)
    first = Classifier()
    fit(first, old, steps, seed)
    pick = torch.randperm(len(old), generator=torch.Generator().manual_seed(seed))[:memory]
    results = {"after 0-4": (accuracy(first, old_t), accuracy(first, new_t))}
    for name in ("plain", "fip"):
        module = copy.deepcopy(first)
        callbacks = []
        if name == "fip":
            callbacks = [
                FIPCallback(old.tensors[0][pick], metric="kl", alpha=alpha, batch_size=128)
            ]
        fit(module, new, steps, seed + 1, callbacks)
        results[name] = (accuracy(module, old_t), accuracy(module, new_t))
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--alpha", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(f"{'':<10} {'digits 0-4':>10} {'digits 5-9':>10}   (test accuracy)")
    for name, (o, n) in main(a.steps, alpha=a.alpha, seed=a.seed).items():
        print(f"{name:<10} {100 * o:>9.2f}% {100 * n:>9.2f}%")
