"""Deterministic mini-batches: batch ``t`` depends on (seed, name, t) only.

Resuming at step ``t`` therefore draws exactly the batches an uninterrupted run would, with no
sampler state to save. Each epoch's permutation is drawn once on the host and moved to the
device; per step only an index slice and a gather run on the device.

Under data parallelism (:mod:`fipframe.traversal.ranks`) every process draws the same global
batch and ``shard=(rank, world)`` keeps its equal share of the rows, so the processes together
see exactly the batch one process would.
"""

from __future__ import annotations

import zlib

import torch
from torch import Tensor


class Sampler:
    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        seed: int,
        name: str,
        device: torch.device | str,
        shard: tuple[int, int] = (0, 1),
    ):
        if n <= 0:
            raise ValueError(f"sampler {name!r} has nothing to sample from")
        self.n = n
        #: rows of the global batch (every process's together)
        self.batch_size = min(batch_size, n)
        rank, world = shard
        if self.batch_size % world:
            hint = "" if batch_size <= n else f" (only {n} rows to draw from)"
            raise ValueError(
                f"sampler {name!r}: a batch of {self.batch_size} rows{hint} cannot be shared "
                f"equally by {world} processes; make it a multiple of {world}"
            )
        self.shard = shard
        #: this process's rows of each batch
        self.rows = self.batch_size // world
        self.per_epoch = n // self.batch_size
        self.seed = seed
        self.name = name
        self.device = device
        self._epoch = -1
        self._perm: Tensor | None = None

    def _permutation(self, epoch: int) -> Tensor:
        if epoch != self._epoch:
            key = zlib.crc32(f"{self.seed}/{self.name}/{epoch}".encode())
            g = torch.Generator().manual_seed(key)
            self._perm = torch.randperm(self.n, generator=g).to(self.device)
            self._epoch = epoch
        assert self._perm is not None
        return self._perm

    def indices(self, step: int) -> Tensor:
        epoch, pos = divmod(step, self.per_epoch)
        start = pos * self.batch_size + self.shard[0] * self.rows
        return self._permutation(epoch)[start : start + self.rows]
