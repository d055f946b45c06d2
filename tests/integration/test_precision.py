"""``run.autocast: bf16``: the training forward in bfloat16, metric products and evaluation in
float32, and a path that learns and keeps about what the float32 path does."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fipframe.api import load_config, run
from fipframe.errors import ConfigError


class Recorder(nn.Module):
    """An MLP that records the dtype its first layer computes in, by phase."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
        self.seen: set[tuple[bool, bool, torch.dtype]] = set()
        self.net[1].register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        # (grad enabled, training mode, dtype of the product)
        self.seen.add((torch.is_grad_enabled(), self.training, output.dtype))

    def forward(self, x):
        return self.net(x)


def _config(tiny, autocast):
    tiny = copy.deepcopy(tiny)
    tiny.pop("model")
    tiny["run"]["autocast"] = autocast
    tiny["branches"]["natural"] = [
        {**tiny["branches"]["fip"][0], "integrator": {"kind": "natural", "eps": 0.05}}
    ]
    return load_config(tiny)


def test_bf16_forward_float32_products_and_evaluation(tiny):
    torch.manual_seed(0)
    model = Recorder()
    result = run(_config(tiny, "bf16"), model=model)
    # training forwards (gradients on, train mode) ran in bf16; evaluation (no gradients) and
    # the natural step's metric products (eval mode, with gradients) in float32
    assert (True, True, torch.bfloat16) in model.seen
    assert (False, False, torch.float32) in model.seen
    assert (True, False, torch.float32) in model.seen
    assert not {s for s in model.seen if s[2] == torch.bfloat16 and not (s[0] and s[1])}
    torch.manual_seed(0)
    plain = run(_config(tiny, "off"), model=Recorder())
    for branch in ("finetune", "fip", "natural"):
        got, want = result.accuracies(branch), plain.accuracies(branch)
        # bf16 rounding, not another method: every task within 5 points (of 100) of float32
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 0.05, (branch, got, want)
    assert result.accuracies("fip")[0] > result.accuracies("finetune")[0] + 0.2


def test_autocast_needs_float32(tiny):
    tiny["run"].update(autocast="bf16", dtype="float64")
    with pytest.raises(ConfigError, match="autocast: bf16 casts float32 operations"):
        load_config(tiny)


@pytest.mark.slow  # torch.compile compiles each stage's forward: about a minute on 2 cores
def test_compiled_forward_walks_the_eager_path(tiny):
    """``run.compile`` changes how the training forward runs, not where the path goes."""
    tiny["run"]["dtype"] = "float64"  # rounding, not the method, is all that may differ
    eager = run(load_config(tiny))
    tiny["run"]["compile"] = True
    fast = run(load_config(tiny))
    for branch in ("finetune", "fip"):
        a, b = eager.points[(branch, "second")][0], fast.points[(branch, "second")][0]
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-9, branch
