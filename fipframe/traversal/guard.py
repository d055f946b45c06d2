"""The divergence guard: chunks that stayed finite but went wrong (``run.guard``).

Non-finite values are caught by the stage loop's one sync per chunk. A finite chunk can still
have diverged: an Adam learning rate of 1e6 gives a loss of 1e13, a step length of 1e6 throws
the network to chance accuracy. Two checks, both configurable, both computed from values the
chunk already has (no extra host sync):

- loss growth: the chunk's mean ``loss/total`` is more than ``loss_growth`` times the stage's
  first-step loss (at least ``loss_floor``);
- collapse: the network answers (almost) one class to everything (at least 98% of the val
  inputs, pooled over tasks, get the same prediction) and its mean val accuracy over the
  tasks the path has learned (and the stage's own) is at chance (at most 1.1 x), down from
  at least 1.5 x chance at the chunk before (or, for the stage's first chunk, at the end of
  the path's previous stage). It is off by default: early in a new class-incremental task a
  healthy network can look exactly like that (on the test suite's three-task sequence, LwF's
  first chunk of its third task gave one class to 98% of the val inputs at 18% mean
  accuracy, 1.1 x chance), so only the loss check is on unless a config turns this one on.

Chance is one over the learned classes (class-incremental: one head over every class), or the
mean of one over each task's classes (task-incremental). A tripped guard is handled like a
non-finite chunk (``action: rollback``) or ends the run with the checkpoint at the last good
chunk (``action: stop``).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

MAJORITY = 0.98  # the share of inputs given one class that makes a network "constant"


class Guard:
    """One stage's guard. ``ref``: the stage's first-step loss (from the checkpoint on resume)."""

    def __init__(
        self,
        cfg: Any,
        tasks: Any,
        learned: set[int],
        ref: float | None,
        before: dict[str, float] | None = None,
    ):
        self.cfg = cfg
        self.ref = ref
        self.pending: Tensor | None = None  # the first step's loss, until the chunk's sync
        self.learned = sorted(learned)
        seqs = [tasks.tasks[t] for t in self.learned]
        if not seqs:
            self.chance = None
        elif tasks.scenario == "task":
            self.chance = sum(1 / len(t.classes) for t in seqs) / len(seqs)
        else:
            self.chance = 1 / len({c for t in seqs for c in t.classes})
        #: the accuracy the next chunk is compared with (the previous stage's end at first)
        self.prev_acc = self._mean(before) if before else None

    def _mean(self, metrics: dict[str, float]) -> float | None:
        if not self.learned:
            return None
        split = "val" if f"acc/val/task_{self.learned[0]}" in metrics else "test"
        accs = [metrics.get(f"acc/{split}/task_{t}") for t in self.learned]
        return None if any(a is None for a in accs) else sum(accs) / len(accs)  # type: ignore[arg-type]

    def watch(self, stats: dict[str, Tensor]) -> None:
        """Keep the first step's loss (as a tensor: read at the chunk's sync)."""
        if self.ref is None and self.pending is None and "loss/total" in stats:
            self.pending = stats["loss/total"].detach().float().clone()

    def settle(self, value: float | None) -> None:
        if self.pending is not None and value is not None:
            self.ref = value
        self.pending = None

    def loss_problem(self, mean_loss: float | None) -> str | None:
        growth = self.cfg.loss_growth
        if growth is None or mean_loss is None or self.ref is None:
            return None
        base = max(abs(self.ref), self.cfg.loss_floor)
        if mean_loss > growth * base:
            return (
                f"diverged: the chunk's mean loss {mean_loss:.3g} is {mean_loss / base:.3g} times "
                f"the stage's first {self.ref:.3g} (run.guard.loss_growth {growth:g})"
            )
        return None

    def accuracy_problem(self, metrics: dict[str, float], majority: float | None) -> str | None:
        """Check a chunk's evaluation (``majority``: the share of the most common prediction);
        remembers it as the chunk before when it passes."""
        if not self.cfg.collapse or self.chance is None:
            return None
        now = self._mean(metrics)
        if now is None:
            return None
        before, self.prev_acc = self.prev_acc, now
        if before is not None and before >= 1.5 * self.chance and now <= 1.1 * self.chance:
            self.prev_acc = before  # a rolled-back chunk is not the chunk before
            return (
                f"collapsed: mean accuracy over tasks {self.learned} fell from "
                f"{100 * before:.1f}% to {100 * now:.1f}% (chance {100 * self.chance:.1f}%), "
                f"{100 * majority:.0f}% of inputs given one class (run.guard.collapse)"
            )
        return None
