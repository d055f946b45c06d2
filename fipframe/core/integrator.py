"""PathIntegrator: the step rule that turns objectives, metric and manifold into the next point.

Integrators are pure ``init``/``step`` pairs (no hidden mutation), so they are easy to test,
checkpoint and resume: ``step(params, state, problem, scale) -> (params, state, stats)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor

from fipframe.core.manifold import Manifold
from fipframe.core.metric import Metric
from fipframe.core.params import Params

State = dict[str, Any]


@dataclass
class Terms:
    """The loss terms at one point: weighted objectives, mean divergence to the anchor."""

    objective: Tensor
    divergence: Tensor | None = None
    parts: dict[str, Tensor] = field(default_factory=dict)


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


class PathIntegrator(ABC):
    """A step rule. Declare ``"needs_metric"`` in the spec if the metric is used."""

    needs_metric: ClassVar[bool] = False

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
