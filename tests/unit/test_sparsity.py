"""Magnitude masks, schedules, structured groups and unit removal, against direct computation."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from fipframe.builtin.adapters import (
    LeNet300Config,
    ResNet18Config,
    SmallCNNConfig,
    ViTConfig,
    build_lenet300,
    build_resnet18,
    build_small_cnn,
    build_vit,
)
from fipframe.core import sparsity as S


def _cfg(**kw):
    return S.SparsityConfig(**{"sparsity": 0.9, **kw})


def test_schedules_start_end_and_shape():
    lin = _cfg(schedule="linear", initial=0.2, sparsity=0.8, ramp=0.5)
    cub = _cfg(schedule="cubic", initial=0.0, sparsity=0.9, ramp=0.8)
    assert lin.target(0.0) == pytest.approx(0.2)
    assert lin.target(0.25) == pytest.approx(0.5)
    assert lin.target(0.5) == lin.target(1.0) == pytest.approx(0.8)
    assert cub.target(0.0) == 0.0 and cub.target(0.8) == pytest.approx(0.9)
    # cubic (Zhu & Gupta): s_f + (s_i - s_f)(1 - t)^3, fast early, slow late
    assert cub.target(0.4) == pytest.approx(0.9 - 0.9 * 0.5**3)
    xs = [cub.target(i / 50) for i in range(51)]
    assert all(b >= a for a, b in zip(xs, xs[1:], strict=False))
    assert _cfg().target(0.0) == 0.9  # constant
    with pytest.raises(ValidationError, match="initial"):
        _cfg(schedule="linear", initial=0.95)
    with pytest.raises(ValidationError):
        _cfg(sparsity=1.0)


def test_counted_tensors_default_to_weights_and_follow_globs():
    params = build_small_cnn(
        SmallCNNConfig(batch_norm=True), input_shape=(1, 28, 28), num_classes=10
    ).params()
    names = S.counted(params, _cfg())
    assert names and all(params[n].dim() >= 2 for n in names)
    assert not any(n.endswith("bias") or n.startswith("1.") for n in names)  # BN is module 1
    assert "1.weight" in S.counted(params, _cfg(matrices_only=False))
    assert S.counted(params, _cfg(include=("0.*",))) == ["0.weight"]
    assert "0.weight" not in S.counted(params, _cfg(exclude=("0.*",)))


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_weight_masks_prune_exactly_the_smallest(scope):
    g = torch.Generator().manual_seed(0)
    params = {"a": torch.randn(40, 30, generator=g), "b": 3 * torch.randn(20, 10, generator=g)}
    masks = S.weight_masks(params, ["a", "b"], 0.75, scope)
    if scope == "global":
        flat = torch.cat([params["a"].abs().flatten(), params["b"].abs().flatten()])
        k = math.floor(0.75 * flat.numel())
        threshold = flat.sort().values[k - 1]
        for n in params:
            assert torch.equal(masks[n], params[n].abs() > threshold)
        assert sum(int((~m).sum()) for m in masks.values()) == k
        # the larger-scale tensor keeps more of its weights under one global threshold
        assert masks["b"].float().mean() > masks["a"].float().mean()
    else:
        for n, v in params.items():
            assert int((~masks[n]).sum()) == math.floor(0.75 * v.numel())
    assert S.weight_masks(params, ["a"], 0.0, scope)["a"].all()


def test_apply_masks_and_counts():
    params = {"w": torch.tensor([[1.0, -2.0], [0.5, 3.0]]), "b": torch.tensor([1.0, 0.0])}
    masks = {"w": torch.tensor([[True, False], [False, True]])}
    out = S.apply_masks(params, masks)
    assert torch.equal(out["w"], torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
    assert out["b"] is params["b"]
    c = S.count(out, ["w"])
    assert (c.counted, c.counted_zero, c.total, c.total_zero) == (4, 2, 6, 3)
    assert c.sparsity == 0.5 and c.nonzero == 3
    old = {"w": torch.tensor([[False, True], [True, True]])}
    assert torch.equal(S.intersect(masks, old)["w"], torch.tensor([[False, False], [False, True]]))


def _models():
    shape = (1, 28, 28)
    return [
        ("lenet300", build_lenet300(LeNet300Config(), input_shape=shape, num_classes=10), 2),
        (
            "small_cnn+bn",
            build_small_cnn(SmallCNNConfig(batch_norm=True), input_shape=shape, num_classes=10),
            3,
        ),
        ("resnet18", build_resnet18(ResNet18Config(), input_shape=shape, num_classes=10), 8),
        ("vit", build_vit(ViTConfig(), input_shape=shape, num_classes=10), 4),
    ]


@pytest.mark.parametrize("name,adapter,n_groups", _models(), ids=lambda v: str(v)[:12])
def test_structured_masks_zero_whole_units_and_removal_is_exact(name, adapter, n_groups):
    torch.manual_seed(0)
    model = adapter.model.eval()
    for m in model.modules():  # statistics that are not the identity
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    params = adapter.params()
    groups = S.usable_groups(adapter.prune_groups(), params)
    assert len(groups) == n_groups
    cfg = _cfg(sparsity=0.5, structured=True, scope="layer")
    masks = S.magnitude_masks(params, cfg, 0.5, groups)
    keeps = S.group_keeps(params, groups, 0.5, "layer")
    for g, keep in zip(groups, keeps, strict=True):
        assert int(keep.sum()) == g.units - g.units // 2
        # every weight of a pruned unit is masked; a kept unit keeps weights in every member
        # (a tensor in two groups, rows in one and columns in the next, gets both masks)
        for m in g.members:
            rows = m.slices(masks[m.name].float(), g.units)
            assert torch.equal(rows.amax(1).bool(), keep), m.name
    pruned = S.apply_masks(params, masks)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        want = adapter.forward(pruned, x)
        adapter.load(pruned)
        before = sum(p.numel() for p in model.parameters())
        report = S.shrink(model, groups, keeps)
        after = sum(p.numel() for p in model.parameters())
        got = model(x)
    assert torch.allclose(got, want, atol=1e-5)
    removable = [g for g in groups if g.removable]
    assert after < before if removable else after == before
    assert all(report[g.name] == (g.units, g.units - g.units // 2) for g in removable)


def test_global_structured_scores_compare_units_by_rms():
    adapter = build_lenet300(LeNet300Config(), input_shape=(1, 28, 28), num_classes=10)
    params = adapter.params()
    groups = S.usable_groups(adapter.prune_groups(), params)
    assert [g.units for g in groups] == [300, 100]
    # the first hidden layer's units become small, the second's large
    params["1.weight"] = params["1.weight"] * 0.01
    params["1.bias"] = params["1.bias"] * 0.01
    params["5.weight"] = params["5.weight"] * 100
    keeps = S.group_keeps(params, groups, 0.5, "global")
    assert bool(keeps[1].all()) and int(keeps[0].sum()) == 100  # all 200 cuts in layer one
    layer = S.group_keeps(params, groups, 0.5, "layer")
    assert [int(k.sum()) for k in layer] == [150, 50]
