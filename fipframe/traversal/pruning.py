"""Hard pruning as a component of a stage: masks set by magnitude, kept at zero afterwards.

A stage's ``prune:`` sets boolean masks every ``prune.every`` steps along its schedule and at
the stage end at ``prune.sparsity``. Masks are path state: they live in the path's carry under
``mask:<name>`` (so they follow branches, checkpoints and rewinds) and only shrink. The stage
loop calls :meth:`Pruner.start`, :meth:`before_step`, :meth:`after_step` and :meth:`finish`;
a stage without ``prune:`` and without masks gets a pruner whose calls change nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from fipframe.core.params import Params
from fipframe.core.sparsity import (
    SparsityConfig,
    apply_masks,
    count,
    counted,
    groups_for,
    intersect,
    magnitude_masks,
    masks_in,
    store_masks,
)


class Pruner:
    """The masks of one stage of a path, and the hard projections its ``prune:`` asks for.

    Args:
        cfg: the stage's config (``prune`` may be None).
        carry: the path's carry; masks are read from and written back to it.
        groups: returns the adapter's prune groups (for ``structured`` pruning).
        params: the stage's first point (checks that the groups fit it).
        where: ``branch/stage`` for error messages.
    """

    def __init__(
        self,
        cfg: Any,
        carry: dict[str, Tensor],
        groups: Callable[[], list[Any]],
        params: Params,
        where: str,
    ):
        self.prune: SparsityConfig | None = cfg.prune
        self.carry = carry
        self.masks: dict[str, Tensor] = masks_in(carry)
        self.groups = (
            groups_for(self.prune, groups(), params, f"{where}.prune") if self.prune else []
        )

    # -- the loop's calls -------------------------------------------------------------------------
    def start(self, params: Params) -> Params:
        """A fresh stage starts with the path's pruned weights at zero."""
        return apply_masks(params, self.masks)

    def before_step(self, params: Params, step: int, steps: int) -> Params:
        """Refresh the masks on the stage's schedule (every ``prune.every`` steps)."""
        p = self.prune
        if p is not None and p.every and step % p.every == 0:
            return self._project(params, p.target(step / steps))
        return params

    def after_step(self, params: Params) -> Params:
        """Pruned weights stay zero whatever the step did."""
        return apply_masks(params, self.masks) if self.masks else params

    def finish(self, params: Params) -> tuple[Params, bool]:
        """The hard projection onto the final mask; whether the weights jumped."""
        if self.prune is None:
            return params, False
        return self._project(params, self.prune.sparsity), True

    # -- state for rollback -----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Tensor]:
        return dict(self.masks)

    def restore(self, masks: dict[str, Tensor]) -> None:
        self.masks = dict(masks)
        store_masks(self.carry, self.masks)

    # -- measures ---------------------------------------------------------------------------------
    def measures(
        self,
        params: Params,
        objectives: list[Any],
        progress: float,
        evaluate: Callable[[Params], dict[str, float]],
    ) -> dict[str, float]:
        """Zeros among the counted weights; for a soft target, the accuracy of its projection.

        ``sparsity`` counts the tensors the stage's ``prune:`` (or a soft sparsity target's
        config) counts, or the masked ones; ``projected/...`` is the accuracy the network would
        have if projected onto the current target mask here (the accuracy along a FIP path).
        """
        targets = [o for o in objectives if isinstance(o.config, SparsityConfig)]
        # a soft target's schedule is the one the path follows; a stage's prune: counts else
        spec = targets[0].config if targets else self.prune
        names = counted(params, spec) if spec is not None else list(self.masks)
        if not names:
            return {}
        c = count(params, names)
        out = {"sparsity": c.sparsity, "params/nonzero": float(c.nonzero)}
        if spec is not None:
            out["sparsity/target"] = spec.target(progress)
        target_masks = getattr(targets[0], "masks", None) if targets else None
        if target_masks and progress < 1.0:
            accs = evaluate(apply_masks(params, target_masks))
            out.update({f"projected/{k}": v for k, v in accs.items() if k.endswith("average")})
        return out

    def _project(self, params: Params, sparsity: float) -> Params:
        assert self.prune is not None
        self.masks = intersect(
            magnitude_masks(params, self.prune, sparsity, self.groups), self.masks
        )
        store_masks(self.carry, self.masks)
        return apply_masks(params, self.masks)
