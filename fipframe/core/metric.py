"""Metric: the task-encoding Riemannian metric, pulled back from output space.

A metric needs one thing: a per-sample output divergence ``D(logits, reference)``. From it
follow the penalty the ``penalty`` integrator minimises and the metric-vector product
``g v = mean_x J_x^T H_x J_x v`` (``H_x`` = Hessian of D at zero displacement). Metrics with a
closed-form ``H`` override :meth:`Metric.output_hvp`; others get it by autodiff.

Capabilities are declared in ``capabilities``, never probed with ``hasattr``: ``"diag"``,
``"spectrum"``, ``"solve"``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

from torch import Tensor

from fipframe.core.functional import divergence_hvp, metric_vp
from fipframe.core.params import Params


class Metric(ABC):
    """An output-space divergence and the metric it induces on weight space."""

    capabilities: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: object | None = None):
        self.config = config

    def reference(self, logits: Tensor) -> Tensor:
        """What is cached for anchor outputs (default: the logits). Computed once per stage."""
        return logits.detach()

    @abstractmethod
    def divergence(self, logits: Tensor, reference: Tensor) -> Tensor:
        """Per-sample divergence [N] of ``logits`` from the cached ``reference``; 0 at equality."""

    def output_hvp(self, z: Tensor, u: Tensor) -> Tensor:
        """``H u`` per sample, ``H`` = Hessian of ``D(., reference(z))`` at ``z``."""
        return divergence_hvp(lambda q, r: self.divergence(q, self.reference(r)), z, u)

    def mvp(self, forward: Callable[[Params], Tensor], params: Params, v: Params) -> Params:
        """Metric-vector product ``g(params) v`` on the inputs ``forward`` closes over."""
        return metric_vp(forward, params, v, self.output_hvp)
