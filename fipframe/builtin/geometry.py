"""Step rules that use the metric's geometry directly (METHOD.md section 2, ways 3 and 4).

- ``natural``: solve ``(g + lambda I) theta = grad L`` by conjugate gradients with metric-vector
  products on the stored inputs, to a relative residual ``cg_tol`` (at most ``cg_iters``
  iterations), rescale to ``||theta|| = eps`` and retract. This is the closed form of the
  papers' step: minimise ``theta^T g theta`` while following ``grad L`` under ``||theta|| = eps``.
  It damps the gradient along function-changing directions and passes its null-space part. The
  iterations and the residual reached are logged per chunk (``cg/iters``, ``cg/residual``,
  ``cg/capped``): a solve cut short is a different, unnamed step.
- ``projected``: project ``grad L`` off the top-``rank`` eigenvectors of ``g`` (Lanczos,
  refreshed every ``refresh`` steps) and step ``eps`` along what is left: the 2024 paper's view
  of the metric's spectrum as the low-rank subspace adaptation must avoid.

On a manifold both work in the tangent space at the current point: the operator is
``P g P`` (``P`` the tangent projection), the gradient is the Riemannian one, and the direction
is normalised after projection, so a step is exactly ``eps`` long before the retraction. Both
carry optional momentum, moved between points by the manifold's vector transport, and fall back
to the plain normalised gradient when a stage has no stored inputs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from torch import Tensor

from fipframe.core.configs import PluginConfig, Positive, value_at
from fipframe.core.integrator import (
    PathIntegrator,
    SolveSpec,
    SpectrumSpec,
    State,
    StepProblem,
    riemannian_gradient,
    step_stats,
)
from fipframe.core.linalg import (
    MatVec,
    Solve,
    conjugate_gradient,
    hutchinson_diag,
    jacobi,
    lanczos,
)
from fipframe.core.manifold import Euclidean, Manifold
from fipframe.core.params import Params, ParamSpace
from fipframe.plugins import hookimpl
from fipframe.registry import Spec


class NaturalConfig(PluginConfig):
    kind: Literal["natural"] = "natural"
    eps: Positive = Field(0.01, description="length of each step")
    damping: float = Field(
        1e-3, gt=0.0, le=1e6, description="lambda in (g + lambda I) theta = grad L"
    )
    cg_tol: float = Field(
        1e-2,
        gt=0.0,
        lt=1.0,
        description="stop CG at this relative residual ||b - (g + lambda I) theta|| / ||b||",
    )
    cg_iters: int = Field(
        500,
        ge=1,
        le=10**4,
        description="cap on CG iterations; steps that reach it are counted in cg/capped",
    )
    preconditioner: Literal["none", "jacobi"] = Field(
        "none",
        description="jacobi: precondition CG with a Hutchinson estimate of diag(g) "
        "(measured not to pay on the MLP benchmark; see docs/design.md)",
    )
    precond_samples: int = Field(
        16, ge=1, le=10**4, description="metric-vector products per diagonal estimate"
    )
    precond_refresh: int = Field(50, ge=1, le=10**9, description="steps between diagonal estimates")
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

    def lockstep_loss(self, problem: StepProblem) -> tuple[float, str]:
        return 0.0, "mean"  # the gradient of the objectives; the metric steers the solve

    def init(self, params: Params) -> State:
        return {}

    def direction(
        self,
        params: Params,
        b: Tensor,
        state: State,
        problem: StepProblem,
        stats: dict[str, Tensor],
        grad: Params,
    ) -> Tensor:
        """The step direction (flat, tangent) for gradient ``b`` (``grad`` flattened); may
        update ``state``/``stats``."""
        raise NotImplementedError

    @staticmethod
    def operator(params: Params, problem: StepProblem) -> MatVec:
        """``g`` on flat vectors, restricted to the tangent space at ``params`` (``P g P``)."""
        g = problem.metric.operator(problem.stored_forward, params)  # type: ignore[union-attr,arg-type]
        manifold = problem.manifold
        if isinstance(manifold, Euclidean):
            return g
        space = ParamSpace.of(params)

        def tangent(v: Tensor) -> Tensor:
            return space.flatten(manifold.proju(params, space.unflatten(v)))

        return lambda v: tangent(g(tangent(v)))

    def step(
        self, params: Params, state: State, problem: StepProblem, scale: float = 1.0
    ) -> tuple[Params, State, dict[str, Tensor]]:
        grad, terms, total = riemannian_gradient(params, problem)
        space = ParamSpace.of(params)
        manifold = problem.manifold
        b = space.flatten(grad)
        state = dict(state)
        stats = step_stats(terms, total)
        stats["grad_norm"] = b.norm()
        if problem.stored_forward is not None and problem.metric is not None:
            d = self.direction(params, b, state, problem, stats, grad)
        else:  # no stored inputs yet: nothing to protect
            d = b
        d = _tangent(manifold, params, space, d)
        mu = self.config.momentum
        if mu and "m" in state:
            prev = manifold.transp(state["at"], params, space.unflatten(state["m"]))
            d = mu * _tangent(manifold, params, space, space.flatten(prev)) + d
        if mu:
            state["m"], state["at"] = d, params
        eps = value_at(self.config.eps, problem.progress) * scale
        if isinstance(manifold, Euclidean):
            length = d.norm()
        else:  # the manifold's own norm of the tangent direction
            length = manifold.inner(params, *(space.unflatten(d),) * 2).sqrt()
        unit = space.unflatten(d / (length + 1e-12))
        return manifold.retr(params, unit, -eps), state, stats


def _tangent(manifold: Manifold, params: Params, space: ParamSpace, v: Tensor) -> Tensor:
    if isinstance(manifold, Euclidean):
        return v
    return space.flatten(manifold.proju(params, space.unflatten(v)))


class Natural(_Normalised):
    capabilities = frozenset({"needs_metric", "metric:solve"})

    def lockstep_solve(self, params: Params, state: State, problem: StepProblem) -> Any:
        return self._spec()

    def _spec(self) -> SolveSpec | None:
        """The solve :meth:`_solve` makes, where lockstep paths can make it instead."""
        cfg = self.config
        if cfg.preconditioner != "none":  # each path's own diagonal estimate
            return None
        return SolveSpec(cfg.damping, cfg.cg_iters, cfg.cg_tol)

    def direction(
        self,
        params: Params,
        b: Tensor,
        state: State,
        problem: StepProblem,
        stats: dict[str, Tensor],
        grad: Params,
    ) -> Tensor:
        spec = self._spec()  # what it solves alone, whatever a subclass declares
        solve = problem.take_solve(grad, spec) if spec is not None else None
        if solve is None:
            solve = self._solve(params, b, state, problem)
        theta = solve.x
        stats["cos_natural_grad"] = (theta @ b) / (theta.norm() * b.norm() + 1e-30)
        stats["cg/iters"] = b.new_tensor(float(solve.iters))
        stats["cg/residual"] = solve.residual.detach()
        stats["cg/capped"] = b.new_tensor(0.0 if solve.converged else 1.0)
        return theta

    def _solve(self, params: Params, b: Tensor, state: State, problem: StepProblem) -> Solve:
        cfg = self.config
        g = self.operator(params, problem)
        precond = None
        if cfg.preconditioner == "jacobi":
            age = int(state.get("precond_age", -1))
            if age < 0 or age >= cfg.precond_refresh:
                draws = int(state.get("precond_draws", 0))  # new probe vectors every estimate
                diag = hutchinson_diag(g, b.numel(), cfg.precond_samples, like=b, seed=draws)
                state["precond"], state["precond_draws"], age = (
                    jacobi(diag, cfg.damping),
                    draws + 1,
                    0,
                )
            state["precond_age"] = age + 1
            precond = state["precond"]
        return conjugate_gradient(
            g, b, damping=cfg.damping, iters=cfg.cg_iters, tol=cfg.cg_tol, precond=precond
        )


class Projected(_Normalised):
    capabilities = frozenset({"needs_metric", "metric:spectrum"})

    def lockstep_solve(self, params: Params, state: State, problem: StepProblem) -> Any:
        return self._spec(params, state)

    def _spec(self, params: Params, state: State) -> SpectrumSpec | None:
        """The Lanczos run of this step (None between refreshes)."""
        age = int(state.get("age", -1))
        if 0 <= age < self.config.refresh:
            return None
        size = sum(t.numel() for t in params.values())
        k = min(self.config.rank, size)
        # a new start vector at every refresh
        return SpectrumSpec(k, self.config.lanczos_iters, int(state.get("draws", 0)))

    def direction(
        self,
        params: Params,
        b: Tensor,
        state: State,
        problem: StepProblem,
        stats: dict[str, Tensor],
        grad: Params,
    ) -> Tensor:
        age = int(state.get("age", -1))
        spec = self._spec(params, state)
        if spec is not None:  # a refresh
            eig = problem.take_spectrum(params, spec)
            if eig is None:
                g = self.operator(params, problem)
                eig = lanczos(g, b.numel(), spec.k, iters=spec.iters, like=b, seed=spec.seed)
            state["basis"], state["values"], state["draws"], age = (
                eig.vectors,
                eig.values,
                spec.seed + 1,
                0,
            )
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
