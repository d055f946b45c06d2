"""``FIPCallback``: the FIP penalty added to a LightningModule's own training.

    from fipframe.integrations.lightning import FIPCallback

    fip = FIPCallback(metric="kl", alpha=10.0, batch_size=128)
    trainer = L.Trainer(callbacks=[fip], max_steps=500)
    trainer.fit(module, old_task)
    fip.add(stored_inputs)            # anchored at the start of the next fit, at these weights
    trainer = L.Trainer(callbacks=[fip], max_steps=500)
    trainer.fit(module, new_task)     # loss + alpha * D(f(x; w), f(x; w_after_old_task))

The term's gradient is added after Lightning's backward of the module's loss (so
``training_step`` stays as it is), scaled like that loss under gradient accumulation and
``16-mixed``'s GradScaler; stored inputs take the module's dtype (``bf16-true``,
``64-true``). The penalty is logged as ``fip_penalty``. Automatic optimisation: under manual
optimisation the term is added at every ``manual_backward``. One process only: under DDP the
second backward would be reduced on its own (refused with a message). Resumed from a
checkpoint, the callback takes its stored inputs and anchors from it (inputs given again to
the constructor are not stored twice).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from fipframe.data import inputs as I
from fipframe.errors import ConfigError
from fipframe.fip import FIPRegularizer
from fipframe.integrations import require

L = require("lightning.pytorch", "lightning")


class FIPCallback(L.Callback):
    """Adds ``alpha * D`` over stored inputs to every training step of ``trainer.fit``.

    Args:
        inputs: inputs to keep, anchored when the first fit starts (or use :meth:`add`).
        metric, alpha, reduction, batch_size, seed: as :class:`fipframe.FIPRegularizer`.
    """

    def __init__(
        self,
        inputs: Tensor | Mapping[str, Tensor] | None = None,
        *,
        metric: str = "kl",
        alpha: float = 1.0,
        reduction: str = "mean",
        batch_size: int | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self._options: dict[str, Any] = dict(
            metric=metric, alpha=alpha, reduction=reduction, batch_size=batch_size, seed=seed
        )
        self._pending: list[Tensor | Mapping[str, Tensor]] = [] if inputs is None else [inputs]
        self._initial = inputs  # what a checkpoint holds already, when resuming
        self.regularizer: FIPRegularizer | None = None
        self._restored: dict[str, Any] | None = None

    def add(self, inputs: Tensor | Mapping[str, Tensor]) -> None:
        """Keep ``inputs`` too; their anchor outputs are taken when the next fit starts."""
        self._pending.append(inputs)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.world_size > 1:
            raise ConfigError(
                f"FIPCallback: runs in one process (world size {trainer.world_size}); the "
                "penalty's separate backward is not reduced by DDP"
            )
        if self.regularizer is None:
            self.regularizer = FIPRegularizer(pl_module, **self._options)
            restored, self._restored = self._restored, None
            if restored:  # from a checkpoint: the anchors of the network that stored them
                first = next(pl_module.parameters())
                self.regularizer.inputs = I.to(restored["inputs"], first.device, first.dtype)
                self.regularizer.anchor_outputs = restored["anchor_outputs"].to(first.device)
                # the constructor's inputs are in the checkpoint already: anchoring them again
                # would be wrong; inputs given with add() since are new
                self._pending = [x for x in self._pending if x is not self._initial]
        self.regularizer.model = pl_module
        for x in self._pending:
            self.regularizer.add(x)
        self._pending.clear()

    def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
        reg = self.regularizer
        if reg is None or len(reg) == 0:
            return
        penalty = reg() / trainer.accumulate_grad_batches
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        (scaler.scale(penalty) if scaler is not None else penalty).backward()
        pl_module.log("fip_penalty", penalty.detach() * trainer.accumulate_grad_batches)

    def state_dict(self) -> dict[str, Any]:
        reg = self.regularizer
        if reg is None or reg.inputs is None:
            return {}
        return {"inputs": reg.inputs, "anchor_outputs": reg.anchor_outputs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Stored inputs and anchors from a Lightning checkpoint, used when the fit starts."""
        self._restored = state_dict or None
