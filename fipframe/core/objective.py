"""SecondaryObjective: what steers a path (a new task, a sparse target, a second network).

An objective returns a loss term; the engine sums the weighted terms and never lets an
objective mutate shared state. If an objective needs a forward pass it says which inputs by
returning a :class:`Batch` from :meth:`sample`; the engine runs a single forward on all
objectives' inputs (and the stored inputs of the invariance term) concatenated, and hands
each objective its own slice of the logits. Batches that name the same rows through their
``key`` (LwF draws the same task batches as ``task_ce``) go through that forward once.

Methods that remember earlier tasks (EWC, SI) keep what they learned in ``StageContext.carry``,
a flat ``name -> tensor`` dict that belongs to the path: it follows a branch from the trunk,
is saved with every checkpoint and next to every stage's end point, and is restored on resume.
An objective may write to it in :meth:`SecondaryObjective.bind` and
:meth:`SecondaryObjective.finish` only, under keys that start with its ``kind``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from torch import Tensor

from fipframe.core.configs import value_at
from fipframe.core.params import Params

if TYPE_CHECKING:
    from fipframe.core.adapter import ArchitectureAdapter
    from fipframe.data.memory import Memory
    from fipframe.data.sampling import Sampler
    from fipframe.data.task import Task, TaskSequence


class Batch(NamedTuple):
    """Inputs (already on the device: a tensor, or a mapping of named tensors), optional
    integer targets, and where the rows came from.

    ``key`` names the rows, e.g. ``("task", sampler.name)``: within one step, batches with equal
    keys must hold the same inputs, and the engine forwards them once and hands each of their
    objectives the same logits. ``None`` (the default): never shared.
    """

    inputs: Tensor | Mapping[str, Tensor]
    targets: Tensor | None = None
    key: Hashable | None = None


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
    #: end points of the stages finished earlier on this path, as (task index or None, point)
    ends: list[tuple[int | None, Params]]
    #: the path's persistent state (see the module docstring)
    carry: dict[str, Tensor]
    #: the metric built for this stage's divergence ("metric:"), or None
    metric: Any = None
    #: index of ``task`` in ``tasks`` (None for a stage without a task)
    task_index: int | None = None
    #: ``outputs(params, inputs)``: logits in eval mode, batched, without gradients (the way
    #: the engine computes every anchor output); ``inputs`` may also be a whole split
    outputs: Callable[[Params, Any], Tensor] | None = None
    #: ``batches(name, split, batch_size)``: the stage's batches of ``split`` along the sampler
    #: ``name``; ``.get(step)`` gives ``(inputs, labels, rows)`` on the device, from resident or
    #: streamed data alike. Objectives asking for the same name and split share one source.
    batches: Callable[[str, Any, int], Any] | None = None


class SecondaryObjective(ABC):
    """A loss on the current weights. ``config.weight`` (a Scheduled number) scales it.

    Set ``observes_steps = True`` to have :meth:`observe` called after every step with the
    gradient the step followed (Synaptic Intelligence's path integral needs it).
    """

    #: declared abilities, read by the objective's Spec: ``"uses_memory"`` if it reads the
    #: stored examples (``fipframe validate`` then asks for ``memory.size > 0``)
    capabilities: ClassVar[frozenset[str]] = frozenset()
    observes_steps: ClassVar[bool] = False
    #: steps between calls of :meth:`refresh` (from step 0); None: never called
    refresh_every: int | None = None

    def __init__(self, config: Any):
        self.config = config

    def weight(self, progress: float) -> float:
        return value_at(getattr(self.config, "weight", 1.0), progress)

    @classmethod  # noqa: B027  (optional hook)
    def check(cls, config: Any, adapter: ArchitectureAdapter, where: str) -> None:
        """Before the run writes anything: refuse a config this model cannot serve (a target
        network of another architecture). Raise ConfigError naming ``where`` (the config path
        of this objective)."""

    def bind(self, ctx: StageContext) -> None:  # noqa: B027  (optional hook)
        """Called once at stage start; keep what :meth:`sample` and :meth:`loss` need."""

    def sample(self, step: int) -> Batch | None:
        """Inputs this objective needs the logits of at ``step``, or None."""
        return None

    @abstractmethod
    def loss(self, params: Params, logits: Tensor | None, batch: Batch | None) -> Tensor:
        """The (per-sample mean) loss as a 0-d tensor."""

    def refresh(self, params: Params, step: int) -> None:  # noqa: B027  (optional hook)
        """Refresh internal targets (e.g. a pruning mask) before the step ``step``.

        Called at steps that are multiples of ``refresh_every``; keep it on the device. Save
        what it computes in :meth:`state_dict` so a resumed run continues exactly.
        """

    def observe(self, before: Params, after: Params, grad: Params) -> None:  # noqa: B027
        """After each step (only if ``observes_steps``): the move and the gradient it followed.

        Runs every step, so keep it on the device (no ``.item()``) and out of place: the engine
        keeps references to :meth:`state_dict` tensors to roll back non-finite chunks.
        ``before`` and ``after`` hold every traversable parameter; ``grad`` only those the
        stage moves (``moves``/``holds``): a held parameter has no gradient and did not move.
        """

    def finish(self, params: Params, carry: dict[str, Tensor]) -> None:  # noqa: B027
        """At the end of the stage, at its last point: record what later stages need."""

    def state_dict(self) -> dict[str, Tensor]:
        """Tensors that change during a stage (saved with each checkpoint for exact resume)."""
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:  # noqa: B027
        """Restore :meth:`state_dict` on resume or after a rollback."""
