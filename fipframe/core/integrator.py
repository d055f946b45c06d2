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
    step without a forward (``terms`` then gets None). ``stored`` is the step's stored inputs,
    those ``StepProblem.stored_forward`` closes over (None without them).
    """

    inputs: Any
    forward: Callable[[Params, Any], Tensor]
    terms: Callable[[Params, Tensor | None], Terms]
    whole: Callable[[Params], Params]
    stored: Any = None


@dataclass(frozen=True)
class SolveSpec:
    """A solve a step rule makes at each step, declared by
    :meth:`PathIntegrator.lockstep_solve`: ``(P g P + damping I) x = b`` for ``b`` the flat
    Riemannian gradient it takes (``P`` the tangent projection at the point), by unpreconditioned
    conjugate gradients to relative residual ``tol`` in at most ``iters`` iterations."""

    damping: float
    iters: int
    tol: float


@dataclass(frozen=True)
class SpectrumSpec:
    """A spectrum a step rule computes this step, declared by
    :meth:`PathIntegrator.lockstep_solve`: the top ``k`` eigenpairs of ``P g P`` at the point
    it is handed, by :func:`~fipframe.core.linalg.lanczos` with ``iters`` iterations (None: its
    default) from the start vector of ``seed``."""

    k: int
    iters: int | None
    seed: int


@dataclass
class Solved:
    """A solve computed for the step elsewhere (stacked with other paths'), under ``spec``:
    a CG solve for the Riemannian gradient ``rgrad`` (the very dict
    :func:`riemannian_gradient` returned; taken by :meth:`StepProblem.take_solve`), or a
    spectrum at the point ``at`` (taken by :meth:`StepProblem.take_spectrum`)."""

    rgrad: Params | None
    spec: SolveSpec | SpectrumSpec
    solve: Any  # a fipframe.core.linalg.Solve or Eigen
    #: each tensor of ``rgrad`` (or ``at``) as it was solved for (changed: no solve)
    tensors: tuple[tuple[int, int], ...] = ()
    at: Params | None = None

    @staticmethod
    def of(rgrad: Params) -> tuple[tuple[int, int], ...]:
        return tuple((id(t), t._version) for t in rgrad.values())


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
    #: the Riemannian gradient of ``grads`` at ``at`` and its solve, where the step declared
    #: one (:meth:`PathIntegrator.lockstep_solve`) and it was stacked too
    rgrad: Params | None = None
    solved: Solved | None = None


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
    #: the solve that came with the given gradient, until :meth:`take_solve` (or
    #: :meth:`take_spectrum`) takes it
    solved: Solved | None = None

    def take_solve(self, rgrad: Params, spec: SolveSpec) -> Any:
        """The :class:`~fipframe.core.linalg.Solve` computed for ``rgrad`` under ``spec`` by
        lockstep paths, or None (solve it yourself). Taken once."""
        return self._take("rgrad", rgrad, spec)

    def take_spectrum(self, params: Params, spec: SpectrumSpec) -> Any:
        """The :class:`~fipframe.core.linalg.Eigen` computed at ``params`` (the very dict the
        step was handed) under ``spec`` by lockstep paths, or None. Taken once."""
        return self._take("at", params, spec)

    def _take(self, field: str, of: Params, spec: SolveSpec | SpectrumSpec) -> Any:
        solved = self.solved
        if (
            solved is None
            or getattr(solved, field) is not of
            or solved.spec != spec
            or solved.tensors != Solved.of(of)
        ):
            return None
        self.solved = None
        return solved.solve


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

    def lockstep_solve(
        self, params: Params, state: State, problem: StepProblem
    ) -> SolveSpec | SpectrumSpec | None:
        """The solve ``step`` makes this step beside the gradient of :meth:`lockstep_loss`,
        if it asks for it before solving: a :class:`SolveSpec` (asked of
        :meth:`StepProblem.take_solve`) or a :class:`SpectrumSpec` (asked of
        :meth:`StepProblem.take_spectrum`). Lockstep paths then solve it for several paths at
        once (one stacked metric product per iteration). None (the default): the step solves
        alone, if it solves."""
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
        if problem.average is None:
            problem.solved = given.solved
        if given.rgrad is not None and problem.average is None:
            if problem.gradient_sink is not None:
                problem.gradient_sink(given.rgrad)
            return given.rgrad, terms, total.detach()
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
