"""Every built-in architecture builds for MNIST-shaped inputs, runs functionally and takes a
FIP penalty step; the traversable globs select what moves."""

from __future__ import annotations

import math

import pytest
import torch

from fipframe.builtin.integrators import Penalty, PenaltyConfig
from fipframe.builtin.metrics import Bhattacharyya, BhattacharyyaConfig
from fipframe.core.integrator import StepProblem, Terms
from fipframe.core.manifold import Euclidean
from fipframe.core.params import sub_tree
from fipframe.errors import ConfigError
from fipframe.plugins import make_plugin_manager

REGISTRY = make_plugin_manager(entry_points_enabled=False).registry


def build(kind: str, **fields):
    spec = REGISTRY.spec("adapter", kind)
    return spec.factory(spec.config(**fields), input_shape=(1, 28, 28), num_classes=10)


@pytest.mark.parametrize("kind", REGISTRY.kinds("adapter"))
def test_builds_forwards_and_steps(kind):
    torch.manual_seed(0)
    adapter = build(kind)
    x = torch.randn(4, 1, 28, 28)
    y = torch.tensor([0, 1, 2, 3])
    params = adapter.params()
    assert adapter.forward(params, x).shape == (4, 10)
    adapter.train(False)  # anchor outputs in eval mode, as the engine does
    metric = Bhattacharyya(BhattacharyyaConfig())
    ref = metric.reference(adapter.forward(params, x))

    def evaluate(p):
        logits = adapter.forward(p, x)
        ce = torch.nn.functional.cross_entropy(logits, y)
        return Terms(ce, metric.divergence(logits, ref).mean(), {})

    integ = Penalty(PenaltyConfig(lr=1e-3))
    problem = StepProblem(evaluate, Euclidean(), metric, 0.0)
    # two steps: torchvision's ViT starts with a zero head, so only the head moves at first
    new, state, stats = integ.step(params, integ.init(params), problem)
    new, _, stats = integ.step(new, state, problem)
    assert math.isfinite(stats["loss/total"].item())
    moved = sub_tree(new, params)
    assert all(v.abs().max() > 0 for v in moved.values()), "some parameter did not move"


def test_sizes_match_the_architectures():
    count = {k: sum(p.numel() for p in build(k).model.parameters()) for k in ("lenet300", "mlp")}
    assert count["lenet300"] == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10  # 266,610
    assert count["mlp"] == 784 * 400 + 400 + 400 * 400 + 400 + 400 * 10 + 10
    resnet = sum(p.numel() for p in build("resnet18").model.parameters())
    assert 11.1e6 < resnet < 11.3e6  # ResNet-18 with a 10-way head


def test_traversable_and_frozen_globs():
    adapter = build("mlp", hidden=[8], traversable=("*weight",), frozen=("1.*",))
    assert adapter.names == ("3.weight",)
    with pytest.raises(ConfigError, match="match no parameter"):
        build("mlp", hidden=[8], traversable=("conv*",))


def test_vit_checks_its_shape_fields():
    with pytest.raises(ConfigError, match=r"model.patch_size: 5 must divide"):
        build("vit", patch_size=5)
    with pytest.raises(ValueError, match=r"hidden \(30\) must be a multiple of heads \(4\)"):
        build("vit", hidden=30, heads=4)  # refused by the config itself, before any build
