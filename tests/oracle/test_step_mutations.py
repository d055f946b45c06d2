"""Each step rule's arithmetic, exactly: momentum and its transport, the tangent-space solve,
optimiser moments carried along a manifold, and the sum/mean reduction of the penalty.

These are the checks that fail when a term is dropped or a transport skipped (the mutations an
audit found surviving the earlier suite)."""

from __future__ import annotations

import pytest
import torch

from fipframe.builtin.geometry import Natural, NaturalConfig, Projected, ProjectedConfig
from fipframe.builtin.integrators import Penalty, PenaltyConfig
from fipframe.builtin.metrics import KL, KLConfig
from fipframe.core.functional import dense_metric
from fipframe.core.integrator import StepProblem, Terms
from fipframe.core.manifold import Euclidean, Manifold
from fipframe.core.params import Params, ParamSpace, dot, sub_tree
from fipframe.plugins import make_plugin_manager
from fipframe.testing import check_integrator_fixed_point, tiny_models

NAME, FORWARD, PARAMS = next(tiny_models())
SPACE = ParamSpace.of(PARAMS)
METRIC = KL(KLConfig())
TARGET = {k: torch.randn_like(v) for k, v in PARAMS.items()}


def dense(at: Params) -> torch.Tensor:
    return dense_metric(FORWARD, at, lambda q, r: METRIC.divergence(q, METRIC.reference(r)))


def grad_at(p: Params) -> torch.Tensor:
    return SPACE.flatten({k: 2 * (p[k] - TARGET[k]) for k in p})


def problem(manifold: Manifold, progress: float = 0.0) -> StepProblem:
    def evaluate(p):
        return Terms(sum(((p[k] - TARGET[k]) ** 2).sum() for k in p), None, {})

    return StepProblem(evaluate, manifold, METRIC, progress, stored_forward=FORWARD)


class FlipTransport(Manifold):
    """Flat space whose vector transport reverses vectors: a step that adds momentum without
    transporting it gives the opposite answer."""

    def projx(self, p):
        return dict(p)

    def proju(self, p, u):
        return dict(u)

    def egrad2rgrad(self, p, g):
        return dict(g)

    def retr(self, p, u, t=1.0):
        return {k: p[k] + t * u[k] for k in p}

    def transp(self, p, q, u):
        return {k: -v for k, v in u.items()}

    def inner(self, p, u, v):
        return dot(u, v)


def natural_direction(at: Params, damping: float) -> torch.Tensor:
    eye = torch.eye(SPACE.size, dtype=torch.float64)
    return torch.linalg.solve(dense(at) + damping * eye, grad_at(at))


@pytest.mark.parametrize("manifold", [Euclidean(), FlipTransport()], ids=["flat", "flip"])
@pytest.mark.parametrize("mu", [0.0, 0.7])
def test_natural_momentum_is_the_transported_heavy_ball_sum(manifold, mu):
    cfg = NaturalConfig(eps=0.03, damping=1e-2, cg_tol=1e-12, cg_iters=2000, momentum=mu)
    integ = Natural(cfg)
    x1, state, _ = integ.step(PARAMS, integ.init(PARAMS), problem(manifold))
    x2, state, _ = integ.step(x1, state, problem(manifold))
    d1 = natural_direction(PARAMS, 1e-2)
    sign = -1.0 if isinstance(manifold, FlipTransport) else 1.0
    d2 = sign * mu * d1 + natural_direction(x1, 1e-2)
    want = -0.03 * d2 / d2.norm()
    torch.testing.assert_close(SPACE.flatten(sub_tree(x2, x1)), want, atol=1e-9, rtol=1e-6)
    if mu:
        torch.testing.assert_close(state["m"], d2, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("manifold", [Euclidean(), FlipTransport()], ids=["flat", "flip"])
def test_projected_momentum_is_the_transported_heavy_ball_sum(manifold):
    cfg = ProjectedConfig(eps=0.03, rank=5, refresh=100, lanczos_iters=SPACE.size, momentum=0.6)
    integ = Projected(cfg)
    x1, state, _ = integ.step(PARAMS, integ.init(PARAMS), problem(manifold))
    x2, state, _ = integ.step(x1, state, problem(manifold))
    top = torch.linalg.eigh(dense(PARAMS)).eigenvectors[:, -5:]  # basis kept (refresh 100)

    def off(b):
        return b - top @ (top.T @ b)

    sign = -1.0 if isinstance(manifold, FlipTransport) else 1.0
    d2 = sign * 0.6 * off(grad_at(PARAMS)) + off(grad_at(x1))
    torch.testing.assert_close(
        SPACE.flatten(sub_tree(x2, x1)), -0.03 * d2 / d2.norm(), atol=1e-9, rtol=1e-6
    )


def sphere() -> Manifold:
    reg = make_plugin_manager().registry
    spec = reg.spec("manifold", "product")
    m = spec.factory(spec.config(groups=[{"params": ["1.weight"], "manifold": "sphere"}]))
    m.bind(list(PARAMS))
    return m


def test_natural_step_on_a_sphere_solves_in_the_tangent_space_and_is_eps_long():
    m = sphere()
    x0 = m.projx(PARAMS)
    cfg = NaturalConfig(eps=0.05, damping=1e-2, cg_tol=1e-12, cg_iters=2000)
    _, _, stats = Natural(cfg).step(x0, {}, problem(m))
    # the tangent projection at x0 as a matrix: rows of 1.weight lose their radial part
    cols = []
    for e in torch.eye(SPACE.size, dtype=torch.float64):
        cols.append(SPACE.flatten(m.proju(x0, SPACE.unflatten(e))))
    proj = torch.stack(cols, 1)
    eye = torch.eye(SPACE.size, dtype=torch.float64)
    b = proj @ grad_at(x0)
    theta = torch.linalg.solve(proj @ dense(x0) @ proj + 1e-2 * eye, b)
    assert (theta - proj @ theta).norm() < 1e-10  # the solution is tangent
    unit = SPACE.unflatten(theta / theta.norm())
    want = m.retr(x0, unit, -0.05)
    got, _, _ = Natural(cfg).step(x0, {}, problem(m))
    torch.testing.assert_close(SPACE.flatten(got), SPACE.flatten(want), atol=1e-9, rtol=1e-7)
    assert stats["cg/capped"].item() == 0.0
    for k, v in got.items():
        if k == "1.weight":
            torch.testing.assert_close(v.norm(dim=1), torch.ones(v.shape[0], dtype=v.dtype))


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_optimiser_moment_is_transported_along_the_sphere(optimizer):
    m = sphere()
    x0 = m.projx(PARAMS)
    cfg = PenaltyConfig(lr=0.05, alpha=0.0, optimizer={"name": optimizer, "momentum": 0.9})
    integ = Penalty(cfg)
    x1, state, _ = integ.step(x0, integ.init(x0), problem(m))
    g0 = m.egrad2rgrad(x0, SPACE.unflatten(grad_at(x0)))
    scale = 0.1 if optimizer == "adam" else 1.0  # adam keeps (1 - beta1) g, sgd g
    raw = {k: scale * v for k, v in g0.items()}
    want = m.transp(x0, x1, raw)
    got = dict(zip(x0, state["opt"]["m"], strict=True))
    for k in x0:
        torch.testing.assert_close(got[k], want[k], atol=1e-12, rtol=1e-9)
    # tangent at the new point: each sphere row's moment is orthogonal to the row
    rows = (got["1.weight"] * x1["1.weight"]).sum(1)
    assert rows.abs().max().item() < 1e-12
    assert (raw["1.weight"] * x1["1.weight"]).sum(1).abs().max().item() > 1e-6  # not trivially


def test_optimiser_moment_is_untouched_on_flat_space():
    cfg = PenaltyConfig(lr=0.05, alpha=0.0, optimizer={"name": "sgd", "momentum": 0.9})
    integ = Penalty(cfg)
    _, state, _ = integ.step(PARAMS, integ.init(PARAMS), problem(Euclidean()))
    torch.testing.assert_close(
        SPACE.flatten(dict(zip(PARAMS, state["opt"]["m"], strict=True))), grad_at(PARAMS)
    )


def test_sum_reduction_is_the_mean_times_the_stored_inputs():
    def make(div):
        def evaluate(p):
            d = sum((p[k] ** 2).sum() for k in p) * div
            return Terms(sum(((p[k] - TARGET[k]) ** 2).sum() for k in p), d, {}, stored=7)

        return StepProblem(evaluate, Euclidean(), METRIC, 0.0, stored_forward=FORWARD)

    sgd = {"name": "sgd", "momentum": 0.0}
    summed = Penalty(PenaltyConfig(lr=0.01, alpha=2.0, reduction="sum", optimizer=sgd))
    mean = Penalty(PenaltyConfig(lr=0.01, alpha=14.0, optimizer=sgd))
    a, _, sa = summed.step(PARAMS, summed.init(PARAMS), make(1.0))
    b, _, sb = mean.step(PARAMS, mean.init(PARAMS), make(1.0))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-14, rtol=0)
    assert sa["loss/total"].item() == pytest.approx(sb["loss/total"].item())
    c, _, _ = mean.step(PARAMS, mean.init(PARAMS), make(0.0))
    assert max((a[k] - c[k]).abs().max().item() for k in a) > 1e-4  # the term matters


@pytest.mark.parametrize(
    "integ",
    [
        Natural(NaturalConfig(momentum=0.5)),
        Natural(NaturalConfig(preconditioner="jacobi", momentum=0.5)),
        Projected(ProjectedConfig(rank=3, momentum=0.5)),
    ],
    ids=["natural", "natural-jacobi", "projected"],
)
def test_zero_objective_is_a_fixed_point_through_the_solver(integ):
    """The kit's fixed-point check with stored inputs, so the metric path is taken: Lanczos runs
    and CG is entered (with a zero right-hand side it returns at once, with theta = 0)."""
    check_integrator_fixed_point(integ, Euclidean(), PARAMS, METRIC, stored_forward=FORWARD)


def test_cached_basis_and_jacobi_directions_are_projected_before_the_step():
    """A Lanczos basis from an earlier point, or a Jacobi-preconditioned solve, is not tangent
    at the current point: the direction is projected before it is normalised."""
    m = sphere()
    x0 = m.projx(PARAMS)
    cfg = ProjectedConfig(eps=0.05, rank=4, refresh=100, lanczos_iters=SPACE.size)
    integ = Projected(cfg)
    x1, state, _ = integ.step(x0, integ.init(x0), problem(m))
    x2, _, _ = integ.step(x1, state, problem(m))
    basis = state["basis"]  # computed at x0, kept at x1
    b = SPACE.flatten(m.egrad2rgrad(x1, SPACE.unflatten(grad_at(x1))))
    raw = b - basis.T @ (basis @ b)
    d = SPACE.flatten(m.proju(x1, SPACE.unflatten(raw)))
    assert (raw - d).norm() / raw.norm() > 1e-4  # the cached basis does leave the tangent space
    want = m.retr(x1, SPACE.unflatten(d / d.norm()), -0.05)
    torch.testing.assert_close(SPACE.flatten(x2), SPACE.flatten(want), atol=1e-12, rtol=1e-10)

    ncfg = NaturalConfig(eps=0.05, damping=1e-2, cg_tol=1e-3, preconditioner="jacobi")
    nat = Natural(ncfg)
    got, nstate, _ = nat.step(x0, nat.init(x0), problem(m))
    eye = torch.eye(SPACE.size, dtype=torch.float64)
    proj = torch.stack([SPACE.flatten(m.proju(x0, SPACE.unflatten(e))) for e in eye], 1)
    # the same preconditioned CG, outside the integrator, then projected and normalised
    from fipframe.core.linalg import conjugate_gradient

    op = Natural.operator(x0, problem(m))
    b0 = SPACE.flatten(m.egrad2rgrad(x0, SPACE.unflatten(grad_at(x0))))
    sol = conjugate_gradient(op, b0, damping=1e-2, iters=500, tol=1e-3, precond=nstate["precond"])
    off = ((sol.x - proj @ sol.x).norm() / sol.x.norm()).item()
    assert off > 1e-6  # a truncated PCG is not tangent
    t = proj @ sol.x
    want = m.retr(x0, SPACE.unflatten(t / t.norm()), -0.05)
    torch.testing.assert_close(SPACE.flatten(got), SPACE.flatten(want), atol=1e-12, rtol=1e-10)


def test_sum_reduction_without_a_stored_count_is_an_error():
    def evaluate(p):
        d = sum((p[k] ** 2).sum() for k in p)
        return Terms(sum(((p[k] - TARGET[k]) ** 2).sum() for k in p), d, {})  # stored left 0

    prob = StepProblem(evaluate, Euclidean(), METRIC, 0.0, stored_forward=FORWARD)
    integ = Penalty(PenaltyConfig(alpha=1.0, reduction="sum"))
    with pytest.raises(ValueError, match="reduction 'sum' needs Terms.stored"):
        integ.step(PARAMS, integ.init(PARAMS), prob)
