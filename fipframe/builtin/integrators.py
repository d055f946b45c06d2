"""Built-in step rules.

- ``gradient``: an optimiser on the secondary objectives alone (plain fine-tuning, replay).
- ``penalty``: an optimiser on ``sum_k beta_k L_k + alpha * mean_x D(f(x; w), f(x; w_anchor))``
  over stored inputs, both terms per-sample means so ``alpha`` does not scale with batch size.
  This is the authors' FIP step. ``reduction: sum`` weighs the sum over the stored inputs
  instead, the authors' ``CE_mean + lambda1 * sum_x D``: ``alpha`` (mean) = ``lambda1`` x stored
  inputs per step.
- ``eps_step``: a fixed-length step ``w <- retr(w, -eps u / ||u||)`` along the gradient ``u`` of
  the same penalty, the papers' eps-norm step.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor

from fipframe.core import optim
from fipframe.core.configs import NonNegative, PluginConfig, Positive, value_at
from fipframe.core.integrator import (
    PathIntegrator,
    State,
    StepProblem,
    riemannian_gradient,
    step_stats,
)
from fipframe.core.manifold import Euclidean
from fipframe.core.params import Params, like, values
from fipframe.plugins import hookimpl
from fipframe.registry import Spec


class GradientConfig(PluginConfig):
    kind: Literal["gradient"] = "gradient"
    lr: Positive = Field(1e-3, description="learning rate (number or ramp)")
    optimizer: optim.OptimizerConfig = Field(
        optim.OptimizerConfig(), description="inner optimiser (adam or sgd) and its settings"
    )


ALPHA = (
    "weight of the output divergence over the step's stored inputs: of their mean (reduction "
    "mean) or of their sum (reduction sum, the authors' lambda1); mean alpha = sum alpha x stored "
    "inputs per step"
)
REDUCTION = (
    "mean: the divergence term is a per-sample mean, so alpha does not scale with the memory "
    "batch; sum: summed over the stored inputs like the authors' code"
)


class PenaltyConfig(GradientConfig):
    kind: Literal["penalty"] = "penalty"  # type: ignore[assignment]
    alpha: NonNegative = Field(1.0, description=ALPHA)
    reduction: Literal["mean", "sum"] = Field("mean", description=REDUCTION)


class EpsStepConfig(PluginConfig):
    kind: Literal["eps_step"] = "eps_step"
    eps: Positive = Field(0.01, description="Euclidean/Riemannian length of each step")
    alpha: NonNegative = Field(1.0, description=ALPHA)
    reduction: Literal["mean", "sum"] = Field("mean", description=REDUCTION)


class Gradient(PathIntegrator):
    """An optimiser step on the objectives (and, in subclasses, the divergence penalty)."""

    def _alpha(self, problem: StepProblem) -> float:
        return 0.0

    def _reduction(self) -> str:
        return "mean"

    def init(self, params: Params) -> State:
        return {"opt": optim.init(self.config.optimizer, values(params))}

    def lockstep_loss(self, problem: StepProblem) -> tuple[float, str]:
        return self._alpha(problem), self._reduction()

    def step(
        self, params: Params, state: State, problem: StepProblem, scale: float = 1.0
    ) -> tuple[Params, State, dict[str, Tensor]]:
        rgrad, terms, total = riemannian_gradient(
            params, problem, self._alpha(problem), self._reduction()
        )
        direction, opt_state = optim.update(
            self.config.optimizer, values(params), values(rgrad), state["opt"]
        )
        direction_t = problem.manifold.proju(params, like(params, direction))
        lr = value_at(self.config.lr, problem.progress) * scale
        new = problem.manifold.retr(params, direction_t, -lr)
        if not isinstance(problem.manifold, Euclidean):
            # the first moment is a tangent vector at ``params``: carry it to ``new`` (as geoopt's
            # Riemannian optimisers do); Adam's second moment is per-coordinate scale, not a
            # tangent vector, and stays as it is
            moved = problem.manifold.transp(params, new, like(params, opt_state["m"]))
            opt_state = {**opt_state, "m": values(moved)}
        return new, {"opt": opt_state}, step_stats(terms, total)


class Penalty(Gradient):
    """The FIP penalty step: objectives + alpha * mean divergence to the anchor outputs."""

    capabilities = frozenset({"needs_metric"})

    def _alpha(self, problem: StepProblem) -> float:
        return value_at(self.config.alpha, problem.progress)

    def _reduction(self) -> str:
        return self.config.reduction


class EpsStep(PathIntegrator):
    """Normalised step of fixed length eps along the penalty's Riemannian gradient."""

    capabilities = frozenset({"needs_metric"})

    def init(self, params: Params) -> State:
        return {}

    def lockstep_loss(self, problem: StepProblem) -> tuple[float, str]:
        return value_at(self.config.alpha, problem.progress), self.config.reduction

    def step(
        self, params: Params, state: State, problem: StepProblem, scale: float = 1.0
    ) -> tuple[Params, State, dict[str, Tensor]]:
        alpha = value_at(self.config.alpha, problem.progress)
        rgrad, terms, total = riemannian_gradient(params, problem, alpha, self.config.reduction)
        length = problem.manifold.inner(params, rgrad, rgrad).sqrt()
        eps = value_at(self.config.eps, problem.progress) * scale
        new = problem.manifold.retr(params, rgrad, -eps / (length + 1e-12))
        stats = step_stats(terms, total)
        stats["grad_norm"] = length.detach()
        return new, state, stats


@hookimpl
def fipframe_register_integrators() -> list[Spec]:
    return [
        Spec("gradient", GradientConfig, Gradient, "optimiser on the objectives (fine-tuning)"),
        Spec(
            "penalty",
            PenaltyConfig,
            Penalty,
            "optimiser on objectives + alpha * mean divergence on stored inputs (FIP)",
        ),
        Spec(
            "eps_step",
            EpsStepConfig,
            EpsStep,
            "fixed-length eps step along the penalty's gradient (FIP eps-norm step)",
        ),
    ]
