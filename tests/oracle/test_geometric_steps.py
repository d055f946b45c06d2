"""The natural and projected steps against dense float64 solutions."""

from __future__ import annotations

import pytest
import torch

from fipframe.builtin.geometry import Natural, NaturalConfig, Projected, ProjectedConfig
from fipframe.builtin.metrics import KL, KLConfig
from fipframe.core.functional import dense_metric
from fipframe.core.integrator import StepProblem, Terms
from fipframe.core.manifold import Euclidean
from fipframe.core.params import ParamSpace, norm, sub_tree
from fipframe.testing import check_integrator_fixed_point, tiny_models

NAME, FORWARD, PARAMS = next(tiny_models())
SPACE = ParamSpace.of(PARAMS)
METRIC = KL(KLConfig())
DENSE = dense_metric(FORWARD, PARAMS, lambda q, r: METRIC.divergence(q, METRIC.reference(r)))
TARGET = {k: torch.randn_like(v) for k, v in PARAMS.items()}


def problem(progress: float = 0.0) -> StepProblem:
    def evaluate(p):
        obj = sum(((p[k] - TARGET[k]) ** 2).sum() for k in p)
        return Terms(obj, None, {})

    return StepProblem(evaluate, Euclidean(), METRIC, progress, stored_forward=FORWARD)


def grad() -> torch.Tensor:
    return SPACE.flatten({k: 2 * (PARAMS[k] - TARGET[k]) for k in PARAMS})


def test_natural_step_is_the_damped_natural_gradient_of_length_eps():
    cfg = NaturalConfig(eps=0.02, damping=1e-2, cg_tol=1e-12, cg_iters=10 * SPACE.size)
    new, _, stats = Natural(cfg).step(PARAMS, {}, problem())
    delta = SPACE.flatten(sub_tree(new, PARAMS))
    want = torch.linalg.solve(DENSE + 1e-2 * torch.eye(SPACE.size, dtype=DENSE.dtype), grad())
    want = -0.02 * want / want.norm()
    torch.testing.assert_close(delta, want, atol=1e-9, rtol=1e-6)
    # it changes the function less than a gradient step of the same length
    step_g = -0.02 * grad() / grad().norm()
    assert delta @ DENSE @ delta < 0.5 * (step_g @ DENSE @ step_g)
    assert 0 < stats["cos_natural_grad"].item() < 1
    assert stats["cg/residual"].item() <= 1e-12 and stats["cg/capped"].item() == 0.0
    assert 1 <= stats["cg/iters"].item() <= 10 * SPACE.size


def test_projected_step_avoids_the_top_eigenspace():
    cfg = ProjectedConfig(eps=0.02, rank=5, lanczos_iters=SPACE.size)
    new, state, stats = Projected(cfg).step(PARAMS, Projected(cfg).init(PARAMS), problem())
    delta = SPACE.flatten(sub_tree(new, PARAMS))
    assert norm(sub_tree(new, PARAMS)).item() == pytest.approx(0.02, rel=1e-9)
    evals, evecs = torch.linalg.eigh(DENSE)
    top = evecs[:, -5:]
    assert (top.T @ delta).abs().max().item() < 1e-10
    want = grad() - top @ (top.T @ grad())
    torch.testing.assert_close(delta, -0.02 * want / want.norm(), atol=1e-9, rtol=1e-6)
    assert 0 < stats["grad_in_top_eigenspace"].item() < 1
    assert state["age"] == 1 and state["basis"].shape == (5, SPACE.size)


def test_projected_refreshes_its_basis_on_schedule():
    integ = Projected(ProjectedConfig(rank=3, refresh=2))
    state = integ.init(PARAMS)
    params, bases = PARAMS, []
    for _ in range(5):
        params, state, _ = integ.step(params, state, problem())
        bases.append(state["basis"])
    assert bases[0] is bases[1] and bases[1] is not bases[2] and bases[2] is bases[3]


@pytest.mark.parametrize(
    "integ",
    [Natural(NaturalConfig(momentum=0.5)), Projected(ProjectedConfig(momentum=0.5))],
    ids=["natural", "projected"],
)
def test_zero_objective_is_a_fixed_point(integ):
    check_integrator_fixed_point(integ, Euclidean(), PARAMS, METRIC)
