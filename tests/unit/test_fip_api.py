"""The functional FIP API (fipframe.fip): penalty, metric products, regularizer, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fipframe
from fipframe.core.functional import dense_metric
from fipframe.core.params import ParamSpace
from fipframe.errors import ConfigError


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def test_penalty_is_the_kl_to_the_anchor_and_zero_at_it():
    model, x = _net(), torch.randn(11, 5, dtype=torch.float64)
    anchor = model(x).detach()
    assert fipframe.fip_penalty(model, "kl", anchor, x).item() == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        model[0].weight.add_(0.3)
    got = fipframe.fip_penalty(model, "kl", anchor, x)
    want = F.kl_div(F.log_softmax(model(x), 1), F.log_softmax(anchor, 1), log_target=True,
                    reduction="none").sum(1)  # fmt: skip
    assert got.item() == pytest.approx(want.mean().item(), rel=1e-10)
    total = fipframe.fip_penalty(model, "kl", anchor, x, reduction="sum")
    assert total.item() == pytest.approx(want.sum().item(), rel=1e-10)
    got.backward()
    assert model[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["l2", "kl", "bhattacharyya"])
def test_metric_vp_matches_the_dense_metric(kind):
    model, x = _net(1), torch.randn(6, 5, dtype=torch.float64)
    metric = fipframe.make_metric(kind)
    params = {n: p.detach() for n, p in model.named_parameters()}
    space = ParamSpace.of(params)

    def forward(p):
        return torch.func.functional_call(model, p, (x,))

    dense = dense_metric(forward, params, lambda q, r: metric.divergence(q, metric.reference(r)))
    v = {n: torch.randn_like(p) for n, p in params.items()}
    got = space.flatten(fipframe.metric_vp(model, metric, x, v))
    torch.testing.assert_close(got, dense @ space.flatten(v), rtol=1e-9, atol=1e-12)


def test_regularizer_grows_by_task_and_keeps_each_anchor():
    model = _net(2)
    a, b = torch.randn(8, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    fip = fipframe.FIPRegularizer(model, a, metric="kl", alpha=3.0)
    assert fip().item() == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        model[2].bias.add_(torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64))
    fip.add(b)  # anchored at the moved weights: b's term is zero, a's is not
    assert len(fip) == 12
    moved = fipframe.fip_penalty(model, "kl", fip.anchor_outputs[:8], a)
    assert fip().item() == pytest.approx(3.0 * moved.item() * 8 / 12, rel=1e-10)
    sub = fipframe.FIPRegularizer(model, a, batch_size=3, seed=1)
    assert sub.penalty().item() == pytest.approx(0.0, abs=1e-12)


def test_named_inputs_reach_the_model_as_keywords():
    class Tok(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.head = nn.Embedding(20, 4), nn.Linear(4, 2)

        def forward(self, input_ids, attention_mask):
            h = (self.emb(input_ids) * attention_mask[..., None]).sum(1)
            return self.head(h / attention_mask.sum(1, keepdim=True))

    model = Tok()
    x = {"input_ids": torch.randint(20, (5, 6)), "attention_mask": torch.ones(5, 6)}
    fip = fipframe.FIPRegularizer(model, x, metric="bhattacharyya", alpha=1.0)
    with torch.no_grad():
        model.head.weight.mul_(2.0)
    assert fip().item() > 0
    fip.add({"input_ids": torch.randint(20, (2, 6)), "attention_mask": torch.ones(2, 6)})
    assert len(fip) == 7


def test_bad_input_names_the_field():
    model, x = _net(), torch.randn(4, 5, dtype=torch.float64)
    with pytest.raises(ConfigError, match="anchor_outputs: 3 rows for 4 inputs"):
        fipframe.fip_penalty(model, "kl", torch.zeros(3, 3, dtype=torch.float64), x)
    with pytest.raises(ConfigError, match="shape"):
        fipframe.fip_penalty(model, "kl", torch.zeros(4, 2, dtype=torch.float64), x)
    with pytest.raises(ConfigError, match="reduction"):
        fipframe.fip_penalty(model, "kl", model(x), x, reduction="max")
    with pytest.raises(Exception, match="unknown metric kind 'kll'.*did you mean 'kl'"):
        fipframe.make_metric("kll")
    with pytest.raises(ConfigError, match="metric 'l2'"):
        fipframe.make_metric("l2", product="sideways")
    with pytest.raises(ConfigError, match="alpha"):
        fipframe.FIPRegularizer(model, x, alpha=-1.0)
    with pytest.raises(ConfigError, match="no stored inputs"):
        fipframe.FIPRegularizer(model).penalty()
    with pytest.raises(ConfigError, match="not parameters"):
        fipframe.metric_vp(model, "kl", x, {"nope": torch.zeros(1)})


def test_inputs_take_the_models_dtype_and_metrics_are_built_once():
    model = _net()  # float64
    fip = fipframe.FIPRegularizer(model, torch.randn(5, 5), metric="kl")  # float32 given
    assert fip.inputs.dtype == torch.float64 and fip().item() == pytest.approx(0.0, abs=1e-12)
    assert fipframe.make_metric("kl") is fipframe.make_metric("kl")
    assert fipframe.make_metric("l2", product="reverse") is not fipframe.make_metric("l2")
