"""Built-in sparsification objective.

- ``prune_target``: distance from the current weights w to P_s(w), their magnitude-pruned copy
  at the scheduled sparsity s. The mask behind P_s is refreshed every ``every`` steps on the
  device (``torch.kthvalue``), and held fixed in between, so the gradient is
  ``(1 - m) * w`` (scaled): it pulls exactly the weights below the threshold toward zero. With
  the penalty or eps step and a metric on stored inputs, the path moves toward the sparse copy
  while keeping the network's outputs, the papers' FIP sparsification. A stage's ``prune:``
  then projects onto the mask at the end (see :mod:`fipframe.core.sparsity`).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from fipframe.core.configs import NonNegative
from fipframe.core.objective import Batch, SecondaryObjective, StageContext
from fipframe.core.params import Params
from fipframe.core.sparsity import (
    SparsityConfig,
    groups_for,
    intersect,
    magnitude_masks,
    masks_in,
)
from fipframe.errors import TraversalError
from fipframe.plugins import hookimpl
from fipframe.registry import Spec


class PruneTargetConfig(SparsityConfig):
    kind: Literal["prune_target"] = "prune_target"
    weight: NonNegative = Field(1.0, description="weight beta of this term")
    distance: Literal["l2", "squared"] = Field(
        "l2",
        description="l2: ||w - P_s(w)|| (the papers' form, a pull of constant strength); "
        "squared: ||w - P_s(w)||^2 / 2 (a pull that fades near the target)",
    )


class PruneTarget(SecondaryObjective):
    """Distance to the magnitude-pruned copy of the current weights."""

    def bind(self, ctx: StageContext) -> None:
        cfg: PruneTargetConfig = self.config
        self.steps = max(ctx.steps, 1)
        groups = ctx.adapter.prune_groups() if cfg.structured else []
        self.groups = groups_for(cfg, groups, ctx.anchor, "objective prune_target")
        self.fixed = masks_in(ctx.carry)  # weights pruned on earlier stages stay pruned
        self.refresh_every = cfg.every if cfg.every is not None else ctx.steps + 1
        self.masks: dict[str, Tensor] = {}

    def refresh(self, params: Params, step: int) -> None:
        cfg: PruneTargetConfig = self.config
        masks = magnitude_masks(params, cfg, cfg.target(step / self.steps), self.groups)
        if not masks:
            raise TraversalError(
                "objective prune_target: no traversable tensor counts toward sparsity "
                f"(include {list(cfg.include)}, exclude {list(cfg.exclude)}, "
                f"matrices_only {cfg.matrices_only})"
            )
        self.masks = intersect(masks, self.fixed)
        self._off = [~m for m in self.masks.values()]  # the weights the target sets to zero

    def loss(self, params: Params, logits: Tensor | None, batch: Batch | None) -> Tensor:
        assert self.masks, "refresh() runs before the first loss"
        pruned = torch._foreach_mul([params[n] for n in self.masks], self._off)
        sq = torch.stack(torch._foreach_norm(pruned)).square().sum()
        if self.config.distance == "squared":
            return 0.5 * sq
        return (sq + 1e-12).sqrt()

    def state_dict(self) -> dict[str, Tensor]:
        return {f"mask.{n}": m for n, m in self.masks.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state:
            self.masks = {k[len("mask.") :]: v for k, v in state.items()}
            self._off = [~m for m in self.masks.values()]


@hookimpl
def fipframe_register_objectives() -> list[Spec]:
    return [
        Spec(
            "prune_target",
            PruneTargetConfig,
            PruneTarget,
            "distance to the magnitude-pruned copy of the current weights (FIP sparsification)",
        )
    ]
