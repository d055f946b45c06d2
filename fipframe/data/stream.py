"""Streamed splits: examples read through a ``torch.utils.data.DataLoader`` as the path needs them.

For data that does not fit on the device. A :class:`StreamedSplit` keeps only its labels
resident and offers what a resident :class:`~fipframe.data.task.Split` does (``gather``,
``inputs``, ``subset``, ``concat``, and :meth:`StreamedSplit.batches` for training). Training
batches follow the same deterministic sampler as resident data (batch ``t`` of a stage is a
function of seed, branch, stage and ``t``), fetched by DataLoader workers, pinned, and copied
to the device one batch ahead. So a streamed run draws exactly the batches a resident one
does, and a resumed run exactly those of an uninterrupted one. Random transforms of a Dataset
are reproducible too: before item ``i`` of step ``t`` is read, torch's CPU generator (the
one torchvision's random transforms draw from) is seeded from ``(seed, name, t, i)``,
whichever worker reads it. A Dataset whose items draw nothing says so with a class attribute
``deterministic = True`` and skips the seeding. Arrays already in host memory
(``run.stream``) are gathered a whole batch at a time in the main process, without workers.
"""

from __future__ import annotations

import numbers
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from fipframe.data import inputs as I
from fipframe.errors import ConfigError, TraversalError

#: ``transform(inputs, generator) -> inputs``: a per-batch transform on the device
BatchTransform = Callable[[I.Inputs, torch.Generator], I.Inputs]


class TensorsDataset(Dataset):
    """Rows of resident tensors (a tensor or named tensors) with their labels, as a Dataset."""

    deterministic = True  # no random transform: items need no seeding
    in_memory = True  # batches are one gather in host memory: no worker processes needed

    def __init__(self, x: I.Inputs, y: Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, i: int) -> tuple[Any, Tensor]:
        if I.is_mapping(self.x):
            return {k: v[i] for k, v in self.x.items()}, self.y[i]  # type: ignore[union-attr]
        return self.x[i], self.y[i]  # type: ignore[index]

    def batch(self, index: list[int]) -> tuple[I.Inputs, Tensor]:
        """A whole batch in one gather (instead of one call per item)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return I.take(self.x, idx), self.y[idx]


class _Collated:
    """A batch a dataset gathered whole; the collate function passes it through."""

    def __init__(self, batch: tuple[I.Inputs, Tensor]):
        self.batch = batch


class _Keyed(Dataset):
    """Reads ``dataset[i]`` for a key ``(seed, t, i)``, seeding torch first when it may draw."""

    def __init__(self, dataset: Dataset, name: str):
        self.dataset = dataset
        self.name = name
        self.seeded = not getattr(dataset, "deterministic", False)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitems__(self, keys: list[tuple[int, int, int]]) -> list[Any]:
        """A batch of keys: gathered whole when the dataset can, else item by item."""
        if not self.seeded and hasattr(self.dataset, "batch"):
            return [_Collated(self.dataset.batch([i for _, _, i in keys]))]  # type: ignore[attr-defined]
        return [self[k] for k in keys]

    def __getitem__(self, key: tuple[int, int, int]) -> Any:
        seed, t, i = key
        if not self.seeded:
            return self.dataset[i]
        # torch's CPU generator, seeded for this item and restored after (torch.manual_seed
        # would also seed every accelerator backend: about 100x dearer per item)
        g = torch.default_generator
        state = g.get_state()
        g.manual_seed(zlib.crc32(f"{seed}/{self.name}/{t}/{i}".encode()))
        try:
            return self.dataset[i]
        finally:
            g.set_state(state)


def _collate(items: Sequence[Any]) -> tuple[I.Inputs, Tensor]:
    if len(items) == 1 and isinstance(items[0], _Collated):
        return items[0].batch
    xs, ys = zip(*items, strict=True)
    if I.is_mapping(xs[0]):
        x: I.Inputs = {k: torch.stack([torch.as_tensor(e[k]) for e in xs]) for k in xs[0]}
    else:
        x = torch.stack([torch.as_tensor(e) for e in xs])
    return x, torch.as_tensor([int(y) for y in ys], dtype=torch.long)


def check_item(item: Any, where: str) -> None:
    """A Dataset's item must be ``(input, label)``: a tensor or named tensors, and an integer."""
    ok = isinstance(item, (tuple, list)) and len(item) == 2
    if ok:
        x, y = item
        x_ok = isinstance(x, Tensor) or (
            I.is_mapping(x) and x and all(isinstance(v, Tensor) for v in x.values())
        )
        y_ok = (isinstance(y, numbers.Integral) and not isinstance(y, bool)) or (
            isinstance(y, Tensor) and y.dim() == 0 and not y.is_floating_point()
        )
        ok = bool(x_ok and y_ok)
    if not ok:
        shown = (
            "(" + ", ".join(type(v).__name__ for v in item) + ")"
            if isinstance(item, (tuple, list))
            else type(item).__name__
        )
        raise ConfigError(
            f"{where}: a Dataset's item must be (input, label) with input a tensor or a dict of "
            f"tensors and label an int; item 0 is {shown} (for images, end the transform with "
            "torchvision's ToTensor())"
        )


class StreamedSplit:
    """A split whose inputs are read from a Dataset; labels ``y`` stay resident.

    Args:
        dataset: items ``(input, label)``; ``input`` a tensor or a dict of tensors.
        y: every item's label (read once through the loader if None).
        loader: the run's ``LoaderConfig`` (workers, prefetch, pin_memory).
        transform: an optional per-batch transform on the device (see :data:`BatchTransform`).
        where: the split's name in error messages.
    """

    streamed = True

    def __init__(
        self,
        dataset: Dataset,
        y: Tensor | None,
        loader: Any,
        *,
        transform: BatchTransform | None = None,
        where: str = "data",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        example: Any = None,
    ):
        self.dataset = dataset
        self.loader = loader
        self.transform = transform
        self.where = where
        self.device = device or torch.device("cpu")
        self.dtype = dtype
        n = len(dataset)  # type: ignore[arg-type]
        if example is None and n:
            example = dataset[0]
            check_item(example, where)
        self._example = example
        self._eval: tuple[int, DataLoader] | None = None
        self.y = self._labels() if y is None else y
        if len(self.y) != n:
            raise ConfigError(f"{where}: {len(self.y)} labels for {n} items")

    # -- what a resident split offers ------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def x(self) -> Any:
        raise TraversalError(
            f"{self.where} is streamed: its inputs are not resident; use split.gather(index), "
            "split.inputs(batch_size) or StageContext.batches(...)"
        )

    @property
    def input_shape(self) -> tuple[int, ...] | dict[str, tuple[int, ...]]:
        x = self._example[0]
        if I.is_mapping(x):
            return {k: tuple(torch.as_tensor(v).shape) for k, v in x.items()}
        return tuple(torch.as_tensor(x).shape)

    def to(self, device: torch.device, dtype: torch.dtype) -> StreamedSplit:
        return self._like(self.dataset, self.y.to(device), device=device, dtype=dtype)

    def subset(self, index: Tensor) -> StreamedSplit:
        if isinstance(self.dataset, TensorsDataset):  # stays one gather per batch
            rows = index.cpu()
            sub = TensorsDataset(I.take(self.dataset.x, rows), self.dataset.y[rows])
            return self._like(sub, self.y[index])
        return self._like(Subset(self.dataset, index.cpu().tolist()), self.y[index])

    def gather(self, index: Tensor) -> I.Inputs:
        """The inputs of rows ``index``, read now and moved to the device."""
        keyed = _Keyed(self.dataset, "gather")
        x, _ = _collate(keyed.__getitems__([(0, -1, int(i)) for i in index.cpu().tolist()]))
        return I.to(x, self.device, self.dtype)

    def head(self, n: int) -> I.Inputs:
        """The inputs of the first ``n`` rows, read now."""
        return self.gather(torch.arange(n))

    def inputs(self, batch_size: int) -> Iterator[I.Inputs]:
        """Every input in order, in batches, through the loader (evaluation).

        The loader is kept with persistent workers: every chunk's evaluation reads the split
        again, and starting workers for each would cost more than the reading.
        """
        if self._eval is None or self._eval[0] != batch_size:
            n = len(self)
            keys = [
                [(0, -1, i) for i in range(s, min(s + batch_size, n))]
                for s in range(0, n, batch_size)
            ]
            self._eval = (batch_size, self._loader(keys, "eval", persistent=True))
        for x, _ in self._moved(self._eval[1]):
            yield x

    def batches(self, sampler: Any) -> BatchStream:
        """Training batches that follow ``sampler`` (its ``indices(t)`` for t = 0, 1, ...)."""
        return BatchStream(self, sampler)

    @staticmethod
    def concat(splits: Sequence[StreamedSplit]) -> StreamedSplit:
        first, y = splits[0], torch.cat([s.y for s in splits])
        if all(isinstance(s.dataset, TensorsDataset) for s in splits):  # one gather per batch
            x = I.cat([s.dataset.x for s in splits])  # type: ignore[attr-defined]
            ys = torch.cat([s.dataset.y for s in splits])  # type: ignore[attr-defined]
            return first._like(TensorsDataset(x, ys), y)
        return first._like(ConcatDataset([s.dataset for s in splits]), y)

    # -- loading -------------------------------------------------------------------------------
    def _like(self, dataset: Dataset, y: Tensor, **kw: Any) -> StreamedSplit:
        args = {"device": self.device, "dtype": self.dtype, **kw}
        return StreamedSplit(
            dataset,
            y,
            self.loader,
            transform=self.transform,
            where=self.where,
            example=self._example,
            **args,
        )

    def _iterate(
        self, steps: Any, *, seed: int, start: int, name: str
    ) -> Iterator[tuple[I.Inputs, Tensor]]:
        """Batches of the index tensors in ``steps`` (step numbers from ``start``), on the
        device, one batch ahead."""
        keys = ([(seed, start + k, int(i)) for i in idx.tolist()] for k, idx in enumerate(steps))
        return self._moved(self._loader(keys, name))

    def _loader(self, keys: Any, name: str, persistent: bool = False) -> DataLoader:
        cfg = self.loader
        pin = cfg.pin_memory if cfg.pin_memory is not None else self.device.type == "cuda"
        # arrays already in host memory are gathered whole in this process: a worker would
        # only add the cost of shipping each batch back (measured in bench/data_cost.py)
        workers = 0 if getattr(self.dataset, "in_memory", False) else cfg.workers
        return DataLoader(
            _Keyed(self.dataset, name),
            batch_sampler=keys,
            num_workers=workers,
            prefetch_factor=cfg.prefetch if workers else None,
            persistent_workers=persistent and workers > 0,
            pin_memory=pin,
            collate_fn=_collate,
            # the loader draws its workers' base seed from this, not from torch's global
            # generator, which dropout and the user's model draw from: streaming leaves the
            # run's random numbers as they are (items are seeded by _Keyed anyway)
            generator=torch.Generator().manual_seed(0),
        )

    def _moved(self, loader: DataLoader) -> Iterator[tuple[I.Inputs, Tensor]]:
        """The loader's batches on the device, each copy started one batch ahead."""
        ahead = None
        for x, y in loader:
            batch = (
                I.to_device_async(x, self.device, self.dtype),
                y.to(self.device, non_blocking=True),
            )
            if ahead is not None:
                yield ahead
            ahead = batch
        if ahead is not None:
            yield ahead

    def _labels(self) -> Tensor:
        """Every item's label: the dataset's ``targets`` if it has them and they agree with
        what its first items return (a ``target_transform`` would make them differ), else one
        pass through the loader's workers."""
        n = len(self.dataset)  # type: ignore[arg-type]
        targets = getattr(self.dataset, "targets", None)
        if targets is not None and len(targets) == n:
            y = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
            probe = range(min(8, n))
            got = [int(self.dataset[i][1]) for i in probe]
            if got != y[: len(got)].tolist():
                raise ConfigError(
                    f"{self.where}: the Dataset's targets {y[: len(got)].tolist()} disagree with "
                    f"the labels its first items return {got} (a target_transform?); give "
                    "labels through the items only, or targets that match them"
                )
            return y
        order = torch.arange(n)
        keys = [[(0, -1, int(i)) for i in order[s : s + 256].tolist()] for s in range(0, n, 256)]
        return torch.cat([y for _, y in self._loader(keys, "labels")]).long()


class _Steps:
    """The sampler's batches from step ``start`` on, as index tensors (for the loader)."""

    def __init__(self, sampler: Any, start: int):
        self.sampler, self.start = sampler, start

    def __iter__(self) -> Iterator[Tensor]:
        t = self.start
        while True:
            yield self.sampler.indices(t).cpu()
            t += 1


class BatchStream:
    """Training batches of a streamed split: ``get(t)`` is the batch the sampler names at ``t``.

    Steps are asked for in order; any other step (a resume, a rollback) restarts the loader
    there. The loader's workers stop when the stream is closed or collected.
    """

    def __init__(self, split: StreamedSplit, sampler: Any):
        from fipframe.data.sampling import Sampler

        self.split = split
        self.sampler = sampler
        # the loader walks a host copy of the sampler (same indices, no device sync per step)
        self._host = Sampler(
            sampler.n,
            sampler.batch_size,
            seed=sampler.seed,
            name=sampler.name,
            device="cpu",
            shard=getattr(sampler, "shard", (0, 1)),
        )
        self._it: Iterator[tuple[I.Inputs, Tensor]] | None = None
        self._last: tuple[int, tuple[I.Inputs, Tensor, Tensor]] | None = None
        self._gen: torch.Generator | None = None

    def get(self, step: int) -> tuple[I.Inputs, Tensor, Tensor]:
        """Inputs and labels of step ``step`` on the device, and their rows in the split."""
        if self._last is not None and self._last[0] == step:  # a second objective, same rows
            return self._last[1]
        if self._it is None or self._last is None or step != self._last[0] + 1:
            self.close()
            self._it = self.split._iterate(
                _Steps(self._host, step), seed=self._host.seed, start=step, name=self._host.name
            )
        x, y = next(self._it)
        if self.split.transform is not None:
            from fipframe.data.task import step_generator

            x = self.split.transform(x, step_generator(self, self._host, step, y))
        out = (x, y, self.sampler.indices(step))
        self._last = (step, out)
        return out

    def close(self) -> None:
        it, self._it = self._it, None
        if it is not None:
            it.close()  # type: ignore[attr-defined]
        self._last = None


def stream_tasks(tasks: Any, loader: Any) -> Any:
    """The same tasks with every resident split read through a DataLoader (``run.stream``)."""
    from fipframe.data.task import Task, TaskSequence

    def stream(split: Any, where: str) -> Any:
        if split.streamed:
            return split
        x = I.to(split.x, torch.device("cpu"))
        y = split.y.cpu()
        return StreamedSplit(TensorsDataset(x, y), y, loader, where=where)

    out = [
        Task(
            t.name,
            t.classes,
            *(stream(getattr(t, s), f"data.tasks[{i}].{s}") for s in ("train", "val", "test")),
        )
        for i, t in enumerate(tasks.tasks)
    ]
    return TaskSequence(
        tasks.name, out, tasks.input_shape, tasks.num_classes, dict(tasks.meta), tasks.scenario
    )
