"""Data-parallel traversal over ``torch.distributed``: one path walked by several processes.

Launched by ``torchrun --nproc-per-node N -m fipframe run ...`` (or ``fipframe run --nproc
N``), every process builds the same run from the same seed. Each draws the same global batch
and keeps its share of the rows (:class:`~fipframe.data.sampling.Sampler` ``shard``); the
gradient of every step and every metric-vector product are averaged over the processes, so
CG and Lanczos see the operator of the global batch and every process takes the same step.
The path is the one a single process walks with the same global batch, to float tolerance.

Rank 0 writes the run directory; the others read it (a resume) and write nothing. What
decides the path's course at a chunk end (the chunk's statistics, the evaluation, the
BatchNorm statistics) is averaged or taken from rank 0, so no two processes ever disagree
about a rollback. A process that loses its peers (one died, was killed, or timed out) stops
with :class:`~fipframe.errors.TraversalError`; the checkpoint holds the last committed chunk.

A single process is ``Ranks()``: world 1, every operation the identity.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
from torch import Tensor

from fipframe.errors import ConfigError, FipframeError, TraversalError

T = TypeVar("T")

#: seconds a process waits for its peers at a collective before it gives up
TIMEOUT_ENV = "FIPFRAME_DIST_TIMEOUT"


class Ranks:
    """This process's place among the processes walking one path."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0):
        self.rank, self.world, self.local_rank = rank, world, local_rank

    @classmethod
    def from_env(cls, device: torch.device) -> Ranks:
        """The process group torchrun describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``),
        joined on first use: gloo on CPU, NCCL on CUDA. One process without those variables."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        local = int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            seconds = float(os.environ.get(TIMEOUT_ENV, "1800"))
            backend = "nccl" if device.type == "cuda" else "gloo"
            kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(seconds=seconds)}
            if device.type == "cuda":
                kwargs["device_id"] = torch.device("cuda", local)
            dist.init_process_group(**kwargs)
            atexit.register(_leave)  # the group this module made goes before the interpreter
        if dist.get_world_size() != world:
            raise TraversalError(
                f"WORLD_SIZE is {world} but the process group has {dist.get_world_size()} "
                "processes; launch with torchrun and let it set the variables"
            )
        return cls(dist.get_rank(), world, local)

    @property
    def parallel(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Whether this process writes the run directory and prints progress."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """This process's device: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun."""
        if not self.parallel or device.type != "cuda":
            return device
        if device.index is not None:
            raise ConfigError(
                f"run.device: {device} names one GPU, but {self.world} processes need one each; "
                "use cuda or auto (each process takes cuda:LOCAL_RANK)"
            )
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def check_shares(self, config: Any) -> None:
        """Refuse, before anything runs, batch sizes the processes cannot share equally (the
        task batch and the divergence's stored inputs; other batches, such as a replay batch
        or a task smaller than its batch, are checked when their stage starts)."""
        if not self.parallel:
            return
        problems = []
        for where, stages in config.all_stages():
            for i, s in enumerate(stages):
                if not s.steps:
                    continue  # a stage that takes no step draws no batch
                # the task batch of a stage with a task; stored inputs for the divergence
                fields = ("batch_size",) if s.task is not None else ()
                if config.memory.size and s.metric is not None:
                    fields += ("memory_batch",)
                for field in fields:
                    value = getattr(s, field, None)
                    if value is not None and value % self.world:
                        problems.append(
                            f"{where}[{i}].{field}: {value} rows cannot be shared equally by "
                            f"{self.world} processes; make it a multiple of {self.world}"
                        )
        if problems:
            raise ConfigError(problems)

    # -- collectives -----------------------------------------------------------------------------
    @contextmanager
    def _talking(self, what: str) -> Iterator[None]:
        try:
            yield
        except FipframeError:
            raise
        except (RuntimeError, ConnectionError, OSError) as exc:  # gloo/NCCL: a peer is gone
            _leave()  # a group left alive aborts the process at exit
            raise TraversalError(
                f"rank {self.rank} of {self.world}: lost the other processes while {what} "
                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): one of them "
                "stopped (its error is printed above) or stopped answering. The run directory "
                "holds the last committed chunk: continue with `fipframe run --resume DIR "
                "--nproc N` (or torchrun ... -m fipframe run --resume DIR)"
            ) from None

    def mean(self, tensors: list[Tensor]) -> list[Tensor]:
        """Each tensor averaged over the processes (one collective for the whole list)."""
        if not self.parallel or not tensors:
            return tensors
        import torch.distributed as dist

        flat = torch.cat([t.reshape(-1) for t in tensors])
        with self._talking("averaging a step"):
            dist.all_reduce(flat)
        flat = flat / self.world
        parts = flat.split([t.numel() for t in tensors])
        return [p.reshape(t.shape).to(t.dtype) for p, t in zip(parts, tensors, strict=True)]

    def total(self, tensor: Tensor) -> Tensor:
        """``tensor`` summed over the processes."""
        if not self.parallel:
            return tensor
        import torch.distributed as dist

        out = tensor.clone()
        with self._talking("summing counts"):
            dist.all_reduce(out)
        return out

    def share(self, tensors: list[Tensor]) -> None:
        """Overwrite each tensor (in place) with rank 0's."""
        if not self.parallel:
            return
        import torch.distributed as dist

        with self._talking("sharing rank 0's tensors"):
            for t in tensors:
                dist.broadcast(t, 0)

    def same(self, value: T) -> T:
        """Rank 0's ``value`` (any picklable object) on every process."""
        if not self.parallel:
            return value
        import torch.distributed as dist

        box = [value]
        with self._talking("hearing from rank 0"):
            dist.broadcast_object_list(box, 0)
        return box[0]  # type: ignore[return-value]

    def on_main(self, fn: Callable[[], T]) -> T | None:
        """Run ``fn`` on rank 0 alone; its error, if it raises, on every process.

        The others wait for it (a resume's checks, creating the run directory) and raise the
        same error if it failed, so no process is left waiting for a peer that stopped."""
        if not self.parallel:
            return fn()
        out: T | None = None
        failure: BaseException | None = None
        if self.main:
            try:
                out = fn()
            except Exception as exc:  # noqa: BLE001 - handed to every process below
                failure = exc
        verdict = self.same(None if failure is None else _portable(failure))
        if failure is not None:
            raise failure
        if verdict is not None:
            verdict.echo = True  # type: ignore[attr-defined]  # rank 0 reports it; the CLI is quiet
            raise verdict
        return out

    def agree(self, what: str, value: Any) -> None:
        """Check that every process has the same ``value`` (a config digest, a world size)."""
        if not self.parallel:
            return
        import torch.distributed as dist

        values: list[Any] = [None] * self.world
        with self._talking(f"comparing {what}"):
            dist.all_gather_object(values, value)
        if any(v != values[0] for v in values):
            raise TraversalError(
                f"the processes disagree about {what}: "
                + ", ".join(f"rank {i}: {v}" for i, v in enumerate(values))
                + "; every process must be launched with the same command"
            )


def _leave() -> None:
    """Destroy the process group, if there is one (idempotent)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):  # leaving anyway; a broken group may refuse
            dist.destroy_process_group()


def _portable(exc: BaseException) -> BaseException:
    """An exception that survives pickling with its message (the library's own ones do)."""
    try:
        import pickle

        return pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any unpicklable error is sent as its text
        return TraversalError(f"rank 0 failed: {type(exc).__name__}: {exc}")


def averaged_metric(metric: Any, ranks: Ranks) -> Any:
    """``metric`` whose products (``mvp``, ``operator``, ``diag``) are averaged over the
    processes: each process's stored inputs are its share, the average is the product over all
    of them. Everything else is the metric's own."""
    if not ranks.parallel or metric is None:
        return metric
    return _AveragedMetric(metric, ranks)


class _AveragedMetric:
    def __init__(self, inner: Any, ranks: Ranks):
        self._inner, self._ranks = inner, ranks

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def mvp(self, forward: Any, params: Any, v: Any) -> Any:
        out = self._inner.mvp(forward, params, v)
        return dict(zip(out, self._ranks.mean(list(out.values())), strict=True))

    def operator(self, forward: Any, params: Any) -> Callable[[Tensor], Tensor]:
        g = self._inner.operator(forward, params)
        return lambda v: self._ranks.mean([g(v)])[0]

    def diag(self, forward: Any, params: Any, **kwargs: Any) -> Tensor:
        return self._ranks.mean([self._inner.diag(forward, params, **kwargs)])[0]
