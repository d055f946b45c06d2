"""SecondaryObjective: what steers a path (a new task, a sparse target, a second network).

An objective returns a loss term; the engine sums the weighted terms and never lets an
objective mutate shared state. If an objective needs a forward pass it says which inputs by
returning a :class:`Batch` from :meth:`sample`; the engine runs a single forward on all
objectives' inputs (and the stored inputs of the invariance term) concatenated, and hands
each objective its own slice of the logits.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from torch import Tensor

from fipframe.core.configs import value_at
from fipframe.core.params import Params

if TYPE_CHECKING:
    from fipframe.core.adapter import ArchitectureAdapter
    from fipframe.data.memory import Memory
    from fipframe.data.sampling import Sampler
    from fipframe.data.task import Task, TaskSequence


class Batch(NamedTuple):
    """Inputs (already on the device) and optional integer targets."""

    inputs: Tensor
    targets: Tensor | None = None


@dataclass
class StageContext:
    """What an objective may use, handed to :meth:`SecondaryObjective.bind` at stage start."""

    tasks: TaskSequence
    task: Task | None
    memory: Memory
    adapter: ArchitectureAdapter
    batch_size: int
    memory_batch: int
    sampler: Callable[[str, int, int], Sampler]  # (name, population, batch_size) -> Sampler
    steps: int
    anchor: Params  # the point the stage starts from


class SecondaryObjective(ABC):
    """A loss on the current weights. ``config.weight`` (a Scheduled number) scales it."""

    def __init__(self, config: Any):
        self.config = config

    def weight(self, progress: float) -> float:
        return value_at(getattr(self.config, "weight", 1.0), progress)

    def bind(self, ctx: StageContext) -> None:  # noqa: B027  (optional hook)
        """Called once at stage start; keep what :meth:`sample` and :meth:`loss` need."""

    def sample(self, step: int) -> Batch | None:
        """Inputs this objective needs the logits of at ``step``, or None."""
        return None

    @abstractmethod
    def loss(self, params: Params, logits: Tensor | None, batch: Batch | None) -> Tensor:
        """The (per-sample mean) loss as a 0-d tensor."""

    def refresh(self, params: Params, step: int) -> None:  # noqa: B027  (optional hook)
        """Refresh internal targets (e.g. a pruning mask). Called every chunk."""
