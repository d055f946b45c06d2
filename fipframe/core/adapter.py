"""ArchitectureAdapter: which weights move, and how to run the network functionally.

``forward(params, inputs)`` calls the module through ``torch.func.functional_call`` with the
traversable tensors replaced, so integrators and metrics work on plain dicts of tensors and
never mutate the module. Tied weights appear once (``named_parameters`` de-duplicates them and
``functional_call`` re-ties them).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from fipframe.core.params import Params
from fipframe.errors import ConfigError

if TYPE_CHECKING:
    from fipframe.core.sparsity import PruneGroup


def call(model: nn.Module, inputs: Tensor | Mapping[str, Tensor]) -> Tensor:
    """The module's logits on ``inputs`` (named tensors become keyword arguments)."""
    out = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    return getattr(out, "logits", out)


class ArchitectureAdapter:
    """Adapts a plain ``torch.nn.Module`` that maps inputs to logits.

    Args:
        model: the network; its forward takes one tensor, or named tensors as keyword
            arguments, and returns logits (or an object with a ``.logits`` attribute).
        traversable: glob patterns over parameter names that the path may move.
        frozen: glob patterns excluded from ``traversable``.
        num_classes: size of the output (for reporting).
        prune_groups: ``model -> [PruneGroup]``, the units structured pruning may remove
            (see :mod:`fipframe.core.sparsity` for ready-made ones).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        traversable: Sequence[str] = ("*",),
        frozen: Sequence[str] = (),
        num_classes: int | None = None,
        prune_groups: Callable[[nn.Module], list[PruneGroup]] | None = None,
    ):
        self.model = model
        self._prune_groups = prune_groups
        self.num_classes = num_classes
        names = [n for n, _ in model.named_parameters()]
        chosen = [
            n
            for n in names
            if any(fnmatch.fnmatchcase(n, g) for g in traversable)
            and not any(fnmatch.fnmatchcase(n, g) for g in frozen)
        ]
        if not chosen:
            raise ConfigError(
                f"model.traversable: patterns {list(traversable)} (minus frozen {list(frozen)}) "
                f"match no parameter; parameters are: {', '.join(names[:8])}"
                + (" ..." if len(names) > 8 else "")
            )
        self.names: tuple[str, ...] = tuple(chosen)

    # -- points --------------------------------------------------------------------------------
    def params(self) -> Params:
        """The module's current traversable weights, as detached copies."""
        own = dict(self.model.named_parameters())
        return {n: own[n].detach().clone() for n in self.names}

    def load(self, params: Params) -> None:
        """Copy ``params`` into the module (for export or eager use)."""
        own = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, v in params.items():
                own[n].copy_(v)

    def to(
        self, device: torch.device | str, dtype: torch.dtype | None = None
    ) -> ArchitectureAdapter:
        self.model.to(device=device, dtype=dtype)
        return self

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    # -- function ------------------------------------------------------------------------------
    def forward(self, params: Params, inputs: Tensor | Mapping[str, Tensor]) -> Tensor:
        """Logits of the network at weights ``params`` (others as in the module).

        A tensor is the module's one positional argument; a mapping of named tensors is passed
        as keyword arguments (``model(input_ids=..., attention_mask=...)``).
        """
        if isinstance(inputs, Mapping):
            out = torch.func.functional_call(self.model, params, (), dict(inputs), strict=False)
        else:
            out = torch.func.functional_call(self.model, params, (inputs,), strict=False)
        logits = getattr(out, "logits", out)
        return logits

    def prune_groups(self) -> list[PruneGroup]:
        """Units pruned together (structured pruning); none unless the adapter was given a
        ``prune_groups`` function. Read from the module each time, so they follow its shapes."""
        return self._prune_groups(self.model) if self._prune_groups is not None else []
