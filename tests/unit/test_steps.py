"""Manifolds, functional optimisers and integrators."""

from __future__ import annotations

import pytest
import torch

from fipframe.builtin.integrators import (
    EpsStep,
    EpsStepConfig,
    Gradient,
    GradientConfig,
    Penalty,
    PenaltyConfig,
)
from fipframe.builtin.metrics import KL, KLConfig
from fipframe.core import optim
from fipframe.core.integrator import StepProblem, Terms
from fipframe.core.manifold import Euclidean
from fipframe.core.params import ParamSpace, norm, sub_tree
from fipframe.testing import check_integrator_fixed_point, check_retraction, tiny_models

PARAMS = next(tiny_models())[2]


def quadratic_problem(target, alpha_term=None):
    def evaluate(p):
        obj = sum(((p[k] - target[k]) ** 2).sum() for k in p)
        div = alpha_term(p) if alpha_term else None
        return Terms(obj, div, {"quad": obj})

    return evaluate


def test_euclidean_conformance():
    check_retraction(Euclidean(), PARAMS)


@pytest.mark.parametrize(
    "integrator",
    [
        Gradient(GradientConfig()),
        Penalty(PenaltyConfig()),
        Gradient(GradientConfig(optimizer=optim.OptimizerConfig(name="sgd"))),
        EpsStep(EpsStepConfig()),
    ],
    ids=["gradient", "penalty", "sgd", "eps_step"],
)
def test_zero_objective_is_a_fixed_point(integrator):
    check_integrator_fixed_point(integrator, Euclidean(), PARAMS, KL(KLConfig()))


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_functional_optimiser_matches_torch_optim(name):
    torch.manual_seed(0)
    target = {k: torch.randn_like(v) for k, v in PARAMS.items()}
    cfg = optim.OptimizerConfig(name=name, momentum=0.9, weight_decay=0.01)
    integ = Gradient(GradientConfig(lr=0.05, optimizer=cfg))
    ours, state = dict(PARAMS), integ.init(PARAMS)
    theirs = [v.clone().requires_grad_(True) for v in PARAMS.values()]
    if name == "adam":
        opt = torch.optim.Adam(theirs, lr=0.05, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    else:
        opt = torch.optim.SGD(theirs, lr=0.05, momentum=0.9, weight_decay=0.01)
    for _ in range(5):
        problem = StepProblem(quadratic_problem(target), Euclidean(), None, 0.0)
        ours, state, _ = integ.step(ours, state, problem)
        opt.zero_grad()
        sum(((t - target[k]) ** 2).sum() for t, k in zip(theirs, PARAMS, strict=True)).backward()
        opt.step()
    for (k, v), t in zip(ours.items(), theirs, strict=True):
        torch.testing.assert_close(v, t.detach(), msg=k)


def test_penalty_adds_alpha_times_divergence():
    target = {k: torch.zeros_like(v) for k, v in PARAMS.items()}
    pull = {k: torch.ones_like(v) for k, v in PARAMS.items()}

    def div(p):
        return sum(((p[k] - pull[k]) ** 2).sum() for k in p)

    sgd = optim.OptimizerConfig(name="sgd", momentum=0.0)
    plain = Gradient(GradientConfig(lr=0.1, optimizer=sgd))
    pen = Penalty(PenaltyConfig(lr=0.1, alpha=3.0, optimizer=sgd))
    problem = StepProblem(quadratic_problem(target, div), Euclidean(), None, 0.0)
    a, _, stats_a = plain.step(PARAMS, plain.init(PARAMS), problem)
    b, _, stats_b = pen.step(PARAMS, pen.init(PARAMS), problem)
    for k in PARAMS:  # gradient of alpha * div is 2 * alpha * (w - 1)
        torch.testing.assert_close(b[k] - a[k], -0.1 * 3.0 * 2 * (PARAMS[k] - 1))
    assert "loss/divergence" in stats_b and "loss/quad" in stats_a


def test_eps_step_has_length_eps_along_the_gradient():
    target = {k: torch.randn_like(v) for k, v in PARAMS.items()}
    integ = EpsStep(EpsStepConfig(eps=0.03, alpha=0.0))
    problem = StepProblem(quadratic_problem(target), Euclidean(), None, 0.0)
    new, _, stats = integ.step(PARAMS, {}, problem)
    delta = sub_tree(new, PARAMS)
    assert norm(delta).item() == pytest.approx(0.03, rel=1e-6)
    space = ParamSpace.of(PARAMS)
    grad = space.flatten({k: 2 * (PARAMS[k] - target[k]) for k in PARAMS})
    cos = torch.nn.functional.cosine_similarity(space.flatten(delta), -grad, dim=0)
    assert cos.item() == pytest.approx(1.0, abs=1e-9)
    # half the scale after a rollback gives half the step
    half, _, _ = integ.step(PARAMS, {}, problem, scale=0.5)
    assert norm(sub_tree(half, PARAMS)).item() == pytest.approx(0.015, rel=1e-6)
