"""Magnitude sparsity: which weights count, the target P_s(w), masks, groups and removal.

One :class:`SparsityConfig` describes a pruning target: the final sparsity, how it grows along a
stage (constant, linear or cubic), global or per-tensor thresholds, unstructured weights or
structured groups of units, and which tensors count. The same description drives FIP's soft
target (the ``prune_target`` objective, distance to the magnitude-pruned copy of the current
weights) and the engine's hard pruning (a stage's ``prune:``, used by the baselines and by the
final projection).

Masks are boolean tensors named like the weights they cover. Thresholds are found with
``torch.kthvalue`` on the weights' device: nothing leaves the device and no host sync happens.

Structured groups (:class:`PruneGroup`) come from the adapter: a unit is a conv channel with
its BatchNorm entries and the next layer's inputs, a linear neuron with its bias and the next
layer's column, or an attention head. :func:`shrink` removes pruned units from the module so
the exported network is smaller, not only zero-filled.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from fipframe.core.configs import ConfigModel
from fipframe.core.params import Params
from fipframe.errors import TraversalError

MASK_PREFIX = "mask:"  # masks live in the path's carry under this prefix


class SparsityConfig(ConfigModel):
    """A magnitude pruning target and how it moves along a stage."""

    sparsity: float = Field(
        ge=0.0, lt=1.0, description="final fraction of the counted weights (or units) at zero"
    )
    schedule: Literal["constant", "linear", "cubic"] = Field(
        "constant",
        description="how the target goes from `initial` to `sparsity` over the first `ramp` of "
        "the stage (cubic: Zhu & Gupta's gradual schedule)",
    )
    initial: float = Field(0.0, ge=0.0, lt=1.0, description="sparsity at the stage start")
    ramp: float = Field(1.0, gt=0.0, le=1.0, description="fraction of the stage spent ramping")
    every: int | None = Field(
        100,
        ge=1,
        description="steps between refreshes of the magnitude mask (None: once; for a stage's "
        "prune: at its end, for prune_target at its start)",
    )
    scope: Literal["global", "layer"] = Field(
        "global", description="one threshold over all counted tensors, or one per tensor"
    )
    structured: bool = Field(
        False, description="prune whole units (the adapter's prune groups) instead of weights"
    )
    include: tuple[str, ...] = Field(("*",), description="globs of tensors that count")
    exclude: tuple[str, ...] = Field((), description="globs of tensors that never count")
    matrices_only: bool = Field(
        True,
        description="count only tensors with 2 or more dimensions (weights; not biases or "
        "BatchNorm/LayerNorm scales)",
    )

    @model_validator(mode="after")
    def _initial_below_final(self) -> SparsityConfig:
        if self.schedule != "constant" and self.initial > self.sparsity:
            raise ValueError(f"initial ({self.initial}) exceeds sparsity ({self.sparsity})")
        return self

    def target(self, progress: float) -> float:
        """The target sparsity at ``progress`` (0 = stage start, 1 = stage end)."""
        if self.schedule == "constant":
            return self.sparsity
        u = min(max(progress / self.ramp, 0.0), 1.0)
        if self.schedule == "linear":
            return self.initial + (self.sparsity - self.initial) * u
        return self.sparsity + (self.initial - self.sparsity) * (1.0 - u) ** 3


# -- structured groups --------------------------------------------------------------------------
@dataclass(frozen=True)
class Member:
    """Where a group's units lie in one tensor.

    The tensor's dimension ``dim`` has ``repeat * units * block`` entries; within each of the
    ``repeat`` segments, unit ``u`` owns the ``block`` consecutive entries from ``u * block``.
    (``block > 1``: a conv channel seen by a linear layer after Flatten; ``repeat = 3``: the
    packed query/key/value projection of an attention head.)
    """

    name: str
    dim: int
    block: int = 1
    repeat: int = 1

    def unit_mask(self, keep: Tensor) -> Tensor:
        """A 1-D mask over ``dim`` from a per-unit keep vector."""
        return keep.repeat_interleave(self.block).repeat(self.repeat)

    def slices(self, t: Tensor, units: int) -> Tensor:
        """``t`` reshaped to ``[units, -1]``: row u holds every entry unit u owns."""
        moved = t.movedim(self.dim, 0)
        rest = moved.shape[1:]
        x = moved.reshape(self.repeat, units, self.block, *rest)
        return x.transpose(0, 1).reshape(units, -1)


@dataclass(frozen=True)
class PruneGroup:
    """Units pruned together: their weights (``members``) and module buffers (``buffers``,
    e.g. BatchNorm running statistics), sliced the same way when units are removed."""

    name: str
    units: int
    members: tuple[Member, ...]
    buffers: tuple[Member, ...] = ()
    #: False when the module cannot be made narrower (the units are then zeroed only)
    removable: bool = True


def _matches(name: str, globs: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, g) for g in globs)


def counted(params: Mapping[str, Tensor], cfg: SparsityConfig) -> list[str]:
    """Names of the tensors that count toward the sparsity target."""
    return [
        n
        for n, v in params.items()
        if _matches(n, cfg.include)
        and not _matches(n, cfg.exclude)
        and (v.dim() >= 2 or not cfg.matrices_only)
    ]


def usable_groups(groups: Sequence[PruneGroup], params: Mapping[str, Tensor]) -> list[PruneGroup]:
    """The groups whose every member is a traversable tensor."""
    return [g for g in groups if all(m.name in params for m in g.members)]


def groups_for(
    cfg: SparsityConfig, groups: Sequence[PruneGroup], params: Mapping[str, Tensor], where: str
) -> list[PruneGroup]:
    """The usable groups when ``cfg`` is structured (else none); an error names ``where``."""
    if not cfg.structured:
        return []
    usable = usable_groups(groups, params)
    if not usable:
        raise TraversalError(
            f"{where}: structured pruning, but the model's adapter declares no prune groups "
            "among the traversable weights"
        )
    return usable


# -- masks ------------------------------------------------------------------------------------
def _keep_top(scores: Tensor, sparsity: float) -> Tensor:
    """Bool mask keeping all but the ``floor(sparsity * n)`` smallest scores (device only)."""
    n = scores.numel()
    k = int(math.floor(sparsity * n + 1e-9))
    if k <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    if k >= n:
        return torch.zeros_like(scores, dtype=torch.bool)
    threshold = torch.kthvalue(scores.reshape(-1), k).values
    return scores > threshold


def weight_masks(
    params: Mapping[str, Tensor], names: Sequence[str], sparsity: float, scope: str = "global"
) -> dict[str, Tensor]:
    """Magnitude masks over ``names``: True where a weight survives."""
    if not names:
        return {}
    if scope == "layer":
        return {n: _keep_top(params[n].detach().abs(), sparsity) for n in names}
    flat = torch.cat([params[n].detach().abs().reshape(-1) for n in names])
    keep = _keep_top(flat, sparsity)
    return {
        n: m.view_as(params[n])
        for n, m in zip(names, torch.split(keep, [params[n].numel() for n in names]), strict=True)
    }


def unit_scores(params: Mapping[str, Tensor], group: PruneGroup) -> Tensor:
    """Root-mean-square of each unit's weights across all its members."""
    sq = sum(
        m.slices(params[m.name].detach().float(), group.units).square().sum(1)
        for m in group.members
    )
    size = sum(params[m.name].numel() // group.units for m in group.members)
    return (sq / size).sqrt()  # type: ignore[operator]


def group_keeps(
    params: Mapping[str, Tensor], groups: Sequence[PruneGroup], sparsity: float, scope: str
) -> list[Tensor]:
    """Per group, a bool vector over its units: True where the unit survives."""
    if not groups:
        return []
    scores = [unit_scores(params, g) for g in groups]
    if scope == "layer":
        return [_keep_top(s, sparsity) for s in scores]
    keep = _keep_top(torch.cat(scores), sparsity)
    return list(torch.split(keep, [g.units for g in groups]))


def expand_keeps(
    params: Mapping[str, Tensor], groups: Sequence[PruneGroup], keeps: Sequence[Tensor]
) -> dict[str, Tensor]:
    """Tensor masks from unit keep vectors (a tensor in several groups gets their product)."""
    masks: dict[str, Tensor] = {}
    for group, keep in zip(groups, keeps, strict=True):
        for m in group.members:
            t = params[m.name]
            shape = [1] * t.dim()
            shape[m.dim] = -1
            mask = m.unit_mask(keep).view(shape).expand_as(t)
            masks[m.name] = masks[m.name] & mask if m.name in masks else mask.clone()
    return masks


def magnitude_masks(
    params: Mapping[str, Tensor],
    cfg: SparsityConfig,
    sparsity: float,
    groups: Sequence[PruneGroup] = (),
) -> dict[str, Tensor]:
    """Masks of the magnitude-pruned copy P_s(w) at ``sparsity``, as ``cfg`` describes it."""
    if cfg.structured:
        usable = usable_groups(groups, params)
        return expand_keeps(params, usable, group_keeps(params, usable, sparsity, cfg.scope))
    return weight_masks(params, counted(params, cfg), sparsity, cfg.scope)


def apply_masks(params: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> Params:
    """The point with every masked tensor multiplied by its mask (others unchanged)."""
    if not masks:
        return dict(params)
    names = [n for n in params if n in masks]
    out = dict(params)
    products = torch._foreach_mul([params[n] for n in names], [masks[n] for n in names])
    out.update(zip(names, products, strict=True))
    return out


def masks_in(carry: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The masks stored in a path's carry, by weight name."""
    return {k[len(MASK_PREFIX) :]: v for k, v in carry.items() if k.startswith(MASK_PREFIX)}


def store_masks(carry: dict[str, Tensor], masks: Mapping[str, Tensor]) -> None:
    for k in [k for k in carry if k.startswith(MASK_PREFIX)]:
        del carry[k]
    carry.update({MASK_PREFIX + n: m for n, m in masks.items()})


def intersect(new: Mapping[str, Tensor], old: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Masks of ``new`` that also keep ``old``'s zeros (pruned weights stay pruned)."""
    out = dict(old)
    for n, m in new.items():
        out[n] = m & old[n] if n in old else m
    return out


# -- counting ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Counts:
    """Zeros among the counted weights and over every traversable tensor."""

    counted: int
    counted_zero: int
    total: int
    total_zero: int

    @property
    def sparsity(self) -> float:
        return self.counted_zero / self.counted if self.counted else 0.0

    @property
    def nonzero(self) -> int:
        return self.total - self.total_zero


def count(params: Mapping[str, Tensor], names: Sequence[str]) -> Counts:
    """Exact zero counts (one host sync)."""
    zeros = torch.stack([(v == 0).sum() for v in params.values()]).tolist()
    sizes = [v.numel() for v in params.values()]
    chosen = set(names)
    c = [(z, s) for n, z, s in zip(params, zeros, sizes, strict=True) if n in chosen]
    return Counts(sum(s for _, s in c), sum(z for z, _ in c), sum(sizes), sum(zeros))


# -- structural removal -----------------------------------------------------------------------
def _module(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path) if path else root


def _sync_shape(mod: nn.Module) -> None:
    """Rewrite a standard layer's size attributes from its (sliced) weight."""
    w = getattr(mod, "weight", None)
    if w is None:
        return
    if isinstance(mod, nn.Linear):
        mod.out_features, mod.in_features = w.shape
    elif isinstance(mod, nn.modules.conv._ConvNd):
        mod.out_channels = w.shape[0]
        mod.in_channels = w.shape[1] * mod.groups
    elif isinstance(mod, nn.modules.batchnorm._NormBase):
        mod.num_features = w.shape[0]


def shrink(
    model: nn.Module, groups: Sequence[PruneGroup], keeps: Sequence[Tensor]
) -> dict[str, tuple[int, int]]:
    """Remove the pruned units of removable groups from ``model`` in place.

    Returns, per group, (units before, units after). Groups marked not removable are skipped
    (their units stay, zeroed by the masks).
    """
    named = dict(model.named_parameters()) | dict(model.named_buffers())
    touched: set[str] = set()
    report: dict[str, tuple[int, int]] = {}
    for group, keep in zip(groups, keeps, strict=True):
        if not group.removable:
            continue
        keep = keep.to(torch.bool).cpu()
        kept = int(keep.sum())
        for m in group.members + group.buffers:
            t = named[m.name]
            index = torch.nonzero(m.unit_mask(keep)).flatten().to(t.device)
            path, _, attr = m.name.rpartition(".")
            owner = _module(model, path)
            sliced = t.detach().index_select(m.dim, index).clone()
            if isinstance(t, nn.Parameter):
                setattr(owner, attr, nn.Parameter(sliced, requires_grad=t.requires_grad))
            else:
                owner.register_buffer(attr, sliced)
            named[m.name] = getattr(owner, attr)
            touched.add(path)
        report[group.name] = (group.units, kept)
    for path in touched:
        _sync_shape(_module(model, path))
    return report


def _norm_members(name: str, bn: nn.Module) -> list[Member]:
    return [Member(f"{name}.{p}", 0) for p in ("weight", "bias") if getattr(bn, p) is not None]


def _stat_members(name: str, bn: nn.Module) -> list[Member]:
    stats = ("running_mean", "running_var")
    return [Member(f"{name}.{b}", 0) for b in stats if getattr(bn, b, None) is not None]


def block_groups(model: nn.Module) -> list[PruneGroup]:
    """Prune groups of residual networks: the inner channels of every torchvision
    BasicBlock/Bottleneck (conv -> BN -> next conv), never the channels a skip connection adds."""
    groups = []
    for name, mod in model.named_modules():
        convs = [n for n in ("conv1", "conv2", "conv3") if hasattr(mod, n)]
        if len(convs) < 2 or not all(hasattr(mod, f"bn{i + 1}") for i in range(len(convs))):
            continue
        for i in range(len(convs) - 1):
            conv, bn, nxt = f"{name}.conv{i + 1}", f"{name}.bn{i + 1}", f"{name}.conv{i + 2}"
            units = model.get_submodule(conv).weight.shape[0]
            members = [Member(f"{conv}.weight", 0)]
            members += _norm_members(bn, model.get_submodule(bn))
            members.append(Member(f"{nxt}.weight", 1))
            buffers = _stat_members(bn, model.get_submodule(bn))
            groups.append(PruneGroup(conv, units, tuple(members), tuple(buffers)))
    return groups


def attention_groups(model: nn.Module) -> list[PruneGroup]:
    """Attention heads of every ``nn.MultiheadAttention`` (packed projections), and the
    hidden neurons of each transformer MLP block (a Linear pair named ``mlp.0`` / ``mlp.3``,
    as in torchvision's ViT).

    Heads are zeroed, not removed: ``nn.MultiheadAttention`` needs its width to equal
    heads x head size for the packed projections, so it cannot be made narrower in place.
    """
    groups = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.MultiheadAttention) and mod._qkv_same_embed_dim:
            dh = mod.head_dim
            members = [Member(f"{name}.in_proj_weight", 0, block=dh, repeat=3)]
            if mod.in_proj_bias is not None:
                members.append(Member(f"{name}.in_proj_bias", 0, block=dh, repeat=3))
            members.append(Member(f"{name}.out_proj.weight", 1, block=dh))
            groups.append(PruneGroup(name, mod.num_heads, tuple(members), removable=False))
        fc1 = getattr(mod, "0", None) if name.endswith("mlp") else None
        fc2 = getattr(mod, "3", None) if fc1 is not None else None
        if isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear):
            members = [Member(f"{name}.0.weight", 0)]
            if fc1.bias is not None:
                members.append(Member(f"{name}.0.bias", 0))
            members.append(Member(f"{name}.3.weight", 1))
            groups.append(PruneGroup(f"{name}.0", fc1.out_features, tuple(members)))
    return groups


def sequential_groups(model: nn.Module) -> list[PruneGroup]:
    """Prune groups of a purely sequential network (each layer feeds only the next).

    The units of each Linear/Conv2d except the last: its output rows (and bias), the entries of
    a BatchNorm right after it, and the next weight layer's input columns (a block of columns
    per channel when a Flatten lies between a conv and a linear layer).
    """
    layers: list[tuple[str, nn.Module]] = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear | nn.Conv2d | nn.modules.batchnorm._BatchNorm)
    ]
    groups = []
    for i, (name, mod) in enumerate(layers):
        if not isinstance(mod, nn.Linear | nn.Conv2d):
            continue
        nxt = next(
            ((n, m) for n, m in layers[i + 1 :] if isinstance(m, nn.Linear | nn.Conv2d)), None
        )
        if nxt is None:
            break
        units = mod.weight.shape[0]
        members = [Member(f"{name}.weight", 0)]
        if mod.bias is not None:
            members.append(Member(f"{name}.bias", 0))
        buffers: list[Member] = []
        bn = layers[i + 1] if i + 1 < len(layers) else None
        if bn is not None and isinstance(bn[1], nn.modules.batchnorm._BatchNorm):
            members += _norm_members(bn[0], bn[1])
            buffers += _stat_members(bn[0], bn[1])
        n_in = nxt[1].weight.shape[1]
        if n_in % units:
            break  # the next layer does not read these units in blocks; stop grouping here
        members.append(Member(f"{nxt[0]}.weight", 1, block=n_in // units))
        groups.append(PruneGroup(name, units, tuple(members), tuple(buffers)))
    return groups
