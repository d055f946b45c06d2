"""Inputs of a network: one tensor, or a mapping of named tensors (``input_ids``, ...).

Every place that moves examples (sampling, memory, the fused forward, anchor outputs, metric
products, evaluation) goes through these functions, so a model that takes
``model(input_ids=..., attention_mask=...)`` runs wherever one that takes ``model(x)`` does.
Each tensor of a mapping has the examples on its first dimension; they are indexed,
concatenated and split key by key. A plain tensor is handled exactly as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
from torch import Tensor

Inputs = Union[Tensor, Mapping[str, Tensor]]  # noqa: UP007


def is_mapping(x: Any) -> bool:
    return isinstance(x, Mapping)


def length(x: Inputs) -> int:
    """Number of examples."""
    if is_mapping(x):
        return int(next(iter(x.values())).shape[0])  # type: ignore[union-attr]
    return int(x.shape[0])  # type: ignore[union-attr]


def take(x: Inputs, index: Tensor) -> Inputs:
    """Rows ``index`` of every tensor."""
    if is_mapping(x):
        return {k: v[index] for k, v in x.items()}  # type: ignore[union-attr]
    return x[index]  # type: ignore[index]


def narrow(x: Inputs, start: int, stop: int) -> Inputs:
    """Rows ``start:stop`` of every tensor (views)."""
    if is_mapping(x):
        return {k: v[start:stop] for k, v in x.items()}  # type: ignore[union-attr]
    return x[start:stop]  # type: ignore[index]


def cat(parts: Sequence[Inputs]) -> Inputs:
    """Concatenate along the examples, key by key for mappings."""
    if is_mapping(parts[0]):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}  # type: ignore[index]
    return torch.cat(list(parts))  # type: ignore[arg-type]


def to(x: Inputs, device: torch.device, dtype: torch.dtype | None = None) -> Inputs:
    """Move to ``device``; floating tensors also to ``dtype`` (token ids stay integers)."""

    def move(t: Tensor) -> Tensor:
        if dtype is not None and t.is_floating_point():
            return t.to(device=device, dtype=dtype)
        return t.to(device)

    if is_mapping(x):
        return {k: move(v) for k, v in x.items()}  # type: ignore[union-attr]
    return move(x)  # type: ignore[arg-type]


def to_device_async(x: Inputs, device: torch.device, dtype: torch.dtype | None) -> Inputs:
    """Like :func:`to`, without waiting for the copy (pinned host memory to a GPU)."""

    def move(t: Tensor) -> Tensor:
        t = t.to(device, non_blocking=True)
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    if is_mapping(x):
        return {k: move(v) for k, v in x.items()}  # type: ignore[union-attr]
    return move(x)  # type: ignore[arg-type]


def shapes(x: Inputs) -> tuple[int, ...] | dict[str, tuple[int, ...]]:
    """Per-example shape: a tuple, or one per key."""
    if is_mapping(x):
        return {k: tuple(v.shape[1:]) for k, v in x.items()}  # type: ignore[union-attr]
    return tuple(x.shape[1:])  # type: ignore[union-attr]


def signature(x: Inputs) -> tuple[Any, ...]:
    """What must agree between inputs that are concatenated: keys, per-example shapes, kinds."""
    if is_mapping(x):
        return tuple(
            (k, tuple(v.shape[1:]), v.is_floating_point())
            for k, v in sorted(x.items())  # type: ignore[union-attr]
        )
    return (tuple(x.shape[1:]), x.is_floating_point())  # type: ignore[union-attr]


def describe(x: Inputs) -> str:
    """``[N, 1, 28, 28] float32`` or ``{input_ids: [N, 16] int64, attention_mask: ...}``."""

    def one(t: Tensor) -> str:
        return f"[{', '.join(str(d) for d in t.shape)}] {str(t.dtype).replace('torch.', '')}"

    if is_mapping(x):
        return "{" + ", ".join(f"{k}: {one(v)}" for k, v in x.items()) + "}"  # type: ignore[union-attr]
    return one(x)  # type: ignore[arg-type]


def check(x: Any, where: str) -> Inputs:
    """``x`` if it is a tensor or a non-empty mapping of tensors with one example count."""
    from fipframe.errors import ConfigError

    if isinstance(x, Tensor):
        if x.dim() == 0:
            raise ConfigError(
                f"{where}: inputs must have the examples on dimension 0, got a scalar"
            )
        return x
    if is_mapping(x):
        if not x:
            raise ConfigError(f"{where}: an input mapping needs at least one tensor")
        bad = [k for k, v in x.items() if not isinstance(v, Tensor) or v.dim() == 0]
        if bad or not all(isinstance(k, str) for k in x):
            raise ConfigError(
                f"{where}: every value of an input mapping must be a tensor with the examples "
                f"on dimension 0 under a string key; {bad or list(x)} are not"
            )
        counts = {k: int(v.shape[0]) for k, v in x.items()}
        if len(set(counts.values())) > 1:
            raise ConfigError(f"{where}: the tensors hold different numbers of examples {counts}")
        return dict(x)
    raise ConfigError(
        f"{where}: inputs must be a tensor or a mapping of named tensors, not {type(x).__name__}"
    )
