"""The continual-learning baselines' loss terms, number for number, against their papers'
formulas written out by hand (DER: Buzzega et al. 2020; LwF: Li & Hoiem 2017 with Hinton's
T^2 factor)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from fipframe.builtin.continual import DER, DERConfig, LwF, LwFConfig

G = torch.Generator().manual_seed(0)
LOGITS = torch.randn(6, 10, generator=G, dtype=torch.float64)


def test_der_is_the_mean_squared_error_to_the_recorded_logits():
    der = DER(DERConfig())
    recorded = torch.randn(20, 10, generator=G, dtype=torch.float64)
    der.memory = SimpleNamespace(logits=recorded)
    der.idx = torch.tensor([3, 0, 7, 7, 19, 11])
    want = (
        sum((LOGITS[i, c] - recorded[der.idx[i], c]) ** 2 for i in range(6) for c in range(10)) / 60
    )
    got = der.loss({}, LOGITS, None)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    assert got.item() > 0.5  # random logits: far from zero


@pytest.mark.parametrize("temperature", [1.0, 2.0, 3.5])
def test_lwf_is_t_squared_times_the_batch_mean_kl_over_earlier_classes(temperature):
    lwf = LwF(LwFConfig(temperature=temperature))
    lwf.classes = torch.tensor([0, 1, 2, 3])
    teacher = torch.randn(6, 4, generator=G, dtype=torch.float64)
    lwf._teacher = teacher
    t = temperature
    want = 0.0
    for i in range(6):
        q = torch.softmax(teacher[i] / t, 0)
        p = torch.softmax(LOGITS[i, :4] / t, 0)
        want += (q * (q.log() - p.log())).sum().item()
    want = t * t * want / 6
    assert lwf.loss({}, LOGITS, None).item() == pytest.approx(want, rel=1e-12)
    # the new classes' logits do not enter the distillation
    moved = LOGITS.clone()
    moved[:, 4:] += 5.0
    assert lwf.loss({}, moved, None).item() == pytest.approx(want, rel=1e-12)


class _Branchy(torch.nn.Module):
    """An MLP whose forward branches on its input (as Hugging Face attention masks do), so
    torch.func.vmap cannot trace it."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        if bool((x.abs().sum() >= 0).item()):  # always true, but data-dependent
            return self.net(x)
        return -self.net(x)


def test_ewc_fisher_without_vmap_equals_the_vmapped_one():
    """Models vmap cannot trace get one gradient per input: the same sampled Fisher."""
    from fipframe.builtin.continual import EWC
    from fipframe.core.adapter import ArchitectureAdapter

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    x = torch.randn(6, 5)
    plain, branchy = ArchitectureAdapter(net), ArchitectureAdapter(_Branchy(net))
    point = plain.params()
    want = EWC._sampled(plain, point, x, torch.Generator().manual_seed(1))
    moved = {f"net.{k}": v for k, v in point.items()}
    with pytest.raises(RuntimeError, match="vmap"):  # the fallback is really taken
        torch.func.vmap(lambda xi: branchy.forward(moved, xi[None]))(x)
    got = EWC._sampled(branchy, moved, x, torch.Generator().manual_seed(1))
    for k, v in want.items():
        torch.testing.assert_close(got[f"net.{k}"], v, rtol=1e-5, atol=1e-7)
    assert all(v.abs().sum() > 0 for v in want.values())
