"""Named traversable tensors and the few tree operations the engine needs.

A point in weight space is a ``dict[str, Tensor]`` (``Params``), the same structure
``torch.func.functional_call`` takes. Operations use ``torch._foreach_*`` so that a step costs
a handful of fused kernels, not a Python loop over parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

Params = dict[str, Tensor]


def values(p: Mapping[str, Tensor]) -> list[Tensor]:
    return list(p.values())


def like(template: Mapping[str, Tensor], tensors: list[Tensor]) -> Params:
    """Rebuild a Params with ``template``'s names from a list in the same order."""
    return dict(zip(template.keys(), tensors, strict=True))


def clone(p: Mapping[str, Tensor]) -> Params:
    return {k: v.detach().clone() for k, v in p.items()}


def zeros_like(p: Mapping[str, Tensor]) -> Params:
    return {k: torch.zeros_like(v) for k, v in p.items()}


def add(a: Mapping[str, Tensor], b: Mapping[str, Tensor], alpha: float = 1.0) -> Params:
    """a + alpha * b."""
    return like(a, torch._foreach_add(values(a), values(b), alpha=alpha))


def sub_tree(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Params:
    """a - b."""
    return like(a, torch._foreach_sub(values(a), values(b)))


def scale(a: Mapping[str, Tensor], s: float | Tensor) -> Params:
    return like(a, torch._foreach_mul(values(a), s))


def dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
    """Euclidean inner product of two trees, as a 0-d tensor (no host sync)."""
    return torch.stack([(x * y).sum() for x, y in zip(a.values(), b.values(), strict=True)]).sum()


def sq_norm(a: Mapping[str, Tensor]) -> Tensor:
    norms = torch._foreach_norm(values(a))
    return torch.stack(norms).square().sum()


def norm(a: Mapping[str, Tensor]) -> Tensor:
    return sq_norm(a).sqrt()


def all_finite(a: Mapping[str, Tensor]) -> Tensor:
    """0-d bool tensor: every entry of every tensor is finite."""
    return torch.stack([torch.isfinite(v).all() for v in a.values()]).all()


@dataclass(frozen=True)
class ParamSpace:
    """Names, shapes and sizes of the traversable tensors; flat views for linear algebra."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @classmethod
    def of(cls, p: Mapping[str, Tensor]) -> ParamSpace:
        return cls(tuple(p.keys()), tuple(v.shape for v in p.values()))

    @property
    def numels(self) -> tuple[int, ...]:
        return tuple(int(torch.Size(s).numel()) for s in self.shapes)

    @property
    def size(self) -> int:
        return sum(self.numels)

    def flatten(self, p: Mapping[str, Tensor]) -> Tensor:
        return torch.cat([p[n].reshape(-1) for n in self.names])

    def unflatten(self, flat: Tensor) -> Params:
        chunks = torch.split(flat, list(self.numels))
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes, strict=True)}
