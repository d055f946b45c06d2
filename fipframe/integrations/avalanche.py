"""``FIPPlugin``: the FIP penalty as an Avalanche strategy plugin.

    from fipframe.integrations.avalanche import FIPPlugin

    strategy = Naive(model, optimizer, criterion, plugins=[FIPPlugin(mem_size=500, alpha=10.0)])
    for experience in benchmark.train_stream:
        strategy.train(experience)

After each training experience the plugin stores ``mem_size`` of its inputs (drawn at random,
the dataset's eval transforms applied) with the network's outputs on them; during later
experiences ``alpha * D`` to those outputs is added to ``strategy.loss`` before the backward
(like Avalanche's own EWC plugin adds its penalty).
"""

from __future__ import annotations

from typing import Any

import torch

from fipframe.errors import ConfigError
from fipframe.fip import FIPRegularizer
from fipframe.integrations import require

_core = require("avalanche.core", "avalanche")


class FIPPlugin(_core.SupervisedPlugin):
    """Keeps the function on earlier experiences' inputs while Avalanche trains the next.

    Args:
        mem_size: inputs stored per experience.
        metric, alpha, reduction, batch_size, seed: as :class:`fipframe.FIPRegularizer`
            (``batch_size`` stored inputs per step; all when None).
    """

    def __init__(
        self,
        mem_size: int = 500,
        *,
        metric: str = "kl",
        alpha: float = 1.0,
        reduction: str = "mean",
        batch_size: int | None = 128,
        seed: int = 0,
    ):
        super().__init__()
        if mem_size < 1:
            raise ConfigError(f"mem_size: expected a positive integer, got {mem_size}")
        self.mem_size = mem_size
        self._options: dict[str, Any] = dict(
            metric=metric, alpha=alpha, reduction=reduction, batch_size=batch_size, seed=seed
        )
        self._gen = torch.Generator().manual_seed(seed)
        self.regularizer: FIPRegularizer | None = None

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        reg = self.regularizer
        if reg is None or len(reg) == 0:
            return
        reg.model = strategy.model  # the strategy may have replaced it (dynamic modules)
        strategy.loss += reg()

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        data = strategy.experience.dataset.eval()
        n = min(self.mem_size, len(data))
        idx = torch.randperm(len(data), generator=self._gen)[:n].tolist()
        x = torch.stack([data[i][0] for i in idx])
        if self.regularizer is None:
            self.regularizer = FIPRegularizer(strategy.model, **self._options)
        self.regularizer.model = strategy.model
        self.regularizer.add(x)
