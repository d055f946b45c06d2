"""Every registered manifold through the conformance kit, in float64, and Sphere/Stiefel
groups in a traversal."""

from __future__ import annotations

import pytest
import torch

from fipframe.api import load_config, run
from fipframe.errors import ConfigError
from fipframe.plugins import make_plugin_manager
from fipframe.testing import check_retraction, tiny_models

REGISTRY = make_plugin_manager().registry
CONFIGS = {
    "euclidean": {},
    "product": {
        "groups": [
            {"params": ["1.weight"], "manifold": "sphere"},
            {"params": ["3.*"], "manifold": "stiefel"},
        ]
    },
}
_, _, PARAMS = next(tiny_models())  # MLP: 1.weight [5, 6], 1.bias, 3.weight [4, 5], 3.bias


def build(kind: str):
    spec = REGISTRY.spec("manifold", kind)
    return spec.factory(spec.config(**CONFIGS[kind]))


def test_every_manifold_kind_is_covered():
    assert set(REGISTRY.kinds("manifold")) <= set(CONFIGS)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_manifold_conformance(kind):
    check_retraction(build(kind), PARAMS)


def test_product_puts_rows_on_sphere_and_stiefel():
    m = build("product")
    p = m.projx(PARAMS)
    torch.testing.assert_close(p["1.weight"].norm(dim=1), torch.ones(5, dtype=torch.float64))
    w = p["3.weight"]  # [4, 5]: the 4 output rows orthonormal
    torch.testing.assert_close(w @ w.T, torch.eye(4, dtype=torch.float64))
    b = p["3.bias"].reshape(-1, 1)  # a [4] bias is a 4x1 matrix: one unit column
    assert b.norm().item() == pytest.approx(1.0)
    torch.testing.assert_close(p["1.bias"], PARAMS["1.bias"])  # unmatched: Euclidean


def test_glob_matching_nothing_is_a_config_error():
    spec = REGISTRY.spec("manifold", "product")
    m = spec.factory(spec.config(groups=[{"params": ["conv*"], "manifold": "sphere"}]))
    with pytest.raises(ConfigError, match=r"manifold.groups\[0\].params: 'conv\*' matches no"):
        m.bind(list(PARAMS))


def test_traversal_stays_on_the_manifold(tiny, tmp_path):
    tiny["model"] = {"kind": "mlp", "hidden": [32]}
    tiny["manifold"] = {
        "kind": "product",
        "groups": [
            {"params": ["1.weight"], "manifold": "sphere"},
            {"params": ["3.weight"], "manifold": "stiefel"},
        ],
    }
    tiny["branches"] = {
        "fip": tiny["branches"]["fip"],
        "natural": [
            dict(
                tiny["branches"]["fip"][0],
                integrator={"kind": "natural", "eps": 0.2, "momentum": 0.5},
            )
        ],
    }
    result = run(load_config(tiny), out=tmp_path / "m")
    from fipframe.traversal.artifact import load_point

    for r in result.records:
        if r["kind"] == "stage_end":
            p = load_point(tmp_path / "m" / r["point"])
            torch.testing.assert_close(p["1.weight"].norm(dim=1), torch.ones(32), atol=1e-5, rtol=0)
            w = p["3.weight"]  # [4 classes.. 10, 32]
            torch.testing.assert_close(w @ w.T, torch.eye(w.shape[0]), atol=1e-4, rtol=0)
    assert result.accuracies("trunk")[0] > 0.9
