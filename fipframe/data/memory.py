"""A fixed budget of stored inputs from earlier tasks, shared by every method.

Selection is seeded and prefix-stable: each task keeps an ordering of its training examples
(round-robin over classes for ``class_balanced``), and the task's quota takes a prefix of it.
When a new task arrives the budget is re-divided equally and every task keeps a prefix, so the
memory after tasks 1..k is a pure function of (seed, tasks), which makes resume exact.
``reservoir`` keeps, over the stream of every task's training examples, the ``size`` examples
with the smallest seeded random priorities: the same distribution as reservoir sampling
(each example seen so far is kept with equal probability), without its order dependence, so
a task's share follows its size rather than an equal split.
Labels are stored too; methods that must not use them (FIP) read ``inputs`` only.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from fipframe.data import inputs as I
from fipframe.data.task import Task


class Memory:
    def __init__(
        self,
        size: int,
        selection: Literal["class_balanced", "random", "reservoir"] = "class_balanced",
        *,
        seed: int = 0,
    ):
        self.size = size
        self.selection = selection
        self.seed = seed
        # (task index, task, ordering, the ordering's inputs, outputs recorded for them when
        # stored or None)
        self._tasks: list[tuple[int, Task, Tensor, I.Inputs, Tensor | None]] = []
        self._priority: dict[int, Tensor] = {}  # reservoir: sorted priorities of each ordering
        self.inputs: I.Inputs | None = None  # a tensor or named tensors, always resident
        self.logits: Tensor | None = None  # outputs recorded at storage time (all tasks), or None
        self.targets: Tensor | None = None
        self.task_ids: Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.targets is None else int(self.targets.shape[0])

    @property
    def seen(self) -> list[int]:
        return [t[0] for t in self._tasks]

    def copy(self) -> Memory:
        other = Memory(self.size, self.selection, seed=self.seed)
        other._tasks = list(self._tasks)
        other._priority = dict(self._priority)
        other._materialise()
        return other

    def add_task(
        self, index: int, task: Task, record: Callable[[Tensor], Tensor] | None = None
    ) -> None:
        """Make room for task ``index`` and store its share of the budget.

        ``record(inputs) -> outputs``, if given, records the network's outputs on the stored
        inputs now (the stored-logit anchor, as in DER); they never change afterwards.
        """
        if index in self.seen or self.size == 0:
            return
        order = self._ordering(index, task)
        stored = task.train.gather(order)  # read once, also from streamed data
        logits = record(stored) if record else None
        self._tasks.append((index, task, order, stored, logits))
        self._materialise()

    def _ordering(self, index: int, task: Task) -> Tensor:
        g = torch.Generator().manual_seed(zlib.crc32(f"memory/{self.seed}/{index}".encode()))
        y = task.train.y.cpu()
        if self.selection == "reservoir":
            priority, order = torch.rand(len(y), generator=g).sort()
            self._priority[index] = priority[: self.size]
            return order[: self.size]
        if self.selection == "random":
            return torch.randperm(len(y), generator=g)[: self.size]
        per_class = []
        for c in torch.unique(y):
            members = (y == c).nonzero().squeeze(1)
            per_class.append(members[torch.randperm(len(members), generator=g)])
        depth = max(len(m) for m in per_class)
        padded = torch.full((len(per_class), depth), -1, dtype=torch.long)
        for row, m in enumerate(per_class):
            padded[row, : len(m)] = m
        order = padded.t().reshape(-1)  # round-robin over classes
        return order[order >= 0][: self.size]

    def _materialise(self) -> None:
        n = len(self._tasks)
        if n == 0:
            return
        base, extra = divmod(self.size, n)
        shares = [base + (1 if k < extra else 0) for k in range(n)]
        if self.selection == "reservoir":  # the smallest priorities over every task so far
            pr = torch.cat([self._priority[t[0]] for t in self._tasks])
            owner = torch.cat(
                [torch.full((len(self._priority[t[0]]),), k) for k, t in enumerate(self._tasks)]
            )
            kept = owner[pr.argsort()[: self.size]]
            shares = torch.bincount(kept, minlength=n).tolist()
        xs, ys, ts, ls = [], [], [], []
        for k, (index, task, order, stored, logits) in enumerate(self._tasks):
            n = shares[k]
            take = order[:n].to(task.train.y.device)
            xs.append(I.narrow(stored, 0, n))
            ys.append(task.train.y[take])
            # a task's share only shrinks as tasks arrive: the rows past it are never used again
            self._tasks[k] = (index, task, order[:n], I.narrow(stored, 0, n), logits)
            ts.append(torch.full_like(ys[-1], index))
            ls.append(None if logits is None else logits[:n])
        self.inputs, self.targets, self.task_ids = I.cat(xs), torch.cat(ys), torch.cat(ts)
        self.logits = None if any(x is None for x in ls) else torch.cat(ls)  # type: ignore[arg-type]

    def counts(self) -> dict[int, int]:
        """Stored examples per task index."""
        if self.task_ids is None:
            return {}
        ids, counts = torch.unique(self.task_ids, return_counts=True)
        return dict(zip(ids.tolist(), counts.tolist(), strict=True))
