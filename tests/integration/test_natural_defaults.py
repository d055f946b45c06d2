"""The natural step at its default settings on the benchmark network (MLP 784-400-400-10 after
digits 0-4, 128 stored images, KL metric, real MNIST): the solve converges, and ten fixed
iterations (the default before issue 18) do not."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fipframe.builtin.geometry import Natural, NaturalConfig
from fipframe.builtin.metrics import KL, KLConfig
from fipframe.core.integrator import StepProblem, Terms
from fipframe.core.linalg import conjugate_gradient
from fipframe.core.manifold import Euclidean
from fipframe.core.params import ParamSpace, sub_tree
from fipframe.testing import first_task_mlp


def test_default_natural_step_converges_on_the_benchmark_mlp():
    adapter, stored, xn, yn = first_task_mlp(steps=200)
    params = adapter.params()
    space = ParamSpace.of(params)
    xn, yn = xn[:128], yn[:128]
    metric = KL(KLConfig())

    def evaluate(p):
        return Terms(F.cross_entropy(adapter.forward(p, xn), yn), None, {})

    def forward(p):
        return adapter.forward(p, stored)

    problem = StepProblem(evaluate, Euclidean(), metric, 0.0, stored_forward=forward)
    cfg = NaturalConfig(eps=0.1)
    new, _, stats = Natural(cfg).step(params, {}, problem)
    assert stats["cg/capped"].item() == 0.0
    assert stats["cg/residual"].item() <= cfg.cg_tol
    assert stats["cg/iters"].item() < cfg.cg_iters
    leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
    grads = torch.autograd.grad(evaluate(leaves).objective, list(leaves.values()))
    b = space.flatten(dict(zip(leaves, grads, strict=True)))
    g = metric.operator(forward, params)
    ref = conjugate_gradient(g, b, damping=cfg.damping, iters=2000, tol=1e-7)
    assert ref.converged
    delta = space.flatten(sub_tree(new, params))
    cos = (delta @ -ref.x) / (delta.norm() * ref.x.norm())
    assert cos.item() > 0.999, cos.item()
    assert abs(delta.norm().item() - 0.1) < 1e-5
    # ten fixed iterations, the old default, stop far from the solution
    short = conjugate_gradient(g, b, damping=cfg.damping, iters=10)
    assert short.residual.item() > 0.3, short.residual.item()
