"""Step rules that use the metric's geometry directly (METHOD.md section 2, ways 3 and 4).

- ``natural``: solve ``(g + lambda I) theta = grad L`` by conjugate gradients with metric-vector
  products on the stored inputs, rescale to ``||theta|| = eps`` and retract. This is the
  closed form of the papers' step: minimise ``theta^T g theta`` while following ``grad L`` under
  ``||theta|| = eps``. It damps the gradient along function-changing directions and passes
  its null-space part.
- ``projected``: project ``grad L`` off the top-``rank`` eigenvectors of ``g`` (Lanczos,
  refreshed every ``refresh`` steps) and step ``eps`` along what is left: the 2024 paper's view
  of the metric's spectrum as the low-rank subspace adaptation must avoid.

Both carry optional momentum, moved between points by the manifold's vector transport, and
fall back to the plain normalised gradient when a stage has no stored inputs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor

from fipframe.core.configs import PluginConfig, Positive, value_at
from fipframe.core.integrator import (
    PathIntegrator,
    State,
    StepProblem,
    riemannian_gradient,
    step_stats,
)
from fipframe.core.linalg import conjugate_gradient, lanczos
from fipframe.core.params import Params, ParamSpace
from fipframe.plugins import hookimpl
from fipframe.registry import Spec


class NaturalConfig(PluginConfig):
    kind: Literal["natural"] = "natural"
    eps: Positive = Field(0.01, description="length of each step")
    damping: float = Field(1e-3, gt=0.0, description="lambda in (g + lambda I) theta = grad L")
    cg_iters: int = Field(10, ge=1, le=500, description="conjugate-gradient iterations (fixed)")
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="momentum on the step direction")


class ProjectedConfig(PluginConfig):
    kind: Literal["projected"] = "projected"
    eps: Positive = Field(0.01, description="length of each step")
    rank: int = Field(20, ge=1, le=10**4, description="eigenvectors of g projected out")
    refresh: int = Field(50, ge=1, le=10**9, description="steps between Lanczos refreshes")
    lanczos_iters: int | None = Field(None, ge=2, description="Lanczos iterations (2 rank + 10)")
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="momentum on the step direction")


class _Normalised(PathIntegrator):
    """The shared step: gradient of the objectives, a direction from the metric (subclasses),
    momentum carried by transport, then a retraction of length eps."""

    capabilities = frozenset({"needs_metric"})
    uses_divergence = False  # the metric shapes the direction; no penalty term

    def init(self, params: Params) -> State:
        return {}

    def direction(
        self,
        params: Params,
        b: Tensor,
        state: State,
        problem: StepProblem,
        stats: dict[str, Tensor],
    ) -> Tensor:
        """The step direction (flat) for gradient ``b``; may update ``state`` and ``stats``."""
        raise NotImplementedError

    def step(
        self, params: Params, state: State, problem: StepProblem, scale: float = 1.0
    ) -> tuple[Params, State, dict[str, Tensor]]:
        grad, terms, total = riemannian_gradient(params, problem)
        space = ParamSpace.of(params)
        b = space.flatten(grad)
        state = dict(state)
        stats = step_stats(terms, total)
        stats["grad_norm"] = b.norm()
        if problem.stored_forward is not None and problem.metric is not None:
            d = self.direction(params, b, state, problem, stats)
        else:  # no stored inputs yet: nothing to protect
            d = b
        mu = self.config.momentum
        if mu and "m" in state:
            prev = problem.manifold.transp(state["at"], params, space.unflatten(state["m"]))
            d = mu * space.flatten(prev) + d
        if mu:
            state["m"], state["at"] = d, params
        eps = value_at(self.config.eps, problem.progress) * scale
        unit = problem.manifold.proju(params, space.unflatten(d / (d.norm() + 1e-12)))
        return problem.manifold.retr(params, unit, -eps), state, stats


class Natural(_Normalised):
    capabilities = frozenset({"needs_metric", "metric:solve"})

    def direction(
        self,
        params: Params,
        b: Tensor,
        state: State,
        problem: StepProblem,
        stats: dict[str, Tensor],
    ) -> Tensor:
        g = problem.metric.operator(problem.stored_forward, params)  # type: ignore[union-attr,arg-type]
        theta, _ = conjugate_gradient(g, b, damping=self.config.damping, iters=self.config.cg_iters)
        stats["cos_natural_grad"] = (theta @ b) / (theta.norm() * b.norm() + 1e-30)
        return theta


class Projected(_Normalised):
    capabilities = frozenset({"needs_metric", "metric:spectrum"})

    def direction(
        self,
        params: Params,
        b: Tensor,
        state: State,
        problem: StepProblem,
        stats: dict[str, Tensor],
    ) -> Tensor:
        age = int(state.get("age", -1))
        if age < 0 or age >= self.config.refresh:
            g = problem.metric.operator(problem.stored_forward, params)  # type: ignore[union-attr,arg-type]
            k = min(self.config.rank, b.numel())
            eig = lanczos(
                g, b.numel(), k, iters=self.config.lanczos_iters, like=b, seed=max(age, 0)
            )
            state["basis"], state["values"], age = eig.vectors, eig.values, 0
        state["age"] = age + 1
        basis = state["basis"]
        inside = basis @ b
        stats["grad_in_top_eigenspace"] = inside.square().sum() / b.square().sum().clamp_min(1e-30)
        stats["top_eigenvalue"] = state["values"][0]
        return b - basis.T @ inside


@hookimpl
def fipframe_register_integrators() -> list[Spec]:
    return [
        Spec(
            "natural",
            NaturalConfig,
            Natural,
            "eps step along (g + lambda I)^-1 grad L, solved by CG on stored inputs",
        ),
        Spec(
            "projected",
            ProjectedConfig,
            Projected,
            "eps step along grad L with the top-k eigenspace of g (Lanczos) projected out",
        ),
    ]
