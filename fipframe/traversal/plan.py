"""The walk over a run's paths: the trunk, then each branch from the trunk's last point.

A path carries a :class:`PathState` from stage to stage: the stored-input memory, the current
point, the end points of finished stages (by task, and by name for ``start_from``) and the
carry (objectives' persistent tensors, pruning masks). A branch starts from a copy of the
trunk's. On resume the finished part of the plan is replayed from the run directory (end
points, carry, memory, which is a pure function of seed and tasks) and the interrupted stage
continues from the checkpoint.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from fipframe.core.params import Params
from fipframe.data.memory import Memory
from fipframe.traversal.build import Components
from fipframe.traversal.loop import StageLoop
from fipframe.traversal.records import TRUNK, Records, Restart


@dataclass
class PathState:
    """What follows a path from stage to stage."""

    memory: Memory
    params: Params
    ends: list[tuple[int | None, Params]] = field(default_factory=list)
    carry: dict[str, Tensor] = field(default_factory=dict)
    named: dict[str, Params] = field(default_factory=dict)  # end points by stage name

    def branch_off(self) -> PathState:
        """A branch's start: the same point, copies of everything that changes."""
        return PathState(
            self.memory.copy(), self.params, list(self.ends), dict(self.carry), dict(self.named)
        )


def plan(config: Any) -> list[tuple[str, list[Any]]]:
    """``(branch, stages)`` in the order they run: the trunk first."""
    return [(TRUNK, list(config.stages))] + [
        (name, list(stages)) for name, stages in config.branches.items()
    ]


class Walk:
    """Walks every path of a plan with a :class:`StageLoop`."""

    def __init__(self, comp: Components, records: Records, loop: StageLoop):
        self.comp = comp
        self.records = records
        self.loop = loop

    def run(self, restart: Restart | None) -> Generator[Any, Any, None]:
        """Walk the plan; a generator of the steps offered for lockstep (see
        :meth:`StageLoop.run`)."""
        comp, ev = self.comp, self.comp.evaluator
        mem = comp.config.memory
        trunk = PathState(
            Memory(mem.size, mem.selection, seed=comp.config.run.seed), comp.adapter.params()
        )
        for t in mem.learned:  # what the start point knows: its outputs are the anchor
            start = trunk.params
            if ev.bn_stale:  # a run.init point without statistics: those of this task's data
                ev.recompute_batchnorm(start, t, comp.config.stages[0].batch_size)
            trunk.memory.add_task(t, comp.tasks.tasks[t], lambda x, p=start: ev.logits(p, x))
        steps = plan(comp.config)
        self.loop.progress.plan(steps)
        order = [b for b, _ in steps]
        resume_at = (restart.branch, restart.stage) if restart else None
        for branch, stages in steps:
            if branch == TRUNK:
                path = trunk
            else:
                path = trunk.branch_off()
                ev.mark_stale()  # the module's statistics are another branch's
            first = 0
            if resume_at is not None:
                if order.index(branch) < order.index(resume_at[0]):  # finished before
                    self.loop.progress.skip(branch, stages)
                    self.add_tasks(path.memory, branch, stages)
                    if branch == TRUNK:
                        self.replay(trunk, branch, stages)
                    continue
                first = resume_at[1]
                self.loop.progress.skip(branch, stages[:first])
                self.add_tasks(path.memory, branch, stages[:first])
                done = [(s.task, self.records.end_params(branch, s.name)) for s in stages[:first]]
                path.ends += done
                path.named.update(
                    {s.name: e for s, (_, e) in zip(stages[:first], done, strict=True)}
                )
                assert restart is not None
                path.carry = dict(restart.state.get("carry", {}))
                ev.mark_stale()
            for si in range(first, len(stages)):
                start = None
                if resume_at is not None:  # the stage that was interrupted
                    assert restart is not None
                    start, resume_at = restart, None
                    path.params = self.records.load(restart.meta["anchor"])
                elif stages[si].start_from is not None:  # rewinding (lottery tickets)
                    path.params = path.named[stages[si].start_from]
                    ev.mark_stale()
                path.params = yield from self.loop.run(
                    branch,
                    si,
                    stages[si],
                    path.params,
                    path.memory,
                    start,
                    ends=path.ends,
                    carry=path.carry,
                )
                self.add_tasks(path.memory, branch, stages[si : si + 1], path.params)
                path.ends.append((stages[si].task, path.params))
                path.named[stages[si].name] = path.params
            if branch == TRUNK:
                trunk = path

    def replay(self, path: PathState, branch: str, stages: list[Any]) -> None:
        """A path that finished before the interruption, read back from the run directory."""
        path.ends = [(s.task, self.records.end_params(branch, s.name)) for s in stages]
        path.params = path.ends[-1][1] if path.ends else self.comp.adapter.params()
        path.carry = self.records.end_carry(branch, stages[-1].name) if stages else {}
        path.named = {s.name: e for s, (_, e) in zip(stages, path.ends, strict=True)}

    def add_tasks(
        self, memory: Memory, branch: str, stages: list[Any], params: Params | None = None
    ) -> None:
        """Store the tasks of finished stages, with the outputs at each stage's end point.

        ``params`` is the end point of the (single) stage just run; when replaying finished
        stages on resume, each end point is read back from the run directory.
        """
        ev = self.comp.evaluator
        logits = ev.logits
        for stage in stages:
            if stage.task is None or stage.task in memory.seen:
                continue
            if params is None:  # replaying: the end point and the buffers it was evaluated with
                end = self.records.end_params(branch, stage.name)
                buffers = self.records.stage_end(branch, stage.name).get("buffers")
                if buffers:
                    ev.load_buffers(self.records.load(buffers))
            else:
                end = params
            memory.add_task(
                stage.task, self.comp.tasks.tasks[stage.task], lambda x, p=end: logits(p, x)
            )
