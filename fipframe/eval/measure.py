"""What the engine measures of a point: outputs, accuracies, path measures, BatchNorm statistics.

:class:`Evaluator` needs only an adapter, the tasks and the run settings, so export, benches
and plugins use it without a traversal. Every forward here runs in eval mode without
gradients, in batches of ``run.eval_batch_size``: the function being preserved and reported is
the deployed one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fipframe.core.params import Params, norm, sub_tree
from fipframe.data import inputs as I
from fipframe.data.task import TaskSequence


class Evaluator:
    """Outputs and accuracies of points, and the module's BatchNorm statistics.

    Args:
        adapter: the network.
        tasks: the task sequence (val and test splits are evaluated).
        settings: the run's ``RunSettings`` (``eval_batch_size``, ``measure_inputs``,
            ``bn_batches``, ``seed``).
        ranks: data-parallel processes (:mod:`fipframe.traversal.ranks`): each evaluates its
            share of every resident split and the counts are summed, so every process must
            call :meth:`evaluate` together. None: this process alone.
    """

    def __init__(self, adapter: Any, tasks: TaskSequence, settings: Any, ranks: Any = None):
        from fipframe.traversal.ranks import Ranks

        self.adapter = adapter
        self.tasks = tasks
        self.settings = settings
        self.ranks = ranks or Ranks()
        self._class_table = tasks.class_table()
        self.batchnorm = [
            m
            for m in adapter.model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        ]
        #: the module's statistics belong to another point (a branch start, a rewind, resume)
        self.bn_stale = False
        self.majority: float | None = None  # set by evaluate()

    # -- outputs -------------------------------------------------------------------------------
    def logits(self, params: Params, x: Any) -> Tensor:
        """Eval-mode outputs on ``x`` (a tensor, named tensors or a whole split), batched,
        without gradients."""
        if getattr(x, "streamed", None) is not None:
            return self.split_logits(params, x)
        bs = self.settings.eval_batch_size
        was = self.adapter.model.training
        self.adapter.train(False)
        try:
            with torch.no_grad():
                return torch.cat(
                    [
                        self.adapter.forward(params, I.narrow(x, i, i + bs))
                        for i in range(0, I.length(x), bs)
                    ]
                )
        finally:
            self.adapter.train(was)

    def split_logits(self, params: Params, split: Any) -> Tensor:
        """Eval-mode outputs on every example of a split, resident or streamed."""
        if not getattr(split, "streamed", False):
            return self.logits(params, split.x)
        was = self.adapter.model.training
        self.adapter.train(False)
        try:
            with torch.no_grad():
                return torch.cat(
                    [
                        self.adapter.forward(params, x)
                        for x in split.inputs(self.settings.eval_batch_size)
                    ]
                )
        finally:
            self.adapter.train(was)

    def splits(self) -> list[tuple[str, int, Any]]:
        """``(split, task, data)`` of every non-empty val and test split, in evaluation order."""
        splits = [(split, i, getattr(t, split)) for split in ("val", "test")
                  for i, t in enumerate(self.tasks.tasks)]  # fmt: skip
        return [(split, i, data) for split, i, data in splits if len(data)]

    def evaluate(
        self, params: Params, *, shared: bool = True, logits: list[Tensor] | None = None
    ) -> dict[str, float]:
        """Accuracy of ``params`` on every task's val and test split, and their averages.

        Also sets ``majority``: the fraction of val inputs (pooled over tasks) given the most
        common prediction, 1.0 for a network that answers one class to everything (read by the
        divergence guard; computed in the same sync). Accuracies are ratios of counts, rounded
        once (float64), alike on every device.

        ``shared`` (data parallelism only): each process counts its share of every resident
        split and the counts are summed, so every process must call it together; with
        ``shared=False`` this process evaluates everything alone.

        ``logits``: the outputs at ``params`` on every split of :meth:`splits`, computed
        elsewhere (lockstep paths stack their evaluations); this process alone."""
        names, correct, sizes = [], [], []
        table = self._class_table
        ranks = self.ranks
        splits = self.splits()
        given = iter(logits) if logits is not None else None
        shared = shared and given is None
        # shared out: each process counts its rows of every split (resident splits only: a
        # streamed one is read whole by every process), the counts are summed exactly
        shared = (
            shared and ranks.parallel and not any(getattr(d, "streamed", False) for *_, d in splits)
        )
        votes: Tensor | None = None  # predictions per class, pooled over the val splits
        for split, i, data in splits:
            n = len(data)
            lo, hi = (n * ranks.rank // ranks.world, n * (ranks.rank + 1) // ranks.world) if (
                shared) else (0, n)  # fmt: skip
            names.append(f"acc/{split}/task_{i}")
            sizes.append(n)
            if hi == lo:
                correct.append(torch.zeros((), dtype=torch.float32, device=data.y.device))
                continue
            part = data if (lo, hi) == (0, n) else _rows(data, lo, hi)
            out = next(given) if given is not None else self.split_logits(params, part)
            pred = self.tasks.restrict(out, i, table).argmax(-1)
            correct.append((pred == part.y).float().sum())
            if split == "val" or not any(s == "val" for s, *_ in splits):
                count = torch.bincount(pred, minlength=out.shape[-1]).float()
                votes = count if votes is None else votes + count
        if votes is None and splits:
            classes = self.tasks.num_classes
            votes = torch.zeros(classes, dtype=torch.float32, device=splits[0][2].y.device)
        numbers: list[float] = []
        if names:
            assert votes is not None
            counts = torch.cat([torch.stack(correct), votes])
            if shared:
                counts = ranks.total(counts)
            # whole numbers (exact in float32 up to 2^24 rows), divided once on the host
            counts = counts.cpu().double()  # one sync (the host has float64 where mps has not)
            acc = counts[: len(names)] / torch.tensor(sizes, dtype=torch.float64)
            seen = counts[len(names) :]
            numbers = torch.cat([acc, (seen.max() / seen.sum().clamp_min(1)).reshape(1)]).tolist()
        self.majority = numbers.pop() if names else None
        out = dict(zip(names, numbers, strict=True))
        n = len(self.tasks.tasks)
        for split in ("val", "test"):
            accs = [
                out[f"acc/{split}/task_{i}"] for i in range(n) if f"acc/{split}/task_{i}" in out
            ]
            if accs:
                out[f"acc/{split}/average"] = sum(accs) / len(accs)
        return out

    # -- path measures ---------------------------------------------------------------------------
    def path_measures(
        self,
        metric: Any,
        anchor_ref: Tensor | None,
        stored: I.Inputs | None,
        prev: Params,
        params: Params,
        lengths: list[float],
    ) -> dict[str, float]:
        """Drift and the lengths travelled since ``prev``, on the first ``run.measure_inputs``
        stored inputs.

        ``lengths`` ([metric, Euclidean]) is updated in place. One metric-vector product and one
        forward on those inputs per call; nothing without a metric or stored inputs.
        """
        n = self.settings.measure_inputs
        if anchor_ref is None or stored is None or n == 0:
            return {}
        from fipframe.eval.geometry import segment_length

        x = I.narrow(stored, 0, n)
        was = self.adapter.model.training
        self.adapter.train(False)
        forward = lambda p: self.adapter.forward(p, x)  # noqa: E731
        step_len = segment_length(metric, forward, prev, params)
        with torch.no_grad():
            drift = metric.divergence(forward(params), anchor_ref[: I.length(x)]).mean()
        self.adapter.train(was)
        euclid = norm(sub_tree(params, prev))
        seg, d, e = torch.stack([step_len, drift, euclid]).tolist()
        lengths[0] += seg
        lengths[1] += e
        return {"path/length": lengths[0], "path/euclidean": lengths[1], "path/drift": d}

    # -- BatchNorm ------------------------------------------------------------------------------
    def mark_stale(self) -> None:
        """The weights jumped: the next stage start recomputes the statistics."""
        self.bn_stale = bool(self.batchnorm)

    def recompute_batchnorm(self, params: Params, task: int | None, batch_size: int) -> None:
        """Recompute BatchNorm running statistics of ``params`` from ``run.bn_batches`` training
        batches of ``task`` (task 0 if None), as a cumulative mean, as after a hard prune or a
        rewind."""
        self.bn_stale = False
        n = self.settings.bn_batches
        if not self.batchnorm or not n:
            return
        split = self.tasks.tasks[task if task is not None else 0].train
        g = torch.Generator().manual_seed(self.settings.seed)
        idx = torch.randperm(len(split), generator=g)[: n * batch_size]
        momenta = [m.momentum for m in self.batchnorm]
        for m in self.batchnorm:
            m.reset_running_stats()
            m.momentum = None
        was = self.adapter.model.training
        self.adapter.train(True)
        try:
            with torch.no_grad():
                for chunk in idx.split(batch_size):
                    self.adapter.forward(params, split.gather(chunk))
        finally:
            self.adapter.train(was)
            for m, momentum in zip(self.batchnorm, momenta, strict=True):
                m.momentum = momentum

    def buffers(self) -> dict[str, Tensor]:
        """Copies of the module's buffers (BatchNorm statistics): saved with stage starts,
        checkpoints and end points, kept with the last good state for rollback."""
        return {n: b.detach().clone() for n, b in self.adapter.model.named_buffers()}

    def load_buffers(self, buffers: dict[str, Tensor]) -> None:
        """Put saved buffers back into the module (resume, rollback, replaying the memory)."""
        if not buffers:
            return
        own = dict(self.adapter.model.named_buffers())
        with torch.no_grad():
            for n, b in buffers.items():
                own[n].copy_(b)


def _rows(split: Any, lo: int, hi: int) -> Any:
    """Rows ``lo:hi`` of a resident split (its inputs and labels)."""
    from types import SimpleNamespace

    return SimpleNamespace(x=I.narrow(split.x, lo, hi), y=split.y[lo:hi], streamed=False)
