"""PathIntegrator: the step rule that turns objectives, metric and manifold into the next point.

Integrators are pure ``init``/``step`` pairs (no hidden mutation), so they are easy to test,
checkpoint and resume: ``step(params, state, problem, scale) -> (params, state, stats)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from fipframe.core.manifold import Manifold
from fipframe.core.metric import Metric
from fipframe.core.params import Params, like

State = dict[str, Any]


@dataclass
class Terms:
    """The loss terms at one point: weighted objectives, mean divergence to the anchor.

    ``stored`` is the number of stored inputs the divergence is the mean over (what a ``sum``
    reduction multiplies it by), every data-parallel process's together.
    """

    objective: Tensor
    divergence: Tensor | None = None
    parts: dict[str, Tensor] = field(default_factory=dict)
    stored: int = 0


@dataclass
class StepProblem:
    """Everything one step needs, for the current batches.

    ``evaluate(params)`` runs one forward over all inputs of the step and returns the terms.
    ``progress`` is the fraction of the stage done (for schedules).
    """

    evaluate: Callable[[Params], Terms]
    manifold: Manifold
    metric: Metric | None
    progress: float
    stored_forward: Callable[[Params], Tensor] | None = None
    #: if set, :func:`riemannian_gradient` hands it the gradient of each step (for observers)
    gradient_sink: Callable[[Params], None] | None = None
    #: data parallelism (:mod:`fipframe.traversal.ranks`): averages tensors over the processes.
    #: :func:`riemannian_gradient` averages the gradient with it; the metric's products are
    #: averaged already. An integrator that differentiates ``evaluate`` itself must call it.
    average: Callable[[list[Tensor]], list[Tensor]] | None = None
    #: set by :func:`riemannian_gradient` once it averaged (the engine checks it)
    averaged: bool = False


class PathIntegrator(ABC):
    """A step rule.

    ``capabilities`` (read by its :class:`~fipframe.registry.Spec`): ``"needs_metric"`` if the
    step uses a metric, and ``"metric:<ability>"`` for each ability it needs from the metric
    class (``solve``, ``spectrum``, ``diag``, ``mvp``); ``fipframe validate`` checks both.
    """

    capabilities: ClassVar[frozenset[str]] = frozenset()
    #: whether ``step`` reads ``Terms.divergence``; if not, the engine never computes it
    uses_divergence: ClassVar[bool] = True
    #: whether ``step`` averages over data-parallel processes by itself (through
    #: ``StepProblem.average``); steps built on :func:`riemannian_gradient` need not say so
    data_parallel: ClassVar[bool] = False

    def __init__(self, config: Any):
        self.config = config

    @abstractmethod
    def init(self, params: Params) -> State:
        """The integrator state at the start of a stage."""

    @abstractmethod
    def step(
        self, params: Params, state: State, problem: StepProblem, scale: float = 1.0
    ) -> tuple[Params, State, dict[str, Tensor]]:
        """One step. ``scale`` shrinks the step after a rollback (1.0 normally).

        Returns the new point, the new state and device-tensor statistics (no host syncs).
        """


def riemannian_gradient(
    params: Params, problem: StepProblem, alpha: float = 0.0, reduction: str = "mean"
) -> tuple[Params, Terms, Tensor]:
    """Riemannian gradient of ``objective + alpha * divergence`` at ``params``.

    ``reduction="mean"`` weighs the mean divergence over the step's stored inputs,
    ``"sum"`` their sum (``alpha`` times ``terms.stored`` on the mean): the authors'
    ``CE_mean + lambda1 * sum_batch D``. Returns the gradient (tangent at ``params``), the terms
    and the detached total loss. Parameters the loss does not reach get a zero gradient.
    """
    leaves = [p.detach().requires_grad_(True) for p in params.values()]
    terms = problem.evaluate(like(params, leaves))
    total = terms.objective
    if terms.divergence is not None and alpha:
        if reduction == "sum" and terms.stored < 1:
            raise ValueError(
                "reduction 'sum' needs Terms.stored, the number of stored inputs the divergence "
                f"averages (got {terms.stored}); a StepProblem.evaluate that returns a "
                "divergence must say how many inputs it covers"
            )
        weight = alpha * terms.stored if reduction == "sum" else alpha
        total = total + weight * terms.divergence
    grads = torch.autograd.grad(total, leaves, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(leaves, grads, strict=True)]
    if problem.average is not None:  # the gradient of the global batch, the same everywhere
        grads = problem.average(grads)
        problem.averaged = True
    rgrad = problem.manifold.egrad2rgrad(params, like(params, grads))
    if problem.gradient_sink is not None:
        problem.gradient_sink(rgrad)
    return rgrad, terms, total.detach()


def step_stats(terms: Terms, total: Tensor) -> dict[str, Tensor]:
    """The standard per-step statistics (device tensors): total, objective, divergence, parts."""
    out = {"loss/total": total, "loss/objective": terms.objective.detach()}
    if terms.divergence is not None:
        out["loss/divergence"] = terms.divergence.detach()
    out.update({f"loss/{k}": v.detach() for k, v in terms.parts.items()})
    return out
