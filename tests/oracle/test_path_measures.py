from __future__ import annotations

import pytest
import torch

from fipframe.api import load_config, run
from fipframe.builtin.metrics import KL, KLConfig
from fipframe.core.functional import dense_metric
from fipframe.core.params import ParamSpace, add, scale
from fipframe.eval.geometry import drift, geodesic_length, gradient_angle, segment_length
from fipframe.testing import tiny_models

_, FORWARD, PARAMS = next(tiny_models())
SPACE = ParamSpace.of(PARAMS)
METRIC = KL(KLConfig())
DENSE = dense_metric(FORWARD, PARAMS, lambda q, r: METRIC.divergence(q, METRIC.reference(r)))
V = SPACE.unflatten(
    torch.randn(SPACE.size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
)


def test_segment_length_is_the_metric_norm_and_sqrt_2d_for_short_steps():
    b = add(PARAMS, scale(V, 1e-3))
    length = segment_length(METRIC, FORWARD, PARAMS, b).item()
    d = 1e-3 * SPACE.flatten(V)
    assert length == pytest.approx((d @ DENSE @ d).sqrt().item(), rel=1e-9)
    div = drift(METRIC, FORWARD, PARAMS, [b])[0].item()
    assert length == pytest.approx((2 * div) ** 0.5, rel=1e-2)


def test_geodesic_length_adds_up_along_a_straight_line():
    points = [add(PARAMS, scale(V, t)) for t in torch.linspace(0, 1e-2, 11).tolist()]
    whole = geodesic_length(METRIC, FORWARD, points).item()
    once = segment_length(METRIC, FORWARD, points[0], points[-1]).item()
    assert whole == pytest.approx(once, rel=1e-2)
    assert drift(METRIC, FORWARD, PARAMS, points).diff().min() > 0  # drifts further each step


def test_gradient_angle_matches_the_dense_eigenspace():
    frac = gradient_angle(METRIC, FORWARD, PARAMS, V, k=5).item()
    _, vecs = torch.linalg.eigh(DENSE)
    top = vecs[:, -5:]
    v = SPACE.flatten(V)
    assert frac == pytest.approx(((top.T @ v).square().sum() / v.square().sum()).item(), rel=1e-6)


def test_traversal_logs_drift_and_lengths(tiny, tmp_path):
    tiny["branches"].pop("finetune")
    result = run(load_config(tiny), out=tmp_path / "p")
    fip = [r["metrics"] for r in result.records if r["branch"] == "fip"]
    lengths = [m["path/length"] for m in fip]
    assert lengths == sorted(lengths) and lengths[0] > 0
    assert all(m["path/euclidean"] > 0 and m["path/drift"] >= 0 for m in fip)
    assert not any("path/length" in r["metrics"] for r in result.records if r["branch"] == "trunk")


def test_spectrum_summary_matches_the_dense_metric():
    from fipframe.eval.geometry import spectrum

    out = spectrum(METRIC, FORWARD, PARAMS, k=5, trace_samples=2000)
    evals = torch.linalg.eigvalsh(DENSE).flip(0)
    torch.testing.assert_close(out["values"], evals[:5], rtol=1e-6, atol=1e-10)
    assert out["trace"].item() == pytest.approx(DENSE.trace().item(), rel=0.1)
    assert out["captured"].item() == pytest.approx(
        (evals[:5].sum() / DENSE.trace()).item(), rel=0.1
    )
    assert 1 <= out["effective_rank"].item() <= 5
    assert out["rank_bound"].item() == 5 * 4


def test_path_measures_can_be_turned_off(tiny, tmp_path):
    """run.measure_inputs: 0 turns the per-chunk path measures off."""
    tiny["branches"].pop("finetune")
    tiny["run"] = {**tiny.get("run", {}), "measure_inputs": 0}
    result = run(load_config(tiny), out=tmp_path / "off")
    fip = [r["metrics"] for r in result.records if r["branch"] == "fip"]
    assert fip and not any("path/length" in m or "path/drift" in m for m in fip)
