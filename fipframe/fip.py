"""FIP in your own training loop: the penalty and the metric products without the engine.

The engine's ``penalty`` step adds ``alpha * mean_x D(f(x; w), f(x; w_anchor))`` over stored
inputs to the task loss. The same term, for any ``torch.nn.Module`` in any loop::

    import fipframe

    fip = fipframe.FIPRegularizer(model, stored_inputs, metric="kl", alpha=10.0)
    for x, y in loader:                     # the new task
        loss = F.cross_entropy(model(x), y) + fip()
        loss.backward(); opt.step(); opt.zero_grad()

``fip_penalty`` is the bare function; ``metric_vp`` the metric-vector product ``g v`` at the
module's current weights (for natural-gradient or curvature work of your own). Metrics are the
registered ``metric`` kinds (``fipframe plugins``), built-in or from plugins. The Lightning
callback and the Avalanche plugin (``fipframe.integrations``) are thin wrappers of
:class:`FIPRegularizer`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from fipframe.core.adapter import ArchitectureAdapter, call
from fipframe.core.metric import Metric
from fipframe.core.params import Params
from fipframe.data import inputs as I
from fipframe.errors import ConfigError

__all__ = ["FIPRegularizer", "fip_penalty", "make_metric", "metric_vp"]


def make_metric(kind: str | Metric = "kl", /, **options: Any) -> Metric:
    """A registered metric by kind (``l2``, ``kl``, ``bhattacharyya``, a plugin's), its options
    validated like a config's ``metric:``; a :class:`Metric` instance is returned as it is."""
    if isinstance(kind, Metric):
        if options:
            raise ConfigError("metric: options are for a kind name, not a built Metric")
        return kind
    import json

    key = (kind, json.dumps(options, sort_keys=True, default=repr))
    if key not in _METRICS:  # built once per process: the plugin manager costs ~40 ms
        _METRICS[key] = _build_metric(kind, options)
    return _METRICS[key]


_METRICS: dict[tuple[str, str], Metric] = {}


def _build_metric(kind: str, options: dict[str, Any]) -> Metric:
    from pydantic import ValidationError

    from fipframe.plugins import make_plugin_manager

    registry = make_plugin_manager().registry
    spec = registry.spec("metric", kind)
    try:
        config = spec.config(kind=kind, **options)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'metric'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"metric {kind!r}: {problems}") from None
    return registry.build("metric", config)


def _in_eval(model: nn.Module, inputs: I.Inputs) -> Tensor:
    """Outputs in eval mode (no dropout, BatchNorm's running statistics), like the anchor's."""
    was = model.training
    model.train(False)
    try:
        return call(model, inputs)
    finally:
        model.train(was)


def fip_penalty(
    model: nn.Module,
    metric: str | Metric,
    anchor_outputs: Tensor,
    inputs: Tensor | Mapping[str, Tensor],
    *,
    reduction: str = "mean",
) -> Tensor:
    """``D(f(x; w), f(x; w_anchor))`` over ``inputs``, differentiable in the module's weights.

    Args:
        model: the network now; called in eval mode, like the engine's stored-input forward.
        metric: a metric kind or a :class:`Metric`.
        anchor_outputs: the logits the anchor network gave on ``inputs`` (``[N, classes]``).
        inputs: a tensor, or named tensors passed as keyword arguments (token ids + mask).
        reduction: ``mean`` over the inputs (``alpha`` independent of their number) or ``sum``
            (the authors' ``lambda1 * sum_x D``).
    """
    if reduction not in ("mean", "sum"):
        raise ConfigError(f"reduction: expected 'mean' or 'sum', got {reduction!r}")
    metric = make_metric(metric)
    n = I.length(inputs)
    if anchor_outputs.shape[0] != n:
        raise ConfigError(
            f"anchor_outputs: {anchor_outputs.shape[0]} rows for {n} inputs; record them on the "
            "same inputs (FIPRegularizer does)"
        )
    logits = _in_eval(model, inputs)
    if logits.shape != anchor_outputs.shape:
        raise ConfigError(
            f"anchor_outputs: shape {tuple(anchor_outputs.shape)}, but the model gives "
            f"{tuple(logits.shape)} on these inputs"
        )
    d = metric.divergence(logits, metric.reference(anchor_outputs.detach()))
    return d.mean() if reduction == "mean" else d.sum()


def metric_vp(
    model: nn.Module,
    metric: str | Metric,
    inputs: Tensor | Mapping[str, Tensor],
    v: Mapping[str, Tensor],
) -> Params:
    """``g v``: the pullback metric at the module's current weights on ``inputs``, applied to
    ``v`` (a tensor per name of ``v``, a subset of ``model.named_parameters()``). Matrix-free:
    one forward-mode product and one backward pass (``Metric.mvp``)."""
    metric = make_metric(metric)
    own = dict(model.named_parameters())
    unknown = [n for n in v if n not in own]
    if unknown:
        raise ConfigError(f"v: {unknown[:3]} are not parameters of {type(model).__name__}")
    params = {n: own[n].detach() for n in v}
    for n, t in v.items():
        if t.shape != params[n].shape:
            raise ConfigError(
                f"v[{n!r}]: shape {tuple(t.shape)}, parameter {tuple(params[n].shape)}"
            )

    adapter = ArchitectureAdapter(model)

    def forward(p: Params) -> Tensor:
        return adapter.forward(p, inputs)

    was = model.training
    model.train(False)
    try:
        return metric.mvp(forward, params, dict(v))
    finally:
        model.train(was)


class FIPRegularizer:
    """The FIP penalty against anchor outputs on stored inputs, for any training loop.

    ``FIPRegularizer(model, inputs)`` records the model's outputs on ``inputs`` now (the
    anchor); each call returns ``alpha * D`` between the model's outputs and those. For a
    sequence of tasks, :meth:`add` stores the next task's inputs with the network's outputs at
    that point, so every earlier task stays protected (as the engine's memory does).

    Args:
        model: the network being trained.
        inputs: stored inputs of the task(s) to keep (a tensor or named tensors), or None to
            start empty and :meth:`add` later.
        metric: a metric kind (``kl``, ``bhattacharyya``, ``l2``, a plugin's) or a Metric.
        alpha: weight of the divergence.
        reduction: ``mean`` or ``sum`` over the inputs of a call.
        batch_size: inputs per call, drawn at random from those stored (all when None).
        seed: seed of those draws.
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: Tensor | Mapping[str, Tensor] | None = None,
        *,
        metric: str | Metric = "kl",
        alpha: float = 1.0,
        reduction: str = "mean",
        batch_size: int | None = None,
        seed: int = 0,
    ):
        if alpha < 0:
            raise ConfigError(f"alpha: expected a number >= 0, got {alpha}")
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"batch_size: expected a positive integer or None, got {batch_size}")
        if reduction not in ("mean", "sum"):
            raise ConfigError(f"reduction: expected 'mean' or 'sum', got {reduction!r}")
        self.model = model
        self.metric = make_metric(metric)
        self.alpha = float(alpha)
        self.reduction = reduction
        self.batch_size = batch_size
        self._gen = torch.Generator().manual_seed(seed)
        self.inputs: I.Inputs | None = None
        self.anchor_outputs: Tensor | None = None
        if inputs is not None:
            self.add(inputs)

    def __len__(self) -> int:
        return 0 if self.inputs is None else I.length(self.inputs)

    @torch.no_grad()
    def add(self, inputs: Tensor | Mapping[str, Tensor]) -> None:
        """Store ``inputs`` with the model's outputs on them now (on the model's device; floating
        tensors in its dtype)."""
        first = next(self.model.parameters())
        x = I.to(inputs, first.device, first.dtype)  # floating inputs in the model's precision
        out = _in_eval(self.model, x).detach()
        if self.inputs is None:
            self.inputs, self.anchor_outputs = x, out
            return
        try:
            self.inputs = I.cat([self.inputs, x])
        except RuntimeError as exc:
            raise ConfigError(
                f"inputs: {I.describe(x)} do not stack onto the stored {I.describe(self.inputs)}"
            ) from exc
        self.anchor_outputs = torch.cat([self.anchor_outputs, out])  # type: ignore[list-item]

    def penalty(self) -> Tensor:
        """``D`` over the stored inputs (or a random batch of them), without ``alpha``."""
        if self.inputs is None or self.anchor_outputs is None:
            raise ConfigError("FIPRegularizer: no stored inputs yet; call add(inputs) first")
        x, ref = self.inputs, self.anchor_outputs
        if self.batch_size is not None and self.batch_size < len(self):
            idx = torch.randperm(len(self), generator=self._gen)[: self.batch_size]
            idx = idx.to(ref.device)
            x, ref = I.take(x, idx), ref[idx]
        return fip_penalty(self.model, self.metric, ref, x, reduction=self.reduction)

    def __call__(self) -> Tensor:
        """``alpha * D``, to add to the loss (a zero when nothing is stored yet)."""
        if self.inputs is None:
            return next(self.model.parameters()).new_zeros(())
        return self.alpha * self.penalty()
