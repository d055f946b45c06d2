"""Metric: the task-encoding Riemannian metric, pulled back from output space.

A metric needs one thing: a per-sample output divergence ``D(logits, reference)``. From it
follow the penalty the ``penalty`` integrator minimises and the metric-vector product
``g v = mean_x J_x^T H_x J_x v`` (``H_x`` = Hessian of D at zero displacement). Metrics with a
closed-form ``H`` override :meth:`Metric.output_hvp`; others get it by autodiff.

Capabilities are declared in ``capabilities``, never probed with ``hasattr``. Every metric
with a metric-vector product gets ``"diag"`` (exact for small models, Hutchinson otherwise),
``"spectrum"`` (Lanczos) and ``"solve"`` (conjugate gradients) from the generic algorithms in
:mod:`fipframe.core.linalg`; a metric that lacks ``"mvp"`` must say so.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor

from fipframe.core.functional import composite_attention, divergence_hvp, metric_vp
from fipframe.core.linalg import hutchinson_diag
from fipframe.core.params import Params, ParamSpace


class Metric(ABC):
    """An output-space divergence and the metric it induces on weight space."""

    capabilities: ClassVar[frozenset[str]] = frozenset({"mvp", "diag", "spectrum", "solve"})

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
        mode = getattr(self.config, "product", "forward")
        return metric_vp(forward, params, v, self.output_hvp, mode)

    def mvp_paths(self, forward: Callable[[Params], Tensor], params: Params, v: Params) -> Params:
        """:meth:`mvp` for K lockstep paths at once: ``params`` and ``v`` carry a leading path
        axis and ``forward`` maps them to outputs ``[K, N, ...]``; row k is ``g_k v_k``.

        Lockstep paths use it for their solves only where the class that defines :meth:`mvp`
        defines this too (a metric with its own product must say how to stack it), and share
        one instance's :meth:`output_hvp` among paths whose metric configs are equal.
        """
        mode = getattr(self.config, "product", "forward")
        return metric_vp(forward, params, v, self.output_hvp, mode, paths=True)

    def operator(
        self, forward: Callable[[Params], Tensor], params: Params
    ) -> Callable[[Tensor], Tensor]:
        """``g`` as a function on flat vectors (the order of ``ParamSpace.of(params)``)."""
        space = ParamSpace.of(params)
        return lambda v: space.flatten(self.mvp(forward, params, space.unflatten(v)))

    def diag(
        self,
        forward: Callable[[Params], Tensor],
        params: Params,
        *,
        exact: bool = True,
        samples: int = 64,
        seed: int = 0,
    ) -> Tensor:
        """Diagonal of ``g`` as a flat vector.

        ``exact=True`` builds each sample's Jacobian (``N x outputs x P`` numbers: small models
        only) and sums ``J_c * (H J)_c``; otherwise a Hutchinson estimate from ``samples``
        metric-vector products.
        """
        space = ParamSpace.of(params)
        flat = space.flatten(params)
        if not exact:
            return hutchinson_diag(
                self.operator(forward, params), space.size, samples, like=flat, seed=seed
            )

        def f(w: Tensor) -> Tensor:
            return forward(space.unflatten(w)).reshape(-1)

        z = forward(params).detach()
        n = z.shape[0]
        with composite_attention():
            jac = torch.func.jacrev(f)(flat).reshape(n, -1, flat.numel())  # [N, C, P]
        c = jac.shape[1]
        eye = torch.eye(c, dtype=z.dtype, device=z.device)
        h = torch.stack(
            [self.output_hvp(z, e.expand(n, c).reshape(z.shape)).reshape(n, c) for e in eye], dim=2
        )  # [N, C, C]: column d is H e_d
        return torch.einsum("ncp,ncd,ndp->p", jac, h, jac) / n
