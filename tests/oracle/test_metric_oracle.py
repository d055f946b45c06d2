"""Every registered metric's matrix-free product against the dense J^T H J oracle (float64)."""

from __future__ import annotations

import pytest
import torch

from fipframe.builtin.metrics import fisher_vp
from fipframe.core.functional import divergence_hvp
from fipframe.core.params import ParamSpace, add, scale
from fipframe.plugins import make_plugin_manager
from fipframe.testing import check_metric, tiny_models

REGISTRY = make_plugin_manager().registry
METRICS = REGISTRY.kinds("metric")
MODELS = list(tiny_models())


def build(kind: str):
    spec = REGISTRY.spec("metric", kind)
    return spec.factory(spec.config())


def test_every_metric_is_covered():
    assert {"l2", "kl", "bhattacharyya", "tempered_kl"} <= set(METRICS)


@pytest.mark.parametrize("kind", METRICS)
@pytest.mark.parametrize("model", MODELS, ids=[m[0] for m in MODELS])
def test_metric_vector_product_matches_dense_oracle(kind, model):
    _, forward, params = model
    check_metric(build(kind), forward, params)


@pytest.mark.parametrize("kind", METRICS)
def test_closed_form_hessian_matches_autodiff(kind):
    metric = build(kind)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 6, generator=g, dtype=torch.float64)
    u = torch.randn(4, 6, generator=g, dtype=torch.float64)
    generic = divergence_hvp(lambda q, r: metric.divergence(q, metric.reference(r)), z, u)
    torch.testing.assert_close(metric.output_hvp(z, u), generic)


@pytest.mark.parametrize("kind", METRICS)
def test_divergence_is_half_the_quadratic_form_to_second_order(kind):
    """D(w + t v) = t^2/2 v^T g v + O(t^3): the metric really is the divergence's curvature."""
    metric = build(kind)
    _, forward, params = MODELS[0]
    space = ParamSpace.of(params)
    v = space.unflatten(
        torch.randn(space.size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    )
    ref = metric.reference(forward(params))
    quad = (space.flatten(v) @ space.flatten(metric.mvp(forward, params, v))).item()
    for t in (1e-2, 1e-3):
        d = metric.divergence(forward(add(params, scale(v, t))), ref).mean().item()
        assert d == pytest.approx(0.5 * t * t * quad, rel=30 * t)


def test_bhattacharyya_is_a_quarter_of_kl_to_second_order():
    _, forward, params = MODELS[0]
    space = ParamSpace.of(params)
    v = space.unflatten(torch.randn(space.size, dtype=torch.float64))
    kl, bh = build("kl"), build("bhattacharyya")
    gv_kl = space.flatten(kl.mvp(forward, params, v))
    gv_bh = space.flatten(bh.mvp(forward, params, v))
    torch.testing.assert_close(gv_bh, 0.25 * gv_kl)


def test_fisher_vp_is_the_softmax_jacobian():
    z = torch.randn(3, 5, dtype=torch.float64)
    u = torch.randn(3, 5, dtype=torch.float64)
    jac = torch.func.vmap(torch.func.jacrev(lambda x: torch.softmax(x, -1)))(z)
    torch.testing.assert_close(fisher_vp(z, u), torch.einsum("nij,nj->ni", jac, u))


@pytest.mark.parametrize("mode", ["fused", "reverse"])
@pytest.mark.parametrize("kind", ["l2", "kl", "bhattacharyya"])
@pytest.mark.parametrize("model", MODELS, ids=[m[0] for m in MODELS])
def test_every_product_mode_matches_the_oracle(mode, kind, model):
    _, forward, params = model
    spec = REGISTRY.spec("metric", kind)
    check_metric(spec.factory(spec.config(product=mode)), forward, params)


@pytest.mark.parametrize(
    ("model", "kind", "mode"),
    [(m[0], "kl", "forward") for m in MODELS]
    + [("mlp", k, "forward") for k in METRICS]
    + [("cnn", k, mode) for k in ("l2", "kl", "bhattacharyya") for mode in ("fused", "reverse")],
)
def test_stacked_products_are_each_paths_own(model, kind, mode):
    """``mvp_paths`` (lockstep paths' solves) at K points at once: row k is ``g_k v_k``."""
    _, forward, params = next(m for m in MODELS if m[0] == model)
    spec = REGISTRY.spec("metric", kind)
    metric = spec.factory(spec.config() if mode == "forward" else spec.config(product=mode))
    g = torch.Generator().manual_seed(1)

    def noise(t: torch.Tensor) -> torch.Tensor:
        return torch.randn(3, *t.shape, generator=g, dtype=t.dtype)

    points = {n: t + 0.3 * noise(t) for n, t in params.items()}  # three paths apart
    vs = {n: noise(t) for n, t in params.items()}
    stacked = metric.mvp_paths(torch.func.vmap(forward), points, vs)
    for k in range(3):
        at, v = ({n: t[k] for n, t in d.items()} for d in (points, vs))
        alone = metric.mvp(forward, at, v)
        for n in params:
            torch.testing.assert_close(stacked[n][k], alone[n], rtol=1e-9, atol=1e-12)


def test_forward_products_print_no_torch_internal_warning():
    """The first dual-number product of a process loads torch's forward-AD decompositions,
    which go through the deprecated torch.jit.script; users must not see that warning."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from fipframe.core.functional import metric_vp\n"
        "w = {'a': torch.randn(3, 2)}\n"
        "x = torch.randn(5, 2)\n"
        "out = metric_vp(lambda p: x @ p['a'].T, w, {'a': torch.ones(3, 2)}, lambda z, u: u)\n"
        "assert out['a'].shape == (3, 2)\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error::FutureWarning", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
