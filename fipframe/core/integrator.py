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
class Split:
    """A step's loss cut at its one training forward, so that lockstep paths
    (:mod:`fipframe.traversal.lockstep`) can stack several paths' forwards into one.

    ``terms(p, forward(p, inputs))`` is ``evaluate`` at the whole point ``p``
    (``whole(moving)`` adds the parameters the stage holds fixed); ``inputs`` is None for a
    step without a forward (``terms`` then gets None).
    """

    inputs: Any
    forward: Callable[[Params, Any], Tensor]
    terms: Callable[[Params, Tensor | None], Terms]
    whole: Callable[[Params], Params]


@dataclass
class Given:
    """A gradient computed for the problem elsewhere (stacked with other paths'):
    :func:`riemannian_gradient` uses it when it is asked for that gradient at that point."""

    at: Params  # the very dict the integrator was handed
    evaluate: Callable[[Params], Terms]  # the problem's own (a changed problem gets its own)
    alpha: float
    reduction: str
    grads: list[Tensor]  # Euclidean, in the order of ``at``
    terms: Terms
    total: Tensor


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
    #: the loss cut at its forward (None where the step needs another forward, e.g. an
    #: eval-mode one for the stored inputs of a model with BatchNorm or dropout)
    split: Split | None = None
    #: a gradient computed by lockstep paths; :func:`riemannian_gradient` takes it (and sets
    #: this back to None) when it is asked for that gradient at that point
    given: Given | None = None


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

    def lockstep_loss(self, problem: StepProblem) -> tuple[float, str] | None:
        """``(alpha, reduction)`` if ``step`` takes exactly one
        ``riemannian_gradient(params, problem, alpha, reduction)`` at the point it is handed;
        paths run in lockstep then compute that gradient for several paths at once. None (the
        default): the step is computed alone."""
        return None

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
    given = problem.given
    if (
        given is not None
        and given.at is params
        and given.evaluate is problem.evaluate
        and (given.alpha, given.reduction) == (alpha, reduction)
    ):
        problem.given = None  # taken (the engine checks): used once
        grads, terms, total = given.grads, given.terms, given.total
    else:
        leaves = [p.detach().requires_grad_(True) for p in params.values()]
        terms = problem.evaluate(like(params, leaves))
        total = weighted_total(terms, alpha, reduction)
        grads = torch.autograd.grad(total, leaves, allow_unused=True)
        grads = [
            torch.zeros_like(p) if g is None else g for p, g in zip(leaves, grads, strict=True)
        ]
    if problem.average is not None:  # the gradient of the global batch, the same everywhere
        grads = problem.average(grads)
        problem.averaged = True
    rgrad = problem.manifold.egrad2rgrad(params, like(params, grads))
    if problem.gradient_sink is not None:
        problem.gradient_sink(rgrad)
    return rgrad, terms, total.detach()


def weighted_total(terms: Terms, alpha: float, reduction: str = "mean") -> Tensor:
    """``objective + alpha * divergence`` (``alpha * stored`` for the ``sum`` reduction)."""
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
    return total


def step_stats(terms: Terms, total: Tensor) -> dict[str, Tensor]:
    """The standard per-step statistics (device tensors): total, objective, divergence, parts."""
    out = {"loss/total": total, "loss/objective": terms.objective.detach()}
    if terms.divergence is not None:
        out["loss/divergence"] = terms.divergence.detach()
    out.update({f"loss/{k}": v.detach() for k, v in terms.parts.items()})
    return out
